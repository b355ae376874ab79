"""The bundled error-budget shares (issue #14): three quarters of alpha to the overall rows and three
quarters of each row's alpha to the restarted tests. Seeded and small (seconds): a regression that
starts at a restart is caught sooner than with the former even shares, in the overall row, and the
A/A runs stay quiet under both. The full measurement is the everyday bench (docs/detection.md)."""

from __future__ import annotations

import dataclasses
import math

import msgspec
import numpy as np

from tests.support.judge_sim import T0, Scenario, generate
from watcher.contract.verdicts import Action, RolloutRef
from watcher.judges.canary import Judge
from watcher.judges.policy import Policy, PolicyState, decide, load_policy

POLICY = load_policy(None).default
EVEN = dataclasses.replace(
    POLICY,
    segments=msgspec.structs.replace(POLICY.segments, budget_share=0.5),
    changepoint=msgspec.structs.replace(POLICY.changepoint, restart_share=0.5),
)
REF = RolloutRef("bot/prod/v2@1", "bot", "prod", "canary", "v1", "v2", 0.2)
WEIGHT = 0.1


def _weight(t: np.ndarray) -> np.ndarray:
    return np.full(np.shape(t), WEIGHT)


def _first_stop(sc: Scenario, seed: int, policy: Policy) -> tuple[float | None, str | None]:
    """(minutes after the onset of the first pause/rollback, its trigger) or (None, None)."""
    judge, state = Judge(REF, policy, T0), PolicyState()
    for turns, arms, w in generate(sc, seed, 60.0):
        judge.update(turns, arms, w)
        d, state = decide(state, judge.evidence(turns[-1].ts), policy, REF)
        if d is not None and d.action in (Action.ROLLBACK, Action.PAUSE):
            trigger = d.trigger or {}
            return (d.ts - T0) / 60 - sc.onset_h * 60, f"{trigger.get('metric')}@{trigger.get('slice')}"
    return None, None


def test_the_bundled_shares_are_three_quarters_to_the_overall_rows_and_to_the_restarts() -> None:
    assert (POLICY.segments.budget_share, POLICY.changepoint.restart_share) == (0.25, 0.75)
    # the overall row of the test restarted at the first epoch needs ln(1/(0.375 * 0.75)) - ln(1/(0.25 * 0.5))
    # = 0.81 nats less than with even shares, at six metrics and alpha 0.01
    now = math.log(1 / (POLICY.alpha * 0.75 / 6 * 0.75 / 2))
    before = math.log(1 / (POLICY.alpha * 0.5 / 6 * 0.5 / 2))
    assert round(before - now, 2) == 0.81


def test_an_error_regression_at_the_first_restart_is_caught_sooner_than_with_even_shares() -> None:
    epoch_h = POLICY.changepoint.epoch_s / 3600
    sc = Scenario(
        hours=1.5, conv_per_min=200, weight=_weight, p_error_turn=0.005, error_factor=4.0, onset_h=epoch_h
    )
    now, before = [], []
    for seed in (1, 2, 3, 4):
        (d_now, why), (d_before, _) = _first_stop(sc, seed, POLICY), _first_stop(sc, seed, EVEN)
        assert d_now is not None and d_now >= 0 and why == "error@all", (seed, d_now, why)
        now.append(d_now)
        before.append(d_before if d_before is not None else math.inf)
    assert all(a <= b for a, b in zip(now, before)), (now, before)
    assert sum(now) < sum(before), (now, before)


def test_a_a_runs_stay_quiet_with_the_bundled_shares() -> None:
    sc = Scenario(hours=1.0, conv_per_min=60, weight=_weight, drift=1.0)
    stops = [seed for seed in range(12) if _first_stop(sc, 500 + seed, POLICY)[0] is not None]
    assert stops == []
