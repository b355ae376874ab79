"""The paired shadow judge: pairing, exact discordance e-test, type I over many null runs, power."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from tests.support.state import roundtrip
from watcher.contract.verdicts import Action, RolloutRef, Verdict
from watcher.judges import STRATEGIES
from watcher.judges.policy import PolicyState, decide, load_policy
from watcher.judges.shadow import ShadowJudge, ShadowSettings
from watcher.sim import strategy_traffic as tf

POLICY = load_policy(None).default
REF = RolloutRef("ro-shadow", "bot", "prod", "shadow", "v1", "v2", 1.0)
CONDUCT = STRATEGIES.get("shadow").conduct


def run(tr: tf.Traffic, seed: int, *, policy=POLICY, every: int = 1) -> tuple[float | None, ShadowJudge, str]:
    """(minutes to the first stop or None, judge, action)."""
    j = ShadowJudge(REF, policy, tf.T0)
    state = PolicyState()
    for i, (turns, arms) in enumerate(tf.shadow(tr, seed)):
        j.update(turns, arms, 1.0)
        if i % every == 0:
            ev = j.evidence(turns[-1].ts)
            d, state = decide(state, ev, policy, REF, CONDUCT)
            if d is not None and d.action in (Action.ROLLBACK, Action.PAUSE):
                return (ev.ts - tf.T0) / 60, j, d.action.value
    return None, j, "none"


def test_pairs_by_conversation_and_turn_and_counts_unpaired() -> None:
    j = ShadowJudge(REF, POLICY, tf.T0, ShadowSettings(pair_window_s=60.0))
    batches = list(tf.shadow(tf.Traffic(minutes=5), 3))
    turns = [t for b, _ in batches for t in b]
    arms = [a for _, b in batches for a in b]
    drop = {i for i, a in enumerate(arms) if a == "shadow" and i % 10 == 0}
    kept = [(t, a) for i, (t, a) in enumerate(zip(turns, arms)) if i not in drop]
    kept.insert(2, kept[1])  # a duplicate while its original waits (the engine's deduplicator drops most)
    j.update([t for t, _ in kept], [a for _, a in kept])
    j.update([replace(turns[0], ts=tf.T0 + 3600)], ["live"])  # moves event time: everything old expires
    p = j.pairing()
    assert p["paired"] == arms.count("shadow") - len(drop)
    assert p["unpaired_live"] == len(drop) and p["unpaired_shadow"] == 0 and p["duplicates"] == 1
    assert p["pending"] == 1
    # the unit: conversations with at least one pair
    assert (
        j.cum[0, 0]
        == len({t.conversation_id for t, a in kept if a == "shadow"})
        < len({t.conversation_id for t in turns})
    )


def test_pending_table_is_bounded_by_count() -> None:
    j = ShadowJudge(REF, POLICY, tf.T0, ShadowSettings(max_pending=100))
    turns = [t for b, a in tf.shadow(tf.Traffic(minutes=5), 4) for t, x in zip(b, a) if x == "live"]
    j.update(turns, ["live"] * len(turns))
    assert len(j.pending) == 100 and j.pairing()["unpaired_live"] == len(turns) - 100


def test_discordance_is_exact_for_rare_events() -> None:
    """~20 shadow-only errors with no live-only one fail at the overall row's threshold (1/(0.01*0.7/6/2)
    = 1714; theta_tol = 0.6, so each discordance multiplies the e-value by at most 1/0.6); balanced
    discordance does not."""
    from watcher.stats import FAIL_GRID, rate_log_evalue

    e = rate_log_evalue(
        np.array([[20.0]]), np.array([[0.0]]), np.array([0.5]), 1.5, 1.5 * np.asarray(FAIL_GRID)
    )
    assert math.exp(e.item()) > 1 / (0.01 * 0.7 / 6 / 2)
    e = rate_log_evalue(
        np.array([[40.0]]), np.array([[40.0]]), np.array([0.5]), 1.5, 1.5 * np.asarray(FAIL_GRID)
    )
    assert e.item() < 0


@pytest.mark.slow
def test_no_false_rollback_over_120_null_runs() -> None:
    tr = tf.Traffic(minutes=45, conv_per_min=20, p_error=0.02, p_escalation=0.02)
    stops = [run(tr, seed, every=2)[0] for seed in range(120)]
    assert sum(s is not None for s in stops) == 0  # alpha = 1 %: expected < 1.2, observed 0


@pytest.mark.parametrize(
    ("effect", "metric", "within"),
    [
        ({"quality_shift": -0.06}, "quality", 15),
        ({"error_factor": 4.0, "p_error": 0.01}, "error", 40),
        ({"latency_factor": 1.3}, "latency", 15),
        ({"escalation_factor": 3.0, "p_escalation": 0.02}, "escalation", 40),
    ],
)
def test_each_regression_type_rolls_back_the_shadow(effect: dict, metric: str, within: float) -> None:
    minutes, j, action = run(tf.Traffic(minutes=60, conv_per_min=20, **effect), 7)
    assert minutes is not None and minutes <= within and action == "rollback"  # shadow: no pause, a rollback
    failing = [m for m in j.evidence(tf.T0 + minutes * 60).metrics if m.verdict is Verdict.FAIL]
    assert metric in {m.metric for m in failing}


def test_segment_regression_is_found_in_its_slice() -> None:
    tr = tf.Traffic(minutes=90, conv_per_min=40)
    j = ShadowJudge(REF, POLICY, tf.T0)
    for turns, arms in tf.shadow(tr, 5):
        for t, a in zip(turns, arms):
            if a == "shadow" and t.segment["intent"] == "sales" and t.quality is not None:
                t.quality = max(t.quality - 0.15, 0.0)
        j.update(turns, arms)
    rows = {(m.metric, m.slice): m for m in j.evidence(turns[-1].ts).metrics}
    assert rows[("quality", "intent=sales")].verdict is Verdict.FAIL
    assert rows[("quality", "intent=tech")].verdict is not Verdict.FAIL


def test_healthy_shadow_is_promoted_and_state_round_trips() -> None:

    tr = tf.Traffic(minutes=60, conv_per_min=100, p_error=0.03, p_escalation=0.03, p_compliance=0.03)
    j = ShadowJudge(REF, POLICY, tf.T0)
    for turns, arms in tf.shadow(tr, 11):
        j.update(turns, arms)
    ev = j.evidence(turns[-1].ts)
    d, _ = decide(PolicyState(), ev, POLICY, REF, CONDUCT)
    assert d is not None and d.action is Action.PROMOTE and "ready for canary traffic" in d.reason
    j2 = ShadowJudge.from_state(roundtrip(j.to_state()), POLICY)
    ev2 = j2.evidence(turns[-1].ts)
    assert [m.statistic for m in ev2.metrics] == pytest.approx([m.statistic for m in ev.metrics])
