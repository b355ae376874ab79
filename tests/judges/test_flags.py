"""Feature flags: treatment vs control of one flag within one version, on the canary judge."""

from __future__ import annotations

import pytest

from watcher.contract.verdicts import Action
from watcher.judges import strategies
from watcher.judges.canary import Judge
from watcher.judges.policy import PolicyState, decide, load_policy
from watcher.sim import strategy_traffic as tf
from watcher.state.rollouts import Rollout, RolloutState

POLICY = load_policy(None).default
FLAG = {"name": "new_prompt", "control": "off", "treatment": "on"}
ROLLOUT = Rollout("ro-flag", "bot", "prod", "flag", "v1", None, 0.5, RolloutState.RUNNING, tf.T0, flag=FLAG)


def run(
    tr: tf.Traffic, seed: int, *, share: float = 0.5, lose_treatment: float = 0.0, every: int = 2
) -> tuple[float | None, str, object]:
    judge = strategies.judge_for(ROLLOUT, POLICY, strategies.NullHistory())
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
        judge.update(turns, strategies.arms_for(ROLLOUT, turns, arms), ROLLOUT.canary_weight)
        if i % every == 0:
            ev = judge.evidence(turns[-1].ts)
            d, state = decide(state, ev, POLICY, ROLLOUT.ref())
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
    assert strategies.arms_for(ROLLOUT, turns, ["baseline"] * 6) == [
        "canary",
        "baseline",
        "other",
        "other",
        "other",
        "other",
    ]
    canary = Rollout("ro-c", "bot", "prod", "canary", "v1", "v2", 0.1, RolloutState.RUNNING, tf.T0)
    assert strategies.arms_for(canary, turns, ["x"] * 6) == ["x"] * 6
    bad = Rollout("ro-b", "bot", "prod", "flag", "v1", None, 0.5, RolloutState.RUNNING, tf.T0, flag=None)
    assert strategies.judge_for(bad, POLICY, strategies.NullHistory()) is None
    unknown = Rollout("ro-u", "bot", "prod", "dark_launch", "v1", "v2", 0.5, RolloutState.RUNNING, tf.T0)
    assert strategies.judge_for(unknown, POLICY, strategies.NullHistory()) is None


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
