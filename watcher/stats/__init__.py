"""Statistics (layer: pure, numpy and scipy only). ``sequential``: the anytime-valid building blocks
(conditional rate e-tests, mixture SPRT, sample-ratio test, restart schedules); ``sketch``: the
mergeable log-bucket quantile sketch; ``latency_bins``: fixed latency bins with exact tail bounds.
"""

from __future__ import annotations

from watcher.stats.sequential import (
    FAIL_GRID,
    MEAN_FIELDS,
    PASS_GRID,
    SRM_GRID,
    RestartSchedule,
    array_from_state,
    array_to_state,
    cluster_mean,
    logsumexp,
    mean_deltas,
    msprt_half_width,
    msprt_log_evalue,
    rate_confidence_sequence,
    rate_log_evalue,
    restart_alpha,
    stratified_difference,
    theta,
)
from watcher.stats.sketch import DEFAULT_LAYOUT, QuantileSketch, SketchLayout, dense_counts, sparse_counts

__all__ = [
    "DEFAULT_LAYOUT",
    "FAIL_GRID",
    "MEAN_FIELDS",
    "PASS_GRID",
    "QuantileSketch",
    "RestartSchedule",
    "SRM_GRID",
    "SketchLayout",
    "array_from_state",
    "array_to_state",
    "cluster_mean",
    "dense_counts",
    "logsumexp",
    "mean_deltas",
    "msprt_half_width",
    "msprt_log_evalue",
    "rate_confidence_sequence",
    "rate_log_evalue",
    "restart_alpha",
    "sparse_counts",
    "stratified_difference",
    "theta",
]
