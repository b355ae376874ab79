"""Fixed-sample tests: every observation present at once, one look (the pre-production gate).

The live judge looks after every batch, so it needs e-processes (``sequential``); a gate run sees its
whole sample once, and the classical one-look tests are valid and more powerful. They test the same
nulls on the same statistics as the live judge (docs/gate.md):

* Rates (escalation, error, compliance, latency-tail exceedance): conversations with an event,
  ``c`` of ``n_t`` treatment and ``b`` of ``n_c`` control ones. Given the ``k = c + b`` events, ``c`` is
  Binomial(k, theta_r(rho)) with rho = n_t / (n_t + n_c) when the event counts are Poisson with
  means proportional to the arm sizes, the model in which the live conditional e-test is exact;
  the one-sided binomial test against "ratio <= r" (or ">= r") is then exact, and its Clopper-Pearson
  bound is the set of ratios it does not reject. Paired designs (the shadow judge's discordance: a
  conversation where only the treatment had the event, against one where only the control had it)
  are the same test at rho = 1/2, exact with no model at all (McNemar's test).
* Means (quality, log-latency): a one-sided t-test on the difference of turn-weighted means with
  the cluster-robust (per-conversation) variance of the live judge, df = min(G_t, G_c) - 1
  (conservative), or on the mean of paired differences (df = G - 1).

Every function takes arrays (one entry per metric x slice row) and returns p-values or bounds of the
same shape; "harm up" means a larger ratio or difference is worse.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from watcher.stats.sequential import cluster_mean, stratified_difference, theta

__all__ = [
    "MeanSample",
    "binomial_bound",
    "binomial_pvalue",
    "mean_bound",
    "mean_pvalue",
    "one_sample",
    "ratio_from_theta",
    "two_sample",
]


def _st() -> Any:
    """scipy.stats, imported when first used: it costs a second of start-up that commands which never
    compute a fixed-sample test should not pay."""
    import scipy.stats

    return scipy.stats


def binomial_pvalue(
    c: np.ndarray, b: np.ndarray, rho: np.ndarray, r0: np.ndarray, up: np.ndarray
) -> np.ndarray:
    """Exact one-sided p-value of "ratio <= r0" (``up``) or "ratio >= r0" (not ``up``).

    ``c``/``b``: treatment / control event counts; ``rho``: the treatment's share of the units. No
    events: p = 1 (nothing is shown either way).
    """
    c, b = np.asarray(c, float), np.asarray(b, float)
    k = c + b
    th = theta(r0, rho)
    # sf(c - 1) = P(X >= c); cdf(c) = P(X <= c)
    p = np.where(up, _st().binom.sf(c - 1, k, th), _st().binom.cdf(c, k, th))
    return np.where(k > 0, np.minimum(p, 1.0), 1.0)


def binomial_bound(c: np.ndarray, b: np.ndarray, alpha: float | np.ndarray, upper: np.ndarray) -> np.ndarray:
    """One-sided Clopper-Pearson bound on theta = P(an event is the treatment's) at level 1 - alpha.

    ``upper`` picks the upper bound (the PASS side of a higher-is-worse rate), else the lower one.
    The bound is exactly the boundary of ``binomial_pvalue``: theta_r0 is outside it iff p <= alpha.
    """
    c, b = np.asarray(c, float), np.asarray(b, float)
    a = np.broadcast_to(np.asarray(alpha, float), np.broadcast(c, b).shape)
    with np.errstate(invalid="ignore"):
        lo = np.where(c > 0, _st().beta.ppf(a, np.maximum(c, 1), b + 1), 0.0)
        hi = np.where(b > 0, _st().beta.ppf(1 - a, c + 1, np.maximum(b, 1)), 1.0)
    return np.where(upper, hi, lo)


def ratio_from_theta(th: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """The rate ratio r with theta_r(rho) = th (inverse of ``theta``); 0 -> 0, 1 -> inf."""
    th, rho = np.asarray(th, float), np.asarray(rho, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(th >= 1, np.inf, th * (1 - rho) / (rho * (1 - th)))


class MeanSample:
    """A difference of means with its variance and degrees of freedom (arrays, one per row)."""

    __slots__ = ("diff", "var", "df")

    def __init__(self, diff: np.ndarray, var: np.ndarray, df: np.ndarray) -> None:
        self.diff, self.var, self.df = diff, var, df


def two_sample(treat: np.ndarray, ctrl: np.ndarray) -> MeanSample:
    """Treatment - control turn-weighted means from MEAN_FIELDS sums (..., MEAN_FIELDS) per arm, with
    the live judge's cluster-robust variance (``stratified_difference`` on one stratum)."""
    diff, var = stratified_difference(treat[..., None, :], ctrl[..., None, :])
    df = np.minimum(treat[..., 5], ctrl[..., 5]) - 1
    return MeanSample(diff, var, df)


def one_sample(sums: np.ndarray) -> MeanSample:
    """Mean of paired differences from MEAN_FIELDS sums over conversations (the conversation is the
    cluster, as in the shadow judge)."""
    m, var, g = cluster_mean(sums)
    ok = np.isfinite(var) & (g > 1)
    return MeanSample(np.where(ok, m, np.nan), np.where(ok, np.maximum(var, 1e-12), np.nan), g - 1)


def mean_pvalue(s: MeanSample, margin: np.ndarray, up: np.ndarray, harm_null: bool) -> np.ndarray:
    """One-sided t-test p-value against the margin.

    ``harm_null`` (the FAIL test): null "harm <= margin" (rejected by a large excess harm). Otherwise
    (the PASS test): null "harm >= margin" (non-inferiority). ``up``: a larger difference is harm.
    """
    sign = np.where(up, 1.0, -1.0) * (1.0 if harm_null else -1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = sign * (s.diff - margin) / np.sqrt(s.var)
        p = _st().t.sf(t, np.maximum(s.df, 1))
    return np.where(np.isfinite(t) & (s.df >= 1), p, 1.0)


def mean_bound(s: MeanSample, alpha: float | np.ndarray, upper: np.ndarray) -> np.ndarray:
    """One-sided (1 - alpha) confidence bound of the difference, upper or lower."""
    with np.errstate(invalid="ignore"):
        q = _st().t.ppf(1 - np.asarray(alpha, float), np.maximum(s.df, 1)) * np.sqrt(s.var)
    return np.where(upper, s.diff + q, s.diff - q)
