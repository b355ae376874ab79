"""Statistical guarantees of the judge + policy, end to end on seeded traffic (slow).

Measured figures (type-I, detection delays) are printed with ``pytest -s -m slow``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.support.judge_sim import T0, Scenario, generate
from watcher.contract.verdicts import Action, Cause, RolloutRef, Verdict
from watcher.judges.canary import Judge
from watcher.judges.policy import ChangepointSettings, Policy, PolicyState, decide, load_policy

POLICY = load_policy(None).default
REF = RolloutRef("bot/prod/v2@1", "bot", "prod", "canary", "v1", "v2", 0.2)
pytestmark = pytest.mark.slow


def ramp(t: np.ndarray) -> np.ndarray:
    return np.select([t < 1200, t < 2400], [0.05, 0.2], 0.5)


def HALF(t: np.ndarray) -> np.ndarray:
    return np.full(np.shape(t), 0.5)


NULL_SHAPES = {
    "a/a": (Scenario(hours=1, conv_per_min=40), 34),
    "time_of_day_drift": (
        Scenario(hours=2, conv_per_min=30, drift=1.0, weight=lambda t: np.full(np.shape(t), 0.3)),
        34,
    ),
    "low_traffic": (Scenario(hours=2, conv_per_min=5, weight=lambda t: np.full(np.shape(t), 0.1)), 34),
    "rare_events_low_weight": (
        Scenario(
            hours=1,
            conv_per_min=80,
            p_error_turn=0.0017,
            p_compliance_turn=0.0007,
            weight=lambda t: np.full(np.shape(t), 0.05),
        ),
        34,
    ),
    "long_correlated_conversations": (Scenario(hours=1.5, conv_per_min=15, turns_mean=12, z_sd=0.15), 34),
    "weight_ramp_with_drift": (Scenario(hours=1, conv_per_min=40, drift=1.0, weight=ramp), 34),
}


def run(
    sc: Scenario,
    seed: int,
    policy: Policy = POLICY,
    *,
    batch_s: float = 120.0,
    until: tuple[str, str] | None = None,
) -> tuple[list, float | None]:
    """Feeds the judge batch by batch, evaluating after every batch. Returns (decisions, minutes to the
    first FAIL of `until` = (metric, slice) counted from the regression's onset)."""
    judge, state, decisions = Judge(REF, policy, T0), PolicyState(), []
    for turns, arms, w in generate(sc, seed, batch_s):
        judge.update(turns, arms, w)
        ts = turns[-1].ts
        ev = judge.evidence(ts)
        d, state = decide(state, ev, policy, REF)
        if d is not None:
            decisions.append(d)
        if until and any(m.verdict is Verdict.FAIL and (m.metric, m.slice) == until for m in ev.metrics):
            return decisions, (ts - T0) / 60 - sc.onset_h * 60
    return decisions, None


def test_false_rollbacks_stay_below_alpha_over_204_null_runs() -> None:
    false_stops = {}
    runs = 0
    for name, (sc, n) in NULL_SHAPES.items():
        bad = 0
        for seed in range(n):
            decisions, _ = run(sc, 1000 + seed)
            runs += 1
            bad += any(d.action in (Action.ROLLBACK, Action.PAUSE) for d in decisions)
        false_stops[name] = bad
    print(f"\nnull runs: {runs}, runs with a false pause/rollback by shape: {false_stops}")
    assert runs >= 200
    # alpha = 0.01 for the family plus 0.001 for SRM: expected <= 2.2 of 204; allow binomial slack of 1
    assert sum(false_stops.values()) <= 3


POWER = {
    # name: (scenario, (metric, slice) that must fail, max minutes after onset)
    "escalation_+3pp": (
        Scenario(hours=3, conv_per_min=150, p_escalation=0.04, escalation_add=0.03, weight=HALF),
        ("escalation", "all"),
        150,
    ),
    "quality_-0.15_one_segment": (
        Scenario(hours=2, conv_per_min=60, quality_shift=-0.15, quality_segment="billing"),
        ("quality", "intent=billing"),
        60,
    ),
    "latency_+25%": (Scenario(hours=2, conv_per_min=60, latency_factor=1.25), ("latency", "all"), 60),
    "slow_tail_5%_of_turns": (
        Scenario(hours=3, conv_per_min=200, slow_tail=0.05, weight=HALF),
        ("latency_p95", "all"),
        120,
    ),
    "errors_x4": (Scenario(hours=3, conv_per_min=200), ("error", "all"), 150),
    "compliance_x5": (Scenario(hours=4, conv_per_min=200), ("compliance", "all"), 200),
    "gradual_quality_drift": (
        Scenario(hours=4, conv_per_min=60, quality_shift=-0.15, quality_ramp=True),
        ("quality", "all"),
        180,
    ),
    "quality_-0.1_from_first_minute": (
        Scenario(hours=2, conv_per_min=60, quality_shift=-0.1),
        ("quality", "all"),
        30,
    ),
}
POWER["errors_x4"][0].error_factor = 4.0
POWER["compliance_x5"][0].compliance_factor = 5.0


@pytest.mark.parametrize("name", list(POWER))
def test_each_regression_type_is_detected(name: str) -> None:
    sc, target, limit = POWER[name]
    delays = []
    for seed in (1, 2):
        decisions, delay = run(sc, seed, until=target)
        assert delay is not None, f"{name} not detected (seed {seed})"
        delays.append(delay)
    print(f"\n{name}: {target} failed after {delays} min")
    assert max(delays) <= limit


def test_late_regression_is_not_diluted_by_healthy_hours() -> None:
    late = Scenario(hours=6, conv_per_min=40, quality_shift=-0.06, onset_h=4.0)
    early = dataclasses.replace(late, hours=2.0, onset_h=0.0)
    no_cp = dataclasses.replace(POLICY, changepoint=ChangepointSettings(enabled=False))
    out = {}
    for label, sc, pol in (
        ("late", late, POLICY),
        ("early", early, POLICY),
        ("late_without_restarts", late, no_cp),
    ):
        out[label] = [run(sc, seed, pol, until=("quality", "all"))[1] for seed in (1, 2, 3)]
    print(f"\nminutes from onset to detection: {out}")
    assert all(d is not None for d in out["late"] + out["early"])
    late_med = float(np.median(out["late"]))
    assert late_med <= 2.0 * float(np.median(out["early"])) + 30
    diluted = [d if d is not None else 120.0 for d in out["late_without_restarts"]]
    assert late_med < float(np.median(diluted))


def test_sample_ratio_mismatch_detected_and_quiet_under_weight_changes() -> None:
    delays = []
    for seed in range(3):
        decisions, _ = run(Scenario(hours=1, conv_per_min=80, canary_share_bias=0.8), seed, batch_s=60)
        srm = [d for d in decisions if d.cause is Cause.SAMPLE_RATIO_MISMATCH]
        assert srm, "20 % of canary conversations missing went unnoticed"
        delays.append(round((srm[0].ts - T0) / 60))
    print(f"\nSRM (20 % canary loss, weight 0.2, 80 conv/min) paused after {delays} min")
    for seed in range(5):
        decisions, _ = run(Scenario(hours=1, conv_per_min=60, weight=ramp), 50 + seed)
        assert not [d for d in decisions if d.cause is Cause.SAMPLE_RATIO_MISMATCH]


def test_healthy_canary_is_promoted_after_the_minimum_duration() -> None:
    sc = Scenario(
        hours=3,
        conv_per_min=300,
        p_error_turn=0.01,
        p_compliance_turn=0.005,
        weight=lambda t: np.full(np.shape(t), 0.5),
    )
    decisions, _ = run(sc, 9, batch_s=300)
    assert [d.action for d in decisions] == [Action.PROMOTE]
    assert decisions[0].ts - T0 >= POLICY.promote.min_duration_s
    print(f"\npromoted after {(decisions[0].ts - T0) / 60:.0f} min: {decisions[0].reason}")
    # Why promotion has its own margins: with the tight FAIL tolerances as promotion margins the same
    # healthy canary is not shown non-inferior within 3 hours (nor stopped).
    single = dataclasses.replace(
        POLICY, metrics=tuple(dataclasses.replace(m, promote_tolerance=None) for m in POLICY.metrics)
    )
    assert run(sc, 9, single, batch_s=300)[0] == []
