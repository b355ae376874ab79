from __future__ import annotations

import json

import numpy as np

from judge_sim import T0, Scenario, T, generate
from watcher.judge import Judge
from watcher.policy import PolicyState, decide, load_policy
from watcher.verdicts import Action, Cause, RolloutRef, Verdict

POLICY = load_policy(None).default
REF = RolloutRef("bot/prod/v2@1", "bot", "prod", "canary", "v1", "v2", 0.2)


def turn(cid: str, ts: float, arm: str, **kw: object) -> T:
    base = dict(segment={"intent": "billing"}, latency_ms=400.0, quality=0.8, escalated=False, error=False,
                compliance_violation=False)
    base.update(kw)
    return T(T0 + ts, cid, arm, **base)  # type: ignore[arg-type]


def row(ev, metric: str, slice_: str = "all"):
    return next(m for m in ev.metrics if m.metric == metric and m.slice == slice_)


def test_thin_data_is_nodata_never_a_failure() -> None:
    j = Judge(REF, POLICY, T0)
    turns = [turn(f"c{i}", i, "canary" if i % 5 == 0 else "baseline", error=i % 5 == 0) for i in range(20)]
    j.update(turns, [t.arm for t in turns], 0.2)
    ev = j.evidence(T0 + 20)
    assert {m.verdict for m in ev.metrics} == {Verdict.NODATA}
    assert decide(PolicyState(), ev, POLICY, REF)[0] is None
    assert ev.conversations_treatment == 4 and ev.conversations_control == 16


def test_conversation_is_the_unit_and_other_arms_are_ignored() -> None:
    j = Judge(REF, POLICY, T0)
    turns = [turn("a", k, "canary", error=True) for k in range(3)] + [turn("b", 1, "shadow", error=True)]
    j.update(turns[:2] + turns[3:], ["canary", "canary", "shadow"], 0.2)
    j.update(turns[2:3], ["canary"], 0.2)
    col = j.field["error"]
    assert j.cum[0, :, 1, col].sum() == 1  # three error turns of one conversation: one event
    assert j.cum[0, :, 1, 0].sum() == 1 and j.cum[0, :, 0, 0].sum() == 0  # shadow ignored
    q = j.field["quality"]
    assert j.cum[0, :, 1, q + 1].sum() == 3 and j.cum[0, :, 1, q + 4].sum() == 9  # sum n_i, sum n_i^2


def test_segment_slices_are_bounded() -> None:
    j = Judge(REF, POLICY, T0)
    turns = [turn(f"c{i}", i, "baseline", segment={"tenant": f"t{i}", "intent": "x"}) for i in range(40)]
    j.update(turns, [t.arm for t in turns], 0.2)
    names = set(j.slice_names.values())
    assert len([n for n in names if n.startswith("tenant=")]) == POLICY.segments.max_values_per_key + 1
    assert "tenant=__other__" in names and j.n_slices == 1 + 4 * 13


def test_state_round_trip_gives_identical_evidence() -> None:
    batches = list(generate(Scenario(hours=0.5, conv_per_min=80), 4))
    a = Judge(REF, POLICY, T0)
    for turns, arms, w in batches[:15]:
        a.update(turns, arms, w)
    b = Judge.from_state(json.loads(json.dumps(a.to_state())), POLICY)
    for turns, arms, w in batches[15:]:
        a.update(turns, arms, w)
        b.update(turns, arms, w)
    ts = batches[-1][0][-1].ts
    assert a.evidence(ts) == b.evidence(ts)


def test_sample_ratio_mismatch_pauses() -> None:
    j = Judge(REF, POLICY, T0)
    state, decision = PolicyState(), None
    for turns, arms, w in generate(Scenario(hours=1, conv_per_min=60, canary_share_bias=0.7), 2):
        j.update(turns, arms, w)
        decision, state = decide(state, j.evidence(turns[-1].ts), POLICY, REF)
        if decision:
            break
    assert decision is not None and decision.cause is Cause.SAMPLE_RATIO_MISMATCH
    assert decision.action is Action.PAUSE and "sample ratio mismatch" in decision.reason


def test_late_tail_threshold_comes_from_the_baseline_only() -> None:
    j = Judge(REF, POLICY, T0)
    rng = np.random.default_rng(0)
    turns = [turn(f"c{i}", i, "baseline", latency_ms=float(x)) for i, x in enumerate(rng.uniform(0, 1000, 3200))]
    turns += [turn(f"k{i}", i, "canary", latency_ms=1e6) for i in range(50)]
    j.update(turns, [t.arm for t in turns], 0.2)
    assert 900 < j.tail_q["latency_p95"] < 1000
