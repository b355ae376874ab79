from __future__ import annotations

import math

import numpy as np
import pytest

from tests.support.state import roundtrip
from watcher.stats import (
    FAIL_GRID,
    MEAN_FIELDS,
    RestartSchedule,
    mean_deltas,
    msprt_half_width,
    msprt_log_evalue,
    rate_confidence_sequence,
    rate_log_evalue,
    restart_alpha,
    stratified_difference,
    theta,
)
from watcher.stats.sequential import MeanTest, RateTest, SampleRatioTest


def test_broken_canary_trips_after_a_handful_of_events() -> None:
    t = RateTest(1.5)
    for k in range(1, 10):  # noqa: B007 (k is read after the loop)
        t.update(1, 0, 0.1)
        if t.log_evalue_fail() >= math.log(1 / 0.001):
            break
    assert k <= 6  # six canary-only errors at 10 % weight beat alpha = 0.001


def test_rate_test_is_calibrated_at_the_tolerance_boundary() -> None:
    # Events whose arm is Bernoulli(theta_{r_tol}(rho)): the worst case of the null "ratio <= r_tol".
    rng = np.random.default_rng(7)
    runs, steps, alpha, r_tol = 4000, 60, 0.05, 1.5
    rhos = np.array([0.05, 0.2, 0.5])
    c = np.zeros((runs, 3))
    b = np.zeros((runs, 3))
    crossed = np.zeros(runs, bool)
    for step in range(steps):
        k = min(step // 20, 2)  # the weight ramps: 5 %, 20 %, 50 %
        n = rng.poisson(3, runs)
        treated = rng.binomial(n, theta(r_tol, rhos[k]))
        c[:, k] += treated
        b[:, k] += n - treated
        crossed |= rate_log_evalue(c, b, rhos, r_tol, r_tol * np.asarray(FAIL_GRID)) >= math.log(1 / alpha)
    assert crossed.mean() <= alpha
    assert crossed.mean() > 0.002  # not vacuous: the test does spend its budget near the boundary


def test_rate_confidence_sequence_covers_the_truth_and_shrinks() -> None:
    rng = np.random.default_rng(3)
    rho, r = 0.2, 2.0
    n = 3000
    z = rng.random(n) < theta(r, rho)
    lo, hi, mle = rate_confidence_sequence(
        np.array([[z.sum()]]), np.array([[(~z).sum()]]), np.array([rho]), math.log(100)
    )
    assert lo[0] < r < hi[0]
    assert hi[0] / lo[0] < 1.5
    assert abs(mle[0] - r) < 0.25
    lo0, hi0, _ = rate_confidence_sequence(np.zeros((1, 1)), np.zeros((1, 1)), np.array([rho]), math.log(100))
    assert np.isnan(lo0[0]) and np.isnan(hi0[0])  # no events: unbounded, never a failure


def test_non_inferiority_needs_evidence_below_the_tolerance() -> None:
    t = RateTest(1.5)
    t.update(100, 900, 0.1)  # ratio ~1 on 1000 events
    assert t.log_evalue_pass() > math.log(20)
    assert t.log_evalue_fail() < 0
    u = RateTest(1.5)
    u.update(25, 75, 0.1)  # ratio 3
    assert u.log_evalue_pass() < 0


def _cluster_sim(
    rng: np.random.Generator, runs: int, convs: int, icc_sd: float, turns: np.ndarray
) -> np.ndarray:
    """Per-conversation (S_i, n_i) of correlated turns: a shared conversation effect plus noise."""
    z = rng.normal(0, icc_sd, (runs, convs))
    s = turns * (0.8 + z) + rng.normal(0, 0.05, (runs, convs)) * np.sqrt(turns)
    return s


@pytest.mark.parametrize("robust", [True, False])
def test_mean_test_needs_the_cluster_robust_variance(robust: bool) -> None:
    # Long conversations (10 turns) with strong within-conversation correlation, A/A, 60 looks.
    rng = np.random.default_rng(11)
    runs, looks, per_look, alpha = 600, 40, 40, 0.05
    agg = np.zeros((runs, 2, 1, MEAN_FIELDS))
    crossed = np.zeros(runs, bool)
    turns = 10.0
    for _ in range(looks):
        for arm in (0, 1):
            s = _cluster_sim(rng, runs, per_look, 0.1, np.full((runs, per_look), turns))
            n = np.full_like(s, turns)
            if not robust:  # pretend every turn is its own unit
                s = np.repeat(s / turns, int(turns), axis=1) + 0 * np.repeat(n, int(turns), axis=1)
                n = np.ones_like(s)
            d = mean_deltas(np.zeros_like(s), np.zeros_like(n), s, n).sum(axis=1)
            agg[:, arm, 0] += d
        diff, var = stratified_difference(agg[:, 1], agg[:, 0])
        crossed |= msprt_log_evalue(-(diff + 0.0), var, 0.05) >= math.log(1 / alpha)
    if robust:
        assert crossed.mean() <= alpha
    else:
        # the naive (turn-level) variance is 10x too small here: false alarms explode
        assert crossed.mean() > 3 * alpha


def test_stratification_removes_the_simpson_bias_of_a_ramp_with_drift() -> None:
    # Quality drifts 0.8 -> 0.6 for both arms while the weight ramps 5 % -> 50 %: pooled means would
    # show a canary "regression" of ~0.07; per-weight strata show none.
    rng = np.random.default_rng(5)
    agg = np.zeros((2, 2, MEAN_FIELDS))
    for stratum, (rho, level) in enumerate([(0.05, 0.8), (0.5, 0.6)]):
        for arm, p in ((1, rho), (0, 1 - rho)):
            n = int(20000 * p)
            x = level + rng.normal(0, 0.1, n)
            agg[arm, stratum] = mean_deltas(np.zeros(n), np.zeros(n), x, np.ones(n)).sum(axis=0)
    diff, var = stratified_difference(agg[1], agg[0])
    pooled = agg[1, :, 0].sum() / agg[1, :, 1].sum() - agg[0, :, 0].sum() / agg[0, :, 1].sum()
    assert pooled < -0.05
    assert abs(diff) < 4 * math.sqrt(var)


def test_msprt_and_half_width_agree() -> None:
    v, tau, thr = 1e-4, 0.05, math.log(200)
    hw = float(msprt_half_width(v, tau, thr))
    # at the edge of the two-sided interval the one-sided e-value is about twice the two-sided one
    assert float(msprt_log_evalue(hw, v, tau)) == pytest.approx(thr + math.log(2), abs=0.05)


def test_srm_detects_missing_canary_traffic_and_is_quiet_otherwise() -> None:
    rng = np.random.default_rng(1)
    quiet, loud = SampleRatioTest(), SampleRatioTest()
    for _ in range(50):
        n = 200
        t = rng.binomial(n, 0.2)
        quiet.update(t, n - t, 0.2)
        t2 = rng.binomial(n, 0.2 * 0.85)  # 15 % of canary conversations never arrive
        loud.update(t2, n - t2, 0.2)
    assert quiet.log_evalue() < math.log(1000)
    assert loud.log_evalue() > math.log(1000)


def test_restart_schedule_spends_at_most_its_share() -> None:
    assert sum(restart_alpha(j, 0.5) for j in range(1, 10_000)) < 0.5
    s = RestartSchedule(1800, 0.5, span=2)
    s.current = 3
    assert [j for j, _ in s.live_windows()] == [2, 3]
    s4 = RestartSchedule(1800, 0.5)
    s4.current = 6
    assert [j for j, _ in s4.live_windows()] == [3, 4, 5, 6]
    assert s.cumulative_fraction() == 0.5
    assert RestartSchedule(1800, 0.5, enabled=False).live_windows() == []


def test_states_round_trip_through_a_checkpoint() -> None:
    r = RateTest(1.25)
    r.update(3, 10, 0.1)
    r.update(1, 20, 0.3)
    r2 = RateTest.from_state(roundtrip(r.to_state()))
    assert r2.log_evalue_fail() == r.log_evalue_fail()
    assert r.to_state()["v"] == 1
    m = MeanTest(-0.03, 0.06)
    m.update(
        np.array([0, 1, 1]),
        np.array([0, 0, 1]),
        np.zeros(3),
        np.zeros(3),
        np.array([1.6, 1.5, 0.7]),
        np.array([2.0, 2.0, 1.0]),
    )
    m2 = MeanTest.from_state(roundtrip(m.to_state()))
    assert np.array_equal(m.agg, m2.agg)
    s = SampleRatioTest()
    s.update(5, 50, 0.1)
    assert SampleRatioTest.from_state(roundtrip(s.to_state())).log_evalue() == s.log_evalue()
    rs = RestartSchedule(60, 0.4)
    rs.current = 7
    assert RestartSchedule.from_state(roundtrip(rs.to_state())).live_windows() == rs.live_windows()
