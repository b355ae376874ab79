"""Feature flags: treatment vs control of one flag within one version, on the canary judge."""

from __future__ import annotations

from typing import Any

import pytest

from watcher.contract import TurnColumns
from watcher.contract.verdicts import Action
from watcher.judges import STRATEGIES
from watcher.judges.canary import Judge
from watcher.judges.policy import PolicyState, decide, load_policy
from watcher.sim import strategy_traffic as tf
from watcher.state import NullHistory
from watcher.state.rollouts import Rollout, RolloutState

POLICY = load_policy(None).default
FLAG = {"name": "new_prompt", "control": "off", "treatment": "on"}
ROLLOUT = Rollout("ro-flag", "bot", "prod", "flag", "v1", None, 0.5, RolloutState.RUNNING, tf.T0, flag=FLAG)
STRATEGY = STRATEGIES.get("flag")


def arms_for(rollout: Rollout, turns: list[Any], arms: list[str]) -> list[str]:
    assert STRATEGY.arms is not None
    return STRATEGY.arms(rollout, turns, arms, TurnColumns(turns))


def run(
    tr: tf.Traffic, seed: int, *, share: float = 0.5, lose_treatment: float = 0.0, every: int = 2
) -> tuple[float | None, str, object]:
    judge = STRATEGY.judge(ROLLOUT, POLICY, NullHistory())
    assert isinstance(judge, Judge)
    state = PolicyState()
    for i, (turns, arms) in enumerate(tf.flag(tr, seed, share=share)):
        if lose_treatment:
            turns = [
                t
                for t in turns
                if t.flags["new_prompt"] == "off" or hash(t.conversation_id) % 1000 >= lose_treatment * 1000
            ]
            arms = arms[: len(turns)]
        judge.update(turns, arms_for(ROLLOUT, turns, arms), ROLLOUT.canary_weight)
        if i % every == 0:
            ev = judge.evidence(turns[-1].ts)
            d, state = decide(state, ev, POLICY, ROLLOUT.ref(), STRATEGY.conduct)
            if d is not None and d.action in (Action.ROLLBACK, Action.PAUSE):
                return (ev.ts - tf.T0) / 60, d.action.value, d
    return None, "none", None


def test_arms_are_remapped_by_the_flag_within_the_version() -> None:
    mk = lambda v, fl: tf.T(tf.T0, "c", 0, v, {}, 1.0, 0.5, False, False, False, fl)
    turns = [
        mk("v1", {"new_prompt": "on"}),
        mk("v1", {"new_prompt": "off"}),
        mk("v2", {"new_prompt": "on"}),
        mk("v1", {}),
        mk("v1", {"new_prompt": "other"}),
        mk("v1", {"other_flag": "on"}),
    ]
    assert arms_for(ROLLOUT, turns, ["baseline"] * 6) == [
        "canary",
        "baseline",
        "other",
        "other",
        "other",
        "other",
    ]
    assert STRATEGIES.get("canary").arms is None  # a canary's judge sees the routed arms as they are
    anywhere = Rollout("ro-a", "bot", "prod", "flag", None, None, 0.5, RolloutState.RUNNING, tf.T0, flag=FLAG)
    assert arms_for(anywhere, turns, ["baseline"] * 6)[:3] == ["canary", "baseline", "canary"]


@pytest.mark.slow
def test_no_false_rollback_over_100_null_runs() -> None:
    tr = tf.Traffic(minutes=40, conv_per_min=30, p_error=0.02)
    results = [run(tr, seed, every=4) for seed in range(100)]
    assert sum(m is not None for m, _, _ in results) == 0


def test_regression_turns_the_flag_off_through_the_decision_record() -> None:
    minutes, action, d = run(tf.Traffic(minutes=60, conv_per_min=40, error_factor=4.0, p_error=0.01), 1)
    assert minutes is not None and minutes < 40 and action == "rollback"
    rec = d.to_dict()  # what every sink receives
    assert rec["rollout"]["strategy"] == "flag" and rec["rollout"]["flag"] == FLAG
    assert "turn flag new_prompt off (serve off)" in rec["reason"] and rec["trigger"]["metric"] == "error"


def test_sample_ratio_mismatch_between_variants_pauses() -> None:
    minutes, action, d = run(tf.Traffic(minutes=40, conv_per_min=40), 2, lose_treatment=0.3)
    assert action == "pause" and d.cause.value == "sample_ratio_mismatch"
    assert "hold flag new_prompt" in d.reason
