"""The gate's fixed-sample tests: exact where claimed, valid at their level, dual to their bounds."""

from __future__ import annotations

import numpy as np
import pytest

from watcher.stats import (
    MEAN_FIELDS,
    binomial_bound,
    binomial_pvalue,
    mean_bound,
    mean_pvalue,
    one_sample,
    ratio_from_theta,
    theta,
    two_sample,
)


def _rates(rng: np.random.Generator, runs: int, n_t: int, n_c: int, p_c: float, r: float) -> tuple:
    return rng.binomial(n_t, p_c * r, runs), rng.binomial(n_c, p_c, runs)


@pytest.mark.parametrize(
    ("p", "n_t", "n_c", "r"),
    [(0.05, 2000, 2000, 1.25), (0.01, 20000, 20000, 1.25), (0.05, 5000, 1000, 1.5), (0.3, 1500, 1500, 1.25)],
)
def test_rate_test_keeps_its_level_at_the_margin_with_fixed_arm_sizes(p, n_t, n_c, r) -> None:
    """At the boundary (true ratio = the margin) both one-sided tests reject at most alpha of the runs
    (binomial arms of fixed size: the conditional test is exact for Poisson counts, conservative here)."""
    rng = np.random.default_rng(7)
    c, b = _rates(rng, 20_000, n_t, n_c, p, r)
    rho = np.full(len(c), n_t / (n_t + n_c))
    r0 = np.full(len(c), r)
    fail = binomial_pvalue(c, b, rho, r0, np.ones(len(c), bool))
    ok = binomial_pvalue(c, b, rho, r0, np.zeros(len(c), bool))
    for p_values in (fail, ok):
        for alpha in (0.05, 0.01):
            share = float((p_values <= alpha).mean())
            assert share <= alpha * 1.1 + 0.002, (alpha, share)
    assert (fail <= 0.05).mean() > 0.005  # not vacuous


def test_paired_discordance_test_is_exact() -> None:
    """McNemar's setting: given k discordant pairs, the candidate-only count is Binomial(k, r/(1+r)); the
    rejection rate at the margin equals the exact binomial tail (here checked to simulation noise)."""
    rng = np.random.default_rng(3)
    k = rng.poisson(80, 40_000)
    r = 1.25
    c = rng.binomial(k, r / (1 + r))
    p = binomial_pvalue(c, k - c, np.full(len(k), 0.5), np.full(len(k), r), np.ones(len(k), bool))
    share = float((p <= 0.05).mean())
    assert 0.03 < share <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / len(k))


def test_bounds_are_the_tests_inverted() -> None:
    """r0 lies beyond the one-sided Clopper-Pearson bound exactly when the test against r0 rejects."""
    rng = np.random.default_rng(1)
    c = rng.integers(0, 60, 500)
    b = rng.integers(0, 60, 500)
    rho = rng.uniform(0.1, 0.9, 500)
    r0 = np.exp(rng.uniform(-1, 1, 500))
    alpha = 0.05
    lower = ratio_from_theta(binomial_bound(c, b, alpha, np.zeros(500, bool)), rho)
    upper = ratio_from_theta(binomial_bound(c, b, alpha, np.ones(500, bool)), rho)
    fail = binomial_pvalue(c, b, rho, r0, np.ones(500, bool)) <= alpha
    ok = binomial_pvalue(c, b, rho, r0, np.zeros(500, bool)) <= alpha
    tight = (np.abs(lower - r0) > 1e-6 * r0) & (np.abs(upper - r0) > 1e-6 * r0)
    assert np.array_equal(fail[tight], (lower > r0)[tight])
    assert np.array_equal(ok[tight], (upper < r0)[tight])


def test_no_events_shows_nothing() -> None:
    z = np.zeros(1)
    for up in (True, False):
        assert binomial_pvalue(z, z, np.full(1, 0.5), np.full(1, 1.25), np.full(1, up))[0] == 1.0
    assert np.isinf(ratio_from_theta(binomial_bound(z, z, 0.05, np.ones(1, bool)), np.full(1, 0.5)))[0]
    assert float(theta(1.0, 0.3)) == pytest.approx(0.3)


def _conversations(rng: np.random.Generator, n: int, shift: float) -> np.ndarray:
    """MEAN_FIELDS sums of n conversations of 1..19 correlated turns (quality-like values)."""
    turns = rng.integers(1, 20, n).astype(float)
    latent = rng.normal(0, 0.1, n)
    s = turns * (0.8 + shift + latent) + rng.normal(0, 0.08, n) * np.sqrt(turns)
    return np.array([s.sum(), turns.sum(), (s * s).sum(), (s * turns).sum(), (turns * turns).sum(), n])


def test_mean_test_level_with_correlated_turns_at_the_margin() -> None:
    """The t-test on turn-weighted means with the cluster-robust variance keeps alpha at the margin
    (strongly correlated turns of unequal-length conversations)."""
    rng = np.random.default_rng(11)
    runs, margin = 1500, -0.02
    t = np.stack([_conversations(rng, 200, margin) for _ in range(runs)])
    c = np.stack([_conversations(rng, 200, 0.0) for _ in range(runs)])
    s = two_sample(t, c)
    up = np.zeros(runs, bool)  # quality: lower is worse
    fail = mean_pvalue(s, np.full(runs, margin), up, True)
    ok = mean_pvalue(s, np.full(runs, margin), up, False)
    assert (fail <= 0.05).mean() <= 0.065
    assert (ok <= 0.05).mean() <= 0.065
    assert (fail <= 0.05).mean() > 0.02
    # the harm-side bound at 5 % excludes the margin exactly when the fail test rejects
    hi = mean_bound(s, 0.05, np.ones(runs, bool))
    assert np.array_equal(hi < margin, fail <= 0.05)


def test_one_sample_on_paired_differences() -> None:
    rng = np.random.default_rng(5)
    d = _conversations(rng, 300, -0.8 - 0.05)  # differences centred on -0.05
    s = one_sample(d[None, :])
    assert s.diff[0] == pytest.approx(-0.05, abs=0.02)
    assert s.df[0] == 299
    assert mean_pvalue(s, np.full(1, -0.02), np.zeros(1, bool), True)[0] < 0.01
    empty = one_sample(np.zeros((1, MEAN_FIELDS)))
    assert np.isnan(empty.diff[0])
    assert mean_pvalue(empty, np.zeros(1), np.zeros(1, bool), False)[0] == 1.0
