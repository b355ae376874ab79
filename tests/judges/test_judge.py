from __future__ import annotations

import math

import numpy as np

from tests.support.judge_sim import T0, Scenario, T, generate
from tests.support.state import roundtrip
from watcher.contract.schema import Turn
from watcher.contract.verdicts import Action, Cause, RolloutRef, Verdict
from watcher.judges.canary import Judge
from watcher.judges.helpers import mean_params
from watcher.judges.policy import PolicyState, decide, load_policy

POLICY = load_policy(None).default
REF = RolloutRef("bot/prod/v2@1", "bot", "prod", "canary", "v1", "v2", 0.2)


def turn(cid: str, ts: float, arm: str, **kw: object) -> T:
    base = dict(
        segment={"intent": "billing"},
        latency_ms=400.0,
        quality=0.8,
        escalated=False,
        error=False,
        compliance_violation=False,
    )
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
    b = Judge.from_state(roundtrip(a.to_state()), POLICY)
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
    turns = [
        turn(f"c{i}", i, "baseline", latency_ms=float(x)) for i, x in enumerate(rng.uniform(0, 1000, 3200))
    ]
    turns += [turn(f"k{i}", i, "canary", latency_ms=1e6) for i in range(50)]
    j.update(turns, [t.arm for t in turns], 0.2)
    assert 900 < j.tail_q["latency_p95"] < 1000


def test_small_tables_rotate_and_fold_without_changing_the_numbers(monkeypatch) -> None:
    # A conversation table that rotates (conversations migrate between generations) and a group table
    # folded into materialised bases many times must give the same tables as roomy ones.
    import watcher.judges.tables as judge_tables

    batches = list(generate(Scenario(hours=1, conv_per_min=40, turns_mean=4), 5, 60.0))
    roomy = Judge(REF, POLICY, T0)
    monkeypatch.setattr(judge_tables, "_GROUPS", 4)
    small = Judge(REF, POLICY, T0, capacity=300)
    for turns, arms, w in batches:
        roomy.update(turns, arms, w)
        small.update(turns, arms, w)
    assert small.conv.gen >= 3 and small._cells.limit > 4  # it did rotate and fold
    assert np.allclose(small.cum, roomy.cum, rtol=1e-12, atol=1e-9)
    assert roomy.cum[0, :, :, 0].sum() == len({t.conversation_id for b in batches for t in b[0]})
    ts = batches[-1][0][-1].ts
    a, b = roomy.evidence(ts), small.evidence(ts)
    assert [(m.metric, m.slice, m.verdict) for m in a.metrics] == [
        (m.metric, m.slice, m.verdict) for m in b.metrics
    ]


def test_turns_of_one_conversation_in_one_batch_count_once_and_keep_the_first_arm() -> None:
    j = Judge(REF, POLICY, T0)
    turns = [
        turn("a", 0, "canary", escalated=True),
        turn("b", 1, "baseline"),
        turn("a", 2, "canary", error=True),
        turn("a", 3, "baseline", escalated=True),
    ]
    j.update(turns, [t.arm for t in turns], 0.2)
    assert j.cum[0, :, 1, 0].sum() == 1 and j.cum[0, :, 0, 0].sum() == 1
    assert j.cum[0, :, 1, j.field["escalation"]].sum() == 1  # the conversation's first escalation only
    assert j.cum[0, :, 1, j.field["quality"] + 1].sum() == 3  # its three turns, all under its first arm


def _margins(policy, **pairs: tuple[float, float | None]):
    """``policy`` with (tolerance, promote_tolerance) replaced for the named metrics."""
    import dataclasses

    ms = tuple(
        dataclasses.replace(m, tolerance=pairs[m.name][0], promote_tolerance=pairs[m.name][1])
        if m.name in pairs
        else m
        for m in policy.metrics
    )
    return dataclasses.replace(policy, metrics=ms)


def test_promote_tolerance_moves_only_the_pass_test() -> None:
    # The same healthy traffic judged with (tolerance, promote margin) = (tight, wide), (tight, tight)
    # and (wide, wide): the FAIL e-value is the tight tolerance's, the PASS verdict the margin's.
    tight = dict(quality=(-0.004, None), latency=(1.0, None), escalation=(1.05, None))
    wide = dict(quality=(-0.03, None), latency=(1.10, None), escalation=(1.25, None))
    split = {k: (tight[k][0], wide[k][0]) for k in tight}
    batches = list(
        generate(Scenario(hours=1, conv_per_min=300, weight=lambda t: np.full(np.shape(t), 0.5)), 3, 300.0)
    )
    out = {}
    for label, pairs in (("tight", tight), ("wide", wide), ("split", split)):
        pol = _margins(POLICY, **pairs)
        j = Judge(REF, pol, T0)
        for turns, arms, w in batches:
            j.update(turns, arms, w)
        out[label] = {m.metric: m for m in j.evidence(batches[-1][0][-1].ts).metrics if m.slice == "all"}
    for name in tight:
        s, t, w = out["split"][name], out["tight"][name], out["wide"][name]
        assert s.statistic == t.statistic and s.tolerance == t.tolerance  # FAIL: the tolerance
        assert s.promote_tolerance == w.tolerance and t.promote_tolerance == t.tolerance
        assert (s.verdict, w.verdict, t.verdict) == (Verdict.PASS, Verdict.PASS, Verdict.INCONCLUSIVE), name
        assert "(margin " in s.reason and "(margin " not in w.reason


def test_every_judge_shares_the_promote_margin_helper() -> None:
    lat = POLICY.metric("latency")
    assert mean_params(lat)[:2] == (math.log(1.025), 0.15)  # FAIL: tolerance, the latency mixing scale
    assert mean_params(lat, promote=True)[:2] == (math.log(1.10), 2 * math.log(1.10))  # PASS: the margin
    q = POLICY.metric("quality")
    assert mean_params(q, promote=True) == (-0.03, 0.06, -1.0)


def test_examples_are_the_treatments_worst_conversations_in_the_slice() -> None:
    j = Judge(REF, POLICY, T0)
    turns = [
        turn("bad-billing", 1, "canary", quality=0.1, latency_ms=900.0, error=True),
        turn("worse-billing", 2, "canary", quality=0.05),
        turn("bad-baseline", 3, "baseline", quality=0.0, latency_ms=5000.0, error=True),
        turn("bad-sales", 4, "canary", quality=0.0, segment={"intent": "sales"}, latency_ms=2000.0),
        turn("ok-billing", 5, "canary", quality=0.9, latency_ms=100.0, error=True),
        turn("worse-billing", 6, "canary", quality=0.07),  # the conversation's mean: 0.06
    ]
    j.update(turns, [t.arm for t in turns], 0.2)
    # the lowest mean quality first; a baseline conversation and another segment are never examples
    assert [c for c, *_ in j.examples("quality", "intent=billing", 5)] == [
        "worse-billing",
        "bad-billing",
        "ok-billing",
    ]
    [(cid, q, trace)] = j.examples("quality", "intent=billing", 1)
    assert cid == "worse-billing" and abs(q - 0.06) < 1e-3 and trace is None  # q on the grid of 1/1024
    assert j.examples("quality", "all", 1)[0][0] == "bad-sales"
    assert [c for c, *_ in j.examples("latency", "all", 2)] == ["bad-sales", "bad-billing"]
    assert abs(j.examples("latency", "all", 1)[0][1] - 2000.0) < 2.0  # ms, the conversation's geometric mean
    # a rate: the conversations that had the event, whatever their other metrics
    assert [c for c, *_ in j.examples("error", "intent=billing", 5)] == ["bad-billing", "ok-billing"]
    assert j.examples("error", "intent=nowhere", 5) == [] and j.examples("nometric", "all", 5) == []


def test_examples_carry_the_trace_of_the_conversations_latest_turn() -> None:
    j = Judge(REF, POLICY, T0)

    def t(i: int, cid: str, trace: str | None, arm: str = "canary") -> Turn:
        return Turn(
            event_id=f"e{i}", ts=T0 + i, agent_id="bot", version="v2", conversation_id=cid, turn=i,
            arm=arm, quality=0.1 * i, segment={"intent": "billing"}, trace_id=trace,
        )  # fmt: skip

    first = [t(1, "a", "trace-a1"), t(2, "b", None), t(3, "c", "trace-c", "baseline")]
    j.update(first, [x.arm or "" for x in first], 0.2)
    # the treatment's conversations only, lowest quality first, each with its trace
    assert [(c, tr) for c, _, tr in j.examples("quality", "all", 5)] == [("a", "trace-a1"), ("b", None)]
    j.update([t(4, "a", "trace-a4")], ["canary"], 0.2)  # a's mean is now 0.25: b first; a's latest trace
    assert [(c, tr) for c, _, tr in j.examples("quality", "all", 5)] == [("b", None), ("a", "trace-a4")]
    restored = Judge.from_state(roundtrip(j.to_state()), POLICY)  # the traces survive a restart
    assert restored.examples("quality", "all", 5) == j.examples("quality", "all", 5)
