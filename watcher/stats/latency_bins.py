"""Fixed log-spaced latency bins, and the exact latency-tail reference of blue-green built on them.

Bin 0 holds latencies <= ``LO_MS`` (1 ms); bin ``i >= 1`` holds ``(LO_MS * RATIO^(i-1), LO_MS * RATIO^i]``;
the top bin also holds everything above ``HI_MS`` (10 min). With ``RATIO = 1.02`` that is 673 bins
(2.7 KB as int32 per histogram). Blue-green's tail test only ever asks "how many values lie above
this bin's upper edge", so every threshold is a bin edge and every count is exact (a suffix sum, no
interpolation inside a bin); bins being log-spaced, a latency factor is a shift by whole bins.

Unlike ``watcher.stats.sketch`` (a quantile sketch answering values), this is a fixed count vector that is
added into per-bucket tables with ``np.add.at``, pooled by summing and stored sparse.
``tail_reference`` turns a histogram of blue's conversations' slowest turns into a threshold and exact
bounds on blue's exceedance of it (docs/statistics.md, "Blue-green").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "RATIO",
    "LO_MS",
    "HI_MS",
    "N_BINS",
    "bins_of_log",
    "upper_edge_ms",
    "above",
    "rank_threshold",
    "shift",
    "TailReference",
    "tail_reference",
    "MIN_TAIL_EXCEED",
]

RATIO = 1.02
LO_MS = 1.0
HI_MS = 600_000.0
_LOG_RATIO = math.log(RATIO)
_LOG_LO = math.log(LO_MS)
N_BINS = 1 + math.ceil(math.log(HI_MS / LO_MS) / _LOG_RATIO)
MIN_TAIL_EXCEED = 5  # reference conversations above the threshold needed to judge a window's tail


def bins_of_log(log_ms: np.ndarray) -> np.ndarray:
    """Bin of each log latency (natural log of milliseconds); -1 where it is NaN (no latency)."""
    x = np.asarray(log_ms, dtype=np.float64)
    ok = ~np.isnan(x)
    # a tiny epsilon: a value exactly on an edge belongs to the bin below it despite rounding in exp/log
    idx = np.ceil((np.where(ok, x, _LOG_LO) - _LOG_LO) / _LOG_RATIO - 1e-9)
    return np.where(ok, np.clip(idx, 0, N_BINS - 1), -1).astype(np.int64)


def upper_edge_ms(i: int) -> float:
    """The upper edge of bin ``i``: a value is above the threshold of bin ``i`` when its bin is > i."""
    return LO_MS * RATIO**i


def above(counts: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Counts in bins > ``idx`` along the last axis (``idx`` broadcast over the leading axes; -1: all)."""
    c = np.asarray(counts)
    suffix = np.concatenate(
        [np.cumsum(c[..., ::-1], axis=-1)[..., ::-1], np.zeros((*c.shape[:-1], 1), c.dtype)], axis=-1
    )  # suffix[..., j] = counts in bins >= j
    i = np.clip(np.asarray(idx, dtype=np.int64) + 1, 0, c.shape[-1])
    return np.take_along_axis(suffix, np.broadcast_to(i, c.shape[:-1])[..., None], axis=-1)[..., 0]


def rank_threshold(counts: np.ndarray, m: int) -> int:
    """The smallest bin ``j`` with at most ``m`` values above its upper edge.

    Then the order statistic with ``m`` values above it lies in bin ``j``: ``edge(j - 1) < X_(n-m) <=
    edge(j)``
    (docs/statistics.md: what makes blue-green's tail bound exact).
    """
    c = np.asarray(counts)
    suffix_gt = np.cumsum(c[::-1])[::-1] - c  # values above bin j's upper edge
    return int(np.argmax(suffix_gt <= m))


def shift(factor: float) -> int:
    """Whole bins covering a latency factor >= 1 (rounded up: the allowance is never smaller)."""
    return math.ceil(math.log(factor) / _LOG_RATIO - 1e-9) if factor > 1 else 0


@dataclass(frozen=True, slots=True)
class TailReference:
    """Blue's latency tail in one reference window: the threshold and exact bounds on its exceedance."""

    bin: int  # threshold: the upper edge of this bin (``latency_bins.upper_edge_ms``)
    n: int  # conversations with a latency
    k: int  # the order statistic's rank from the top: floor((1 - q) n)
    share: float  # observed share above the threshold (<= k / n)
    upper: float  # P(blue's exceedance of edge(bin) > upper) <= a_upper
    lower: float  # P(blue's exceedance of edge(bin - 1) < lower) <= a_lower


def tail_reference(hist: np.ndarray, q: float, a_upper: float, a_lower: float) -> TailReference | None:
    """Threshold and bounds from a histogram of conversations' slowest turns; None when not judgeable.

    Of n conversations, k = floor((1 - q) n) have their slowest turn above the order statistic
    X_(n-k). For i.i.d. conversations with any continuous distribution, blue's exceedance probability
    S(X_(n-k)) is exactly Beta(k + 1, n - k) distributed (S(X_(i)) is the (n-i+1)-th smallest of n
    uniforms), although X_(n-k) is fitted on these same conversations: a rank fixed before the data
    needs neither a split of the sample nor a simultaneous band, and its Beta quantiles are the
    Clopper-Pearson bounds at k events. Bin j holds X_(n-k) (``rank_threshold``), so
    S(edge j) <= S(X_(n-k)) <= S(edge j-1): the upper bound holds at edge j (the fail test's threshold)
    and the lower one at edge j-1 (the pass test's), 2 % lower.
    """
    n = int(hist.sum())
    k = math.floor((1 - q) * n + 1e-9)
    if k < MIN_TAIL_EXCEED or k >= n:
        return None
    j = rank_threshold(hist, k)
    if not 0 < j < N_BINS - 1:
        return None  # the threshold sits in a clamped end bin (below 1 ms / above 10 min): not judged
    from scipy.stats import beta  # lazily: scipy.stats costs a second of start-up

    return TailReference(
        j,
        n,
        k,
        float(above(hist, np.asarray(j))) / n,
        float(beta.isf(a_upper, k + 1, n - k)),
        float(beta.ppf(a_lower, k + 1, n - k)),
    )
