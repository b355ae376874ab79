"""Anytime-valid building blocks of the canary judge (pure numerics, no I/O).

Everything here is valid under continuous monitoring: an e-process E_n is a nonnegative
(super)martingale under its null, so by Ville's inequality P(ever E_n >= 1/alpha) <= alpha and the
judge may look after every batch. docs/statistics.md derives each piece and cites the sources.

* Rates (escalation, error, compliance, latency-tail exceedance): the *conditional e-test*. A
  conversation is the unit and is counted once, at its first event of a kind; under "treatment
  event probability <= r_tol x control event probability" the arm of such a conversation is
  Bernoulli(theta_{r_tol}(rho)) with rho the canary weight when the conversation started. It needs no
  variance estimate (exact for rare events) and is robust to base rates drifting in both arms.
* Means (quality, log-latency): a one-sided mixture SPRT (Johari et al. 2022) on a stratified
  difference of turn-weighted means with a cluster-robust (per-conversation) variance.
* Sample ratio: the conditional e-test again, on every conversation's arm, two-sided, tolerance 1.
* Late regressions: ``RestartSchedule`` restarts every test at epoch boundaries and spends
  alpha_j = share * alpha / (j (j + 1)) on the test restarted at epoch j (sum <= share * alpha).

Functions accept leading "slice" dimensions so the judge evaluates all segments in one numpy call.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = [
    "FAIL_GRID",
    "FLOOR_CONVERSATIONS",
    "PASS_GRID",
    "SRM_GRID",
    "MEAN_FIELDS",
    "cluster_mean",
    "RestartSchedule",
    "theta",
    "rate_log_evalue",
    "rate_confidence_sequence",
    "stratified_difference",
    "msprt_log_evalue",
    "msprt_half_width",
    "restart_alpha",
    "array_to_state",
    "cells_to_state",
    "array_from_state",
]

# Multipliers of the null ratio mixed over (uniform weights). Large ratios let a broken canary trip
# after a handful of events; the small ones keep power near the tolerance.
FAIL_GRID: tuple[float, ...] = (1.1, 1.2, 1.35, 1.5, 2.0, 3.0, 4.0, 6.0, 10.0, 30.0)
PASS_GRID: tuple[float, ...] = (1.1, 1.25, 1.5, 2.0, 3.0, 5.0)
SRM_GRID: tuple[float, ...] = tuple(
    sorted([1 / m for m in (1.1, 1.25, 1.5, 2.0, 4.0, 10.0, 30.0)] + [1.1, 1.25, 1.5, 2.0, 4.0, 10.0, 30.0])
)
# Treatment conversations (per stratum) up to which the control-implied variance floor holds in full
# (``stratified_difference``); twice the default burn-in of a mean metric.
FLOOR_CONVERSATIONS = 40.0
# Per-arm sufficient statistics of a cluster-robust mean: sum of per-conversation sums S_i, of turn
# counts n_i, of S_i^2, S_i*n_i, n_i^2, and the number of conversations with n_i > 0.
MEAN_FIELDS = 6
_CS_STEP = math.log(1.05)
_CS_HALF = 95  # main grid: ratios 1.05^-95 .. 1.05^95 (about 1/100 .. 100)
_CS_OFFSETS = np.array([2, 4, 8, 15, 23, 47, 70])  # ~x1.1, 1.2, 1.5, 2.1, 3.1, 9.9, 30
_CS_OFFSETS = np.concatenate([-_CS_OFFSETS[::-1], _CS_OFFSETS])
_CS_PAD = 70


def logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """numpy log-sum-exp (scipy's has ~100 us of overhead per call, too much per batch)."""
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def theta(r: np.ndarray | float, rho: np.ndarray | float) -> np.ndarray:
    """P(an event's conversation is in the treatment) when p_t = r * p_c and P(treatment) = rho."""
    r = np.asarray(r, dtype=float)
    rho = np.asarray(rho, dtype=float)
    return rho * r / (rho * r + 1.0 - rho)


def _loglik(c: np.ndarray, b: np.ndarray, rhos: np.ndarray, ratios: np.ndarray) -> np.ndarray:
    """Conditional log-likelihood, up to a constant: (..., R) counts -> (..., K) over ``ratios``."""
    th = theta(ratios[:, None], rhos[None, :])  # (K, R)
    return c @ np.log(th).T + b @ np.log1p(-th).T


def rate_log_evalue(
    c: np.ndarray, b: np.ndarray, rhos: np.ndarray, r_null: float, alternatives: np.ndarray
) -> np.ndarray:
    """log of mean_k L(r_k) / L(r_null): an e-process against "ratio on the far side of r_null".

    ``c``/``b``: treatment / control event counts by assignment probability, shape (..., R).
    Alternatives above r_null test "ratio <= r_null" (the likelihood ratio is a supermartingale for
    every true ratio below it), alternatives below test "ratio >= r_null".
    """
    alts = np.asarray(alternatives, dtype=float)
    ll = _loglik(c, b, rhos, np.concatenate([[r_null], alts]))
    return logsumexp(ll[..., 1:] - ll[..., :1], axis=-1) - math.log(len(alts))


def rate_confidence_sequence(
    c: np.ndarray, b: np.ndarray, rhos: np.ndarray, log_threshold: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Anytime-valid interval for the ratio and its conditional MLE, per leading index.

    The interval is {r0 : mixture over r0 * m (m two-sided) of L(r0 m)/L(r0) < threshold}, computed on
    a log grid (step 5 %). NaN marks an unbounded side (or no estimate).
    """
    log_th, log_1m = _cs_grid(tuple(np.asarray(rhos, dtype=float).tolist()))
    ll = c @ log_th + b @ log_1m  # (..., G)
    main = slice(_CS_PAD, _CS_PAD + 2 * _CS_HALF + 1)
    ll_main = ll[..., main]
    thr = np.expand_dims(np.asarray(log_threshold, dtype=float), -1)
    inside = _cs_inside(ll, ll.max(axis=-1, keepdims=True), thr, 2 * _CS_HALF + 1)
    r_main = _CS_GRID[main]
    any_in = inside.any(axis=-1)
    first = np.argmax(inside, axis=-1)
    last = inside.shape[-1] - 1 - np.argmax(inside[..., ::-1], axis=-1)
    lo = np.where(any_in & (first > 0), r_main[first], np.nan)
    hi = np.where(any_in & (last < len(r_main) - 1), r_main[last], np.nan)
    events = (c.sum(axis=-1) + b.sum(axis=-1)) > 0
    arg = np.argmax(ll_main, axis=-1)
    mle = np.where(events & (arg > 0) & (arg < len(r_main) - 1), r_main[arg], np.nan)
    return lo, hi, mle


def _cs_inside(ext: np.ndarray, mx: np.ndarray, thr: np.ndarray, w: int) -> np.ndarray:
    """log e(r0) < thr for r0 on grid points pad .. pad + w - 1 of ``ext`` (..., grid), as one
    log-sum-exp per point would decide it."""
    log_k = math.log(len(_CS_OFFSETS))
    p = _CS_PAD
    ll_r0 = ext[..., p : p + w]
    # log mean_k L(r0 m_k)/L(r0) as log sum_k E(r0 m_k) - log E(r0) with E = exp(ll - max ll): one exp
    # per grid point instead of one per (point, offset), and shifted sums as slices, not a gather.
    e = np.exp(ext - mx)
    s = sum(e[..., p + o : p + o + w] for o in _CS_OFFSETS.tolist())
    with np.errstate(divide="ignore"):
        log_e = np.log(s) - (ll_r0 - mx) - log_k
    thr = np.broadcast_to(thr, log_e.shape)
    tiny = s < 1e-290  # every shifted point far below the maximum: the sum lost precision
    if tiny.any():
        idx = np.nonzero(tiny)
        # log e >= ll(r0 m) - ll(r0) - log K for any single offset: the widest offsets decide most
        # such points ("outside") at once; the rest get the exact log-sum-exp.
        o = int(_CS_OFFSETS.max())
        far = np.maximum(ext[..., p - o : p - o + w][idx], ext[..., p + o : p + o + w][idx])
        log_e[idx] = np.inf
        exact = far - ll_r0[idx] - log_k < thr[idx]
        if exact.any():
            sub = tuple(i[exact] for i in idx)
            shifted = np.stack([ext[..., p + o : p + o + w][sub] for o in _CS_OFFSETS.tolist()], -1)
            log_e[sub] = logsumexp(shifted - ll_r0[sub][:, None], axis=-1) - log_k
    return log_e < thr


_CS_GRID = np.exp(np.arange(-_CS_HALF - _CS_PAD, _CS_HALF + _CS_PAD + 1) * _CS_STEP)


@lru_cache(maxsize=16)
def _cs_grid(rhos: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """log theta, log(1 - theta) on the confidence-sequence grid: (R, G); depends on the weights only."""
    th = theta(_CS_GRID[:, None], np.asarray(rhos)[None, :])  # (G, R)
    return np.log(th).T.copy(), np.log1p(-th).T.copy()


def stratified_difference(
    treat: np.ndarray, ctrl: np.ndarray, *, pooled: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Treatment - control mean difference and its cluster-robust variance, pooled over strata.

    ``treat``/``ctrl``: (..., R, MEAN_FIELDS). A stratum is a period of constant canary weight: within
    it both arms see the same hours, so time-of-day drift cancels even while the weight ramps.
    Strata are pooled with weights n_t n_c / (n_t + n_c) (outcome-free, like Mantel-Haenszel).
    With ``pooled`` the treatment's variance is at least a floor: what the control's per-conversation
    spread implies for the treatment's conversations. Under the null (same distribution in both arms)
    the large control arm estimates it far better than a few dozen treatment conversations, whose own
    estimate is noisy and can be small by chance (docs/statistics.md, "burn-in"). The floor holds in
    full up to ``FLOOR_CONVERSATIONS`` treatment conversations in the stratum and fades as
    ``FLOOR_CONVERSATIONS / G_t`` after: by then the treatment's own estimate is a fair one, and the
    larger of two fair estimates of one variance overstates it (in the everyday bench of issue #14,
    by ~1.5x at 100 conversations in some runs).
    Returns (difference, variance); NaN where no stratum has >= 2 conversations in both arms.
    """
    mean_t, var_t, g_t = cluster_mean(treat)
    mean_c, var_c, g_c = cluster_mean(ctrl)
    if pooled:
        with np.errstate(invalid="ignore", divide="ignore"):
            # var_c = spread_c / (sum n_c)^2 * G_c/(G_c-1): the spread per control conversation, scaled
            # to the treatment's conversations and turns
            n_t, n_c = treat[..., 1], ctrl[..., 1]
            implied = var_c * (n_c * n_c / np.maximum(g_c, 1)) * g_t / np.maximum(n_t * n_t, 1e-300)
            implied = implied * np.minimum(1.0, FLOOR_CONVERSATIONS / np.maximum(g_t, 1.0))
        var_t = np.where(np.isfinite(implied), np.maximum(var_t, implied), var_t)
    ok = (g_t >= 2) & (g_c >= 2)
    w = np.where(ok, g_t * g_c / np.maximum(g_t + g_c, 1), 0.0)
    sw = w.sum(axis=-1)
    d = np.where(ok, mean_t - mean_c, 0.0)
    v = np.where(ok, var_t + var_c, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = (w * d).sum(axis=-1) / sw
        var = (w * w * v).sum(axis=-1) / (sw * sw)
    return np.where(sw > 0, diff, np.nan), np.where(sw > 0, np.maximum(var, 1e-12), np.nan)


def cluster_mean(a: np.ndarray, var_floor: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, cluster-robust variance, clusters) of the MEAN_FIELDS sums in the last axis of ``a``.

    What cannot be estimated is NaN: the mean without any unit, the variance with fewer than two
    conversations. Not 0 and not inf: a mean of 0 is a real quality score and ``0 * inf`` is NaN in
    a weighted sum, so a stand-in value would flow silently into the arithmetic where NaN is caught
    by every ``isfinite`` check. ``var_floor`` bounds an estimable variance from below (an exactly
    constant metric would otherwise give the mixture SPRT a zero variance).
    """
    s, n, s2, sn, n2, g = (a[..., i] for i in range(MEAN_FIELDS))
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(n > 0, s / n, np.nan)
        mm = np.nan_to_num(m)
        # Sandwich variance of the ratio estimator sum(S_i)/sum(n_i) with the conversation as the
        # cluster: sum_i (S_i - m n_i)^2 / (sum n_i)^2, times G/(G-1).
        resid = np.maximum(s2 - 2 * mm * sn + mm * mm * n2, 0.0)
        var = np.where((n > 0) & (g > 1), resid / (n * n) * g / np.maximum(g - 1, 1), np.nan)
    return m, np.maximum(var, var_floor), g


def msprt_log_evalue(x: np.ndarray | float, var: np.ndarray | float, tau: np.ndarray | float) -> np.ndarray:
    """log of the one-sided normal-mixture SPRT against "mean <= 0" (half-normal mixture, scale tau).

    Lambda = 2 sqrt(V/(V+tau^2)) exp(tau^2 x^2 / (2V(V+tau^2))) Phi(x tau / sqrt(V(V+tau^2))).
    """
    from scipy.special import log_ndtr  # lazily: scipy.special costs a quarter of a second of start-up

    x = np.asarray(x, dtype=float)
    v = np.asarray(var, dtype=float)
    t2 = tau * tau
    with np.errstate(invalid="ignore"):
        out = (
            math.log(2.0)
            + 0.5 * np.log(v / (v + t2))
            + t2 * x * x / (2 * v * (v + t2))
            + log_ndtr(x * tau / np.sqrt(v * (v + t2)))
        )
    return np.where(np.isfinite(x) & np.isfinite(v), out, 0.0)


def msprt_half_width(
    var: np.ndarray | float, tau: np.ndarray | float, log_threshold: np.ndarray | float
) -> np.ndarray:
    """Half-width of the two-sided normal-mixture confidence sequence at threshold exp(log_threshold)."""
    v = np.asarray(var, dtype=float)
    t2 = tau * tau
    return np.sqrt(v * (v + t2) / t2 * (2 * np.asarray(log_threshold) + np.log((v + t2) / v)))


def restart_alpha(j: int, share: float) -> float:
    """Alpha spent on the test restarted at epoch j >= 1: share / (j (j+1)); the sum over j is share."""
    return share / (j * (j + 1))


def array_to_state(a: np.ndarray) -> dict[str, Any]:
    """A numeric array for the checkpoint: its raw bytes (msgpack ``bin``), dense or, when at most a
    third of the cells are nonzero (a judge's tables, a conversation table), the nonzero cells only.
    Bytes, not lists: a list of Python numbers per cell cost more than the rest of a checkpoint."""
    a = np.ascontiguousarray(a)
    flat = a.reshape(-1)
    nz = np.flatnonzero(flat)
    if 3 * len(nz) <= len(flat):
        return _cells(a.shape, a.dtype, nz, flat[nz])
    return {"shape": list(a.shape), "dtype": a.dtype.str, "data": flat.tobytes()}


def cells_to_state(shape: tuple[int, ...], dtype: Any, idx: np.ndarray, val: np.ndarray) -> dict[str, Any]:
    """``array_to_state`` of the array of ``shape`` whose nonzero cells are ``val`` at the flat indices
    ``idx`` (ascending), the same bytes, built without the array unless it is dense enough to be
    written whole (a store that keeps its cells sparse, such as a quiet series' sketches)."""
    dt = np.dtype(dtype)
    size = int(np.prod(shape))
    if 3 * len(idx) <= size:
        return _cells(shape, dt, np.asarray(idx, dtype=np.int64), np.asarray(val, dtype=dt))
    a = np.zeros(size, dt)
    a[idx] = val
    return {"shape": list(shape), "dtype": dt.str, "data": a.tobytes()}


def _cells(shape: tuple[int, ...], dtype: np.dtype[Any], nz: np.ndarray, val: np.ndarray) -> dict[str, Any]:
    d: dict[str, Any] = {"shape": list(shape), "dtype": dtype.str}
    wide = len(nz) and nz[-1] >= 2**32
    d["idx64" if wide else "idx"] = (nz.astype(np.int64) if wide else nz.astype(np.uint32)).tobytes()
    d["val"] = val.tobytes()
    return d


def array_from_state(d: dict[str, Any]) -> np.ndarray:
    """The array of ``array_to_state`` (also its former JSON form: lists of indices and values)."""
    dtype, shape = np.dtype(d["dtype"]), tuple(d["shape"])
    if "data" in d:
        return np.frombuffer(d["data"], dtype).reshape(shape).copy()
    a = np.zeros(int(np.prod(shape)), dtype)
    if "idx64" in d:
        a[np.frombuffer(d["idx64"], np.int64)] = np.frombuffer(d["val"], dtype)
    elif isinstance(d["idx"], bytes):
        a[np.frombuffer(d["idx"], np.uint32)] = np.frombuffer(d["val"], dtype)
    else:  # the JSON form of checkpoints before #13
        a[np.asarray(d["idx"], dtype=np.int64)] = np.asarray(d["val"], dtype=dtype)
    return a.reshape(shape)


def mean_deltas(s_old: np.ndarray, n_old: np.ndarray, s_new: np.ndarray, n_new: np.ndarray) -> np.ndarray:
    """Rows of MEAN_FIELDS increments when conversations go from (S, n)_old to (S, n)_new."""
    return np.stack(
        [
            s_new - s_old,
            n_new - n_old,
            s_new * s_new - s_old * s_old,
            s_new * n_new - s_old * n_old,
            n_new * n_new - n_old * n_old,
            ((n_old == 0) & (n_new > 0)).astype(float),
        ],
        axis=-1,
    )


class RestartSchedule:
    """Epoch bookkeeping of the change-point wrapper: which tests are live and their alpha.

    The cumulative test runs from the start at ``(1 - share) * alpha``. At the start of every epoch
    j >= 1 a fresh copy of each test starts on the conversations that begin in epochs j .. j + span - 1
    and stays live for those ``span`` epochs, at ``alpha * share / (j (j + 1))``. By the union bound the whole
    family stays within alpha, for any rollout length, and a regression starting at any time is seen
    by a test whose data start at most one epoch before it: no dilution by earlier healthy hours.
    """

    def __init__(self, epoch_s: float, share: float, *, enabled: bool = True, span: int = 4) -> None:
        self.epoch_s = epoch_s
        self.span = span
        self.share = share if enabled else 0.0
        self.enabled = enabled
        self.current = 0

    def epoch_of(self, elapsed_s: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return np.zeros(np.shape(elapsed_s), dtype=np.int64)
        return np.maximum(np.floor(np.asarray(elapsed_s) / self.epoch_s), 0).astype(np.int64)

    def cumulative_fraction(self) -> float:
        return 1.0 - self.share

    def live_windows(self) -> list[tuple[int, float]]:
        """(first epoch j, alpha fraction) of the live restarted tests."""
        if not self.enabled:
            return []
        return [
            (j, restart_alpha(j, self.share))
            for j in range(max(self.current - self.span + 1, 1), self.current + 1)
        ]

    def to_state(self) -> dict[str, Any]:
        return {
            "v": 1,
            "epoch_s": self.epoch_s,
            "share": self.share,
            "enabled": self.enabled,
            "current": self.current,
            "span": self.span,
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> RestartSchedule:
        s = cls(d["epoch_s"], d["share"], enabled=d["enabled"], span=d.get("span", 4))
        s.share = d["share"]
        s.current = d["current"]
        return s
