"""Per-series state (layer: pure). ``metrics``: ``MetricsState``, cumulative and windowed statistics
per (agent, environment, version, arm, segment) with quantile sketches, kept by ``sketches`` (sparse
for a quiet series, dense rows for a busy one); ``history``: per-version time
buckets (blue-green's reference) of the conversation-level fields of ``tracker``; ``rollouts``:
markers, the rollout lifecycle and arm resolution; ``lateness``: per-agent event-time watermarks;
``slices``: segment slices and conversation rows.
"""

from __future__ import annotations

from watcher.state.history import NullHistory, VersionHistory
from watcher.state.lateness import LatenessFilter
from watcher.state.metrics import MetricsState, SeriesKey, SeriesSnapshot, Window
from watcher.state.rollouts import Change, Registry, Rollout, RolloutState
from watcher.state.slices import ConvRows, SliceMap
from watcher.state.tracker import DAY, F_CONV, F_RATE, LATENCY_MAX, MEAN_AT, N_FIELDS, Tracker, pad_conv_cols

__all__ = [
    "Change",
    "ConvRows",
    "DAY",
    "F_CONV",
    "F_RATE",
    "LATENCY_MAX",
    "LatenessFilter",
    "MEAN_AT",
    "MetricsState",
    "N_FIELDS",
    "NullHistory",
    "Registry",
    "Rollout",
    "RolloutState",
    "SeriesKey",
    "SeriesSnapshot",
    "SliceMap",
    "Tracker",
    "VersionHistory",
    "Window",
    "pad_conv_cols",
]
