from __future__ import annotations

import math

import numpy as np
import pytest

from tests.support.state import roundtrip
from watcher.stats import (
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
    mean_deltas,
    msprt_half_width,
    msprt_log_evalue,
    rate_confidence_sequence,
    rate_log_evalue,
    restart_alpha,
    stratified_difference,
    theta,
)

RHO = np.array([0.1])


def fail_e(c: float, b: float, r_tol: float, rho: np.ndarray = RHO) -> float:
    """The judges' FAIL e-value of a rate: against "ratio <= r_tol", alternatives above it."""
    return float(rate_log_evalue(np.array([c]), np.array([b]), rho, r_tol, r_tol * np.asarray(FAIL_GRID)))


def pass_e(c: float, b: float, r_tol: float, rho: np.ndarray = RHO) -> float:
    """The PASS (non-inferiority) e-value: against "ratio >= r_tol", alternatives below it."""
    return float(rate_log_evalue(np.array([c]), np.array([b]), rho, r_tol, r_tol / np.asarray(PASS_GRID)))


def test_broken_canary_trips_after_a_handful_of_events() -> None:
    for k in range(1, 10):
        if fail_e(k, 0, 1.5) >= math.log(1 / 0.001):
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
    assert pass_e(100, 900, 1.5) > math.log(20)  # ratio ~1 on 1000 events
    assert fail_e(100, 900, 1.5) < 0
    assert pass_e(25, 75, 1.5) < 0  # ratio 3


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


def _arm(rng: np.random.Generator, runs: int, convs: int, sd: float) -> np.ndarray:
    """(runs, MEAN_FIELDS) sums of ``convs`` conversations with geometric turn counts (mean 3.5, as
    the everyday bench) and a conversation effect of scale ``sd``."""
    turns = np.minimum(rng.geometric(1 / 3.5, (runs, convs)), 40).astype(float)
    s = turns * (0.8 + rng.normal(0, sd, (runs, convs))) + rng.normal(0, 0.08, (runs, convs)) * np.sqrt(turns)
    return mean_deltas(np.zeros_like(s), np.zeros_like(turns), s, turns).sum(axis=1)


@pytest.mark.parametrize(("convs", "floor"), [(20, 1.0), (40, 1.0), (80, 0.5), (400, 0.1)])
def test_the_control_variance_floor_holds_in_the_burn_in_and_fades_after(convs: int, floor: float) -> None:
    # A canary whose own spread is half the control's (a variance 4x smaller): up to
    # FLOOR_CONVERSATIONS its variance is the control-implied one, then that floor fades as 40/G and
    # the canary's own estimate takes over (at 400 conversations the floor is 0.4x its own variance).
    rng = np.random.default_rng(8)
    ctrl = _arm(rng, 1, 20_000, 0.1)[:, None, :]
    treat = _arm(rng, 1, convs, 0.05)[:, None, :]
    _, var_c, _ = cluster_mean(ctrl)
    _, var_t, g_t = cluster_mean(treat)
    _, pooled = stratified_difference(treat, ctrl, pooled=True)
    _, plain = stratified_difference(treat, ctrl)
    assert plain[0] == pytest.approx(var_t[0, 0] + var_c[0, 0])
    n_t, n_c = treat[0, 0, 1], ctrl[0, 0, 1]
    implied = var_c[0, 0] * n_c**2 / 20_000 * g_t[0, 0] / n_t**2
    expected = max(var_t[0, 0], implied * min(1.0, FLOOR_CONVERSATIONS / convs)) + var_c[0, 0]
    assert pooled[0] == pytest.approx(expected)
    if floor == 0.1:
        assert pooled[0] == pytest.approx(plain[0])  # the canary's own estimate, unbiased upward
    else:  # the floor binds: in full (x4 the canary's own variance), then half of it (x2)
        assert pooled[0] > (2.0 if floor == 1.0 else 1.15) * plain[0]


def test_mean_test_with_the_fading_floor_stays_calibrated_on_a_small_growing_canary() -> None:
    # A/A at weight ~0.1 from 24 canary conversations on (the burn-in), 40 looks, 2000 runs: the
    # fading floor keeps the false-alarm rate below alpha while the canary grows to 240 conversations.
    rng = np.random.default_rng(3)
    runs, looks, alpha = 2000, 40, 0.05
    agg = np.zeros((runs, 2, 1, MEAN_FIELDS))
    crossed = np.zeros(runs, bool)
    for k in range(looks):
        agg[:, 0, 0] += _arm(rng, runs, 60, 0.06)
        agg[:, 1, 0] += _arm(rng, runs, 6, 0.06)
        if k >= 3:
            diff, var = stratified_difference(agg[:, 1], agg[:, 0], pooled=True)
            crossed |= msprt_log_evalue(-diff, var, 0.05) >= math.log(1 / alpha)
    assert crossed.mean() <= alpha


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
    """The judges' sample-ratio e-value: every conversation's arm against the expected weight."""
    rng = np.random.default_rng(1)
    quiet, loud = np.zeros(2), np.zeros(2)  # (treatment, control) conversations
    for _ in range(50):
        n = 200
        t = rng.binomial(n, 0.2)
        quiet += (t, n - t)
        t2 = rng.binomial(n, 0.2 * 0.85)  # 15 % of canary conversations never arrive
        loud += (t2, n - t2)
    srm = lambda x: float(rate_log_evalue(x[:1], x[1:], np.array([0.2]), 1.0, np.asarray(SRM_GRID)))
    assert srm(quiet) < math.log(1000)
    assert srm(loud) > math.log(1000)


def test_cluster_mean_marks_what_cannot_be_estimated_as_nan() -> None:
    """NaN, not 0 or inf: a mean of 0 is a real score, and 0 * inf is NaN inside a weighted sum."""
    one = mean_deltas(np.zeros(1), np.zeros(1), np.array([1.6]), np.array([2.0])).sum(axis=0)
    two = one + mean_deltas(np.zeros(1), np.zeros(1), np.array([0.7]), np.array([1.0])).sum(axis=0)
    m, v, g = cluster_mean(np.stack([np.zeros(MEAN_FIELDS), one, two]), 1e-12)
    assert np.isnan(m[0]) and np.isnan(v[0]) and np.isnan(v[1])  # no unit; one conversation
    assert m[1] == pytest.approx(0.8) and m[2] == pytest.approx(2.3 / 3) and g.tolist() == [0, 1, 2]
    # sandwich variance: sum (S_i - m n_i)^2 / n^2 * G / (G - 1)
    want = ((1.6 - m[2] * 2) ** 2 + (0.7 - m[2]) ** 2) / 9 * 2
    assert v[2] == pytest.approx(want)
    same = two.copy()
    same[:] = mean_deltas(np.zeros(2), np.zeros(2), np.array([1.0, 1.0]), np.array([1.0, 1.0])).sum(axis=0)
    assert cluster_mean(same[None], 1e-12)[1][0] == 1e-12  # a constant metric: the floor, not 0


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
    table = np.zeros((3, 2, MEAN_FIELDS))
    table[1, 1] = mean_deltas(np.zeros(1), np.zeros(1), np.array([1.6]), np.array([2.0]))[0]
    assert np.array_equal(array_from_state(roundtrip(array_to_state(table))), table)
    rs = RestartSchedule(60, 0.4)
    rs.current = 7
    assert RestartSchedule.from_state(roundtrip(rs.to_state())).live_windows() == rs.live_windows()


@pytest.mark.parametrize("density", [0.0, 0.05, 0.3, 0.34, 0.9])
def test_cells_to_state_is_array_to_state_without_the_array(density: float) -> None:
    rng = np.random.default_rng(int(density * 100))
    for dtype in (np.int64, np.uint32, np.float64):
        a = np.where(rng.random((7, 3, 11)) < density, rng.integers(1, 9, (7, 3, 11)), 0).astype(dtype)
        nz = np.flatnonzero(a)
        got = cells_to_state(a.shape, dtype, nz, a.reshape(-1)[nz])
        assert got == array_to_state(a)  # the same keys and bytes, sparse or dense
        assert np.array_equal(array_from_state(got), a)
