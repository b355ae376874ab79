"""Statistics (layer: pure, numpy and scipy only). ``sequential``: the anytime-valid building blocks
(conditional rate e-tests, mixture SPRT, sample-ratio test, restart schedules); ``sketch``: the
mergeable log-bucket quantile sketch; ``latency_bins``: fixed latency bins with exact tail bounds;
``fixed``: the fixed-sample (one-look) tests of the pre-production gate.
"""

from __future__ import annotations

from watcher.stats.fixed import (
    MeanSample,
    binomial_bound,
    binomial_pvalue,
    mean_bound,
    mean_pvalue,
    one_sample,
    ratio_from_theta,
    two_sample,
)
from watcher.stats.latency_bins import N_BINS, bins_of_log
from watcher.stats.sequential import (
    FAIL_GRID,
    FLOOR_CONVERSATIONS,
    MEAN_FIELDS,
    PASS_GRID,
    SRM_GRID,
    RestartSchedule,
    array_from_state,
    array_to_state,
    cells_to_state,
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
    "FLOOR_CONVERSATIONS",
    "MEAN_FIELDS",
    "N_BINS",
    "MeanSample",
    "PASS_GRID",
    "QuantileSketch",
    "RestartSchedule",
    "SRM_GRID",
    "SketchLayout",
    "array_from_state",
    "array_to_state",
    "cells_to_state",
    "bins_of_log",
    "binomial_bound",
    "binomial_pvalue",
    "cluster_mean",
    "dense_counts",
    "logsumexp",
    "mean_bound",
    "mean_deltas",
    "mean_pvalue",
    "msprt_half_width",
    "msprt_log_evalue",
    "one_sample",
    "rate_confidence_sequence",
    "rate_log_evalue",
    "ratio_from_theta",
    "restart_alpha",
    "sparse_counts",
    "stratified_difference",
    "theta",
    "two_sample",
]
