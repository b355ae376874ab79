"""The paired shadow judge: pairing, exact discordance e-test, type I over many null runs, power."""

from __future__ import annotations

import math
import zlib
from dataclasses import replace

import numpy as np
import pytest

from tests.support.state import roundtrip
from watcher.contract.verdicts import Action, RolloutRef, Verdict
from watcher.judges import STRATEGIES
from watcher.judges.policy import PolicyState, decide, load_policy
from watcher.judges.shadow import ShadowJudge, ShadowSettings
from watcher.sim import strategy_traffic as tf
from watcher.stats import array_to_state

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


# -- a partly mirrored shadow: the unpaired rate test against the live answers not mirrored --------
def _mirrored(tr: tf.Traffic, seed: int, share: float):
    """``tf.shadow`` with the shadow answering only the conversations whose id hashes below ``share``
    (a mirror of part of the traffic)."""
    for turns, arms in tf.shadow(tr, seed):
        kept = [
            (t, a)
            for t, a in zip(turns, arms)
            if a == "live" or zlib.crc32(t.conversation_id.encode()) % 1000 < share * 1000
        ]
        yield [t for t, _ in kept], [a for _, a in kept]


def _run_mirrored(
    tr: tf.Traffic, seed: int, weight: float, share: float = 0.2
) -> tuple[float | None, ShadowJudge, str]:
    j = ShadowJudge(replace(REF, canary_weight=weight), POLICY, tf.T0)
    state = PolicyState()
    for turns, arms in _mirrored(tr, seed, share):
        j.update(turns, arms)
        ev = j.evidence(turns[-1].ts)
        d, state = decide(state, ev, POLICY, REF, CONDUCT)
        if d is not None and d.action in (Action.ROLLBACK, Action.PAUSE):
            return (ev.ts - tf.T0) / 60, j, d.reason
    return None, j, ""


def test_a_partly_mirrored_shadow_is_also_judged_against_the_live_answers_not_mirrored() -> None:
    # 20 % mirrored, errors x4: the paired test sees the discordant fifth only; the marker's share
    # (canary_weight 0.2) adds the canary's conditional test against the other 80 % and stops sooner
    tr = tf.Traffic(minutes=90, conv_per_min=40, p_error=0.01, error_factor=4.0)
    both, j, reason = _run_mirrored(tr, 3, 0.2)
    paired, j1, _ = _run_mirrored(tr, 3, 1.0)
    assert both is not None and "error" in reason and "not mirrored" in reason
    assert paired is None or both < paired
    assert j1.mirror_share is None and j1.n_fields < j.n_fields  # everything mirrored: paired alone
    n_m, n_u = j.cum[0, j.u_conv], j.cum[0, j.u_conv + 1]
    assert 0.15 < n_m / (n_m + n_u) < 0.25  # settled conversations, split as the mirror does


def test_the_unpaired_test_counts_a_conversation_only_once_it_is_settled() -> None:
    # both sides from the same moment: a mirrored conversation's shadow event waits as long as an
    # unmirrored one's live event (mirror_settle_s after its first turn), then each counts once
    j = ShadowJudge(replace(REF, canary_weight=0.5), POLICY, tf.T0)
    (turns, arms), *_ = tf.shadow(tf.Traffic(minutes=1, conv_per_min=10), 2)
    t0 = next(t for t, a in zip(turns, arms) if a == "live")
    live = replace(t0, error=True, turn=0)
    shadow = replace(t0, error=True, turn=0, version="v2")
    other = replace(t0, conversation_id="other", error=True, turn=0)
    j.update([live, shadow, other], ["live", "shadow", "live"])
    uf = j.ufield["error"]
    assert j.cum[0, uf] == j.cum[0, uf + 1] == 0 and len(j.fresh) == 2
    late = replace(t0, conversation_id="late", ts=t0.ts + j.settings.mirror_settle_s + 1)
    j.update([late, replace(shadow, turn=1)], ["live", "shadow"])
    assert (j.cum[0, j.u_conv], j.cum[0, j.u_conv + 1]) == (1, 1)  # t0's mirrored, "other" not
    assert (j.cum[0, uf], j.cum[0, uf + 1]) == (1, 1)  # each event once; t0's live error is paired
    assert list(j.fresh) == ["late"]
    j2 = ShadowJudge.from_state(roundtrip(j.to_state()), POLICY)
    assert list(j2.fresh) == ["late"] and (j2.cum == j.cum).all()
    old = j.to_state()  # a version-1 state (before the unpaired test) loads with its fields at 0
    old = {**old, "v": 1, "cum": array_to_state(j.cum[:, : j.u_conv])}
    old.pop("units"), old.pop("fresh")
    old["epochs"] = {}
    j1 = ShadowJudge.from_state(roundtrip(old), POLICY)
    assert j1.cum.shape == j.cum.shape and (j1.cum[:, j.u_conv :] == 0).all() and not j1.fresh


@pytest.mark.slow
def test_a_partly_mirrored_shadow_has_no_false_rollback_over_100_null_runs() -> None:
    tr = tf.Traffic(minutes=45, conv_per_min=30, p_error=0.02, p_escalation=0.02, p_compliance=0.01)
    stops = [_run_mirrored(tr, seed, 0.2)[0] for seed in range(100)]
    assert sum(s is not None for s in stops) == 0  # alpha = 1 %


def test_a_marker_that_understates_the_mirrored_share_does_not_make_a_healthy_shadow_fail() -> None:
    # the marker says 5 %, the mirror copies 20 %: with the marker's share, a mirrored conversation's
    # events would look 4x too many; the settled conversations' share replaces it
    tr = tf.Traffic(minutes=60, conv_per_min=40, p_error=0.03, p_escalation=0.03, p_compliance=0.02)
    assert all(_run_mirrored(tr, seed, 0.05)[0] is None for seed in range(5))
