"""Blue-green: green after the switch against blue's history; type I over many null runs, power, modes."""

from __future__ import annotations

import json

import pytest

from bench.strategies import traffic as tf
from watcher.bluegreen import BlueGreenJudge, VersionHistory
from watcher.policy import Action, PolicyState, decide, load_policy
from watcher.verdicts import RolloutRef, Verdict

POLICY = load_policy(None).default
SWITCH = tf.T0 + 3 * 86400
REF = RolloutRef("ro-bg", "bot", "prod", "blue_green", "v1", "v2", 1.0)


def run(tr: tf.Traffic, seed: int, **kw) -> tuple[float | None, BlueGreenJudge | None, str]:
    """(minutes after the switch of the first stop or None, judge, action)."""
    history = VersionHistory()
    judge: BlueGreenJudge | None = None
    state = PolicyState()
    for turns, arms, after in tf.blue_green(tr, seed, switch=SWITCH, **kw):
        history.update(turns, arms)
        if not after:
            continue
        if judge is None:
            judge = BlueGreenJudge(REF, POLICY, SWITCH, history)
        judge.update(turns, arms, 1.0)
        ev = judge.evidence(turns[-1].ts)
        d, state = decide(state, ev, POLICY, REF)
        if d is not None and d.action in (Action.ROLLBACK, Action.PAUSE):
            return (ev.ts - SWITCH) / 60, judge, d.action.value
    return None, judge, "none"


def test_history_is_bounded_and_keyed_by_version() -> None:
    h = VersionHistory(bucket_s=1800, days=1, max_versions=2)
    for i, v in enumerate(("v1", "v2", "v3")):
        for turns, arms in tf.shadow(tf.Traffic(minutes=10, conv_per_min=10), i, paired=False, start=tf.T0 + 600 * i):
            for t in turns:
                t.version = v
            h.update(turns, arms)
    assert {k[2] for k in h.buckets} == {"v2", "v3"}  # the least recently seen version is forgotten
    ref = h.reference("bot", "prod", "v3", tf.T0, tf.T0 + 1800)
    assert ref["all"][0] > 50 and "intent=billing" in ref
    h2 = VersionHistory.from_state(json.loads(json.dumps(h.to_state())))
    assert (h2.reference("bot", "prod", "v3", tf.T0, tf.T0 + 3600)["all"]
            == h.reference("bot", "prod", "v3", tf.T0, tf.T0 + 3600)["all"]).all()
    late = [tf.T(tf.T0 + 3 * 86400, "late", 0, "v3", {}, 400.0, 0.8, False, False, False)]
    h.update(late, ["live"])
    assert h.reference("bot", "prod", "v3", tf.T0, tf.T0 + 3600) == {}  # older than `days`: pruned


@pytest.mark.slow
def test_no_false_rollback_over_100_null_runs_with_a_daily_cycle() -> None:
    tr = tf.Traffic(minutes=30, conv_per_min=20, daily_amp=1.0, p_error=0.02, p_escalation=0.02)
    results = [run(tr, seed) for seed in range(100)]
    assert sum(m is not None for m, _, _ in results) == 0
    assert all(j is not None and j.ref.mode == "recent" for _, j, _ in results)


def test_same_hours_reference_absorbs_a_strong_daily_cycle() -> None:
    # amplitude 4: quality falls ~0.03 within the hour after the switch in every version; the
    # same hours of the previous days see the same fall, so no rollback
    tr = tf.Traffic(minutes=60, conv_per_min=20, daily_amp=4.0)
    for seed in range(5):
        m, j, _ = run(tr, seed, history_days=2, history_conv_per_min=20)
        assert j is not None and j.ref.mode == "same_hours" and j.ref.days == 2
        assert m is None
    rows = j.evidence(SWITCH + 3600).metrics
    assert "same hours of 2 previous day(s)" in rows[0].reason


@pytest.mark.parametrize(("effect", "metric", "within"), [
    ({"quality_shift": -0.08}, "quality", 10), ({"latency_factor": 1.4}, "latency", 10),
    ({"error_factor": 5.0, "p_error": 0.01}, "error", 30)])
def test_regressions_are_caught_within_minutes(effect: dict, metric: str, within: float) -> None:
    minutes, judge, action = run(tf.Traffic(minutes=60, conv_per_min=60, **effect), 3)
    assert minutes is not None and minutes <= within
    assert judge is not None
    fails = {m.metric for m in judge.evidence(SWITCH + minutes * 60).metrics if m.verdict is Verdict.FAIL}
    assert metric in fails


def test_without_history_nothing_is_judged_and_state_round_trips() -> None:
    j = BlueGreenJudge(REF, POLICY, SWITCH, VersionHistory())
    for turns, arms, after in tf.blue_green(tf.Traffic(minutes=20), 1, switch=SWITCH, before_min=1):
        if after:
            j.update(turns, arms)
    ev = j.evidence(SWITCH + 1200)
    assert j.ref.mode == "none" and all(m.verdict is Verdict.NODATA for m in ev.metrics)
    assert decide(PolicyState(), ev, POLICY, REF)[0] is None
    m, judge, _ = run(tf.Traffic(minutes=20, conv_per_min=30), 2)
    assert judge is not None
    j2 = BlueGreenJudge.from_state(json.loads(json.dumps(judge.to_state())), POLICY)
    a, b = judge.evidence(SWITCH + 1200), j2.evidence(SWITCH + 1200)
    assert [r.reason for r in a.metrics] == [r.reason for r in b.metrics]
