from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.contract.verdicts import (
    Action,
    ArmEstimate,
    Cause,
    MetricEvidence,
    RolloutEvidence,
    RolloutRef,
    SampleRatioEvidence,
    Verdict,
    decision_id,
)
from watcher.errors import ConfigError
from watcher.judges.policy import PolicyState, acknowledge, decide, load_policy, override

POLICY = load_policy(None).default
REF = RolloutRef("bot/prod/v2@100", "bot", "prod", "canary", "v1", "v2", 0.1)


def row(
    metric: str, verdict: Verdict, slice_: str = "all", stat: float = 1.0, critical: bool = False
) -> MetricEvidence:
    return MetricEvidence(
        metric,
        slice_,
        verdict,
        ArmEstimate(100, 0.8),
        ArmEstimate(100, 0.7),
        -0.1,
        "difference",
        -0.15,
        -0.05,
        stat,
        100.0,
        -0.03,
        critical,
        f"{metric} in {slice_} x",
    )


def ev(
    rows: list[MetricEvidence], *, srm: bool = False, elapsed: float = 600.0, n: int = 500, ts: float = 1000.0
) -> RolloutEvidence:
    s = SampleRatioEvidence(
        0.1,
        0.05 if srm else 0.1,
        50,
        950,
        5000.0 if srm else 1.0,
        1000.0,
        srm,
        "sample ratio mismatch: canary share 0.05" if srm else "ok",
    )
    return RolloutEvidence(REF.rollout_id, ts, elapsed, tuple(rows), s, n, n)


ALL_PASS = [row(m.name, Verdict.PASS) for m in POLICY.enabled_metrics()]


def test_bundled_defaults_load_without_a_file() -> None:
    ps = load_policy(None)
    p = ps.for_agent("anything", "prod")
    assert p.alpha == 0.01
    names = [m.name for m in p.metrics]
    assert names == ["quality", "latency", "latency_p95", "escalation", "error", "compliance"]
    assert p.metric("compliance").critical and p.metric("compliance").action is Action.ROLLBACK
    assert p.metric("quality").tolerance == -0.01 and p.metric("latency_p95").quantile == 0.95
    # two margins: act on small regressions, promote on the wider non-inferiority margin
    assert {m.name: (m.tolerance, m.pass_tolerance) for m in p.metrics} == {
        "quality": (-0.01, -0.03),
        "latency": (1.025, 1.10),
        "latency_p95": (1.05, 1.5),
        "escalation": (1.025, 1.25),
        "error": (1.1, 1.5),
        "compliance": (1.1, 1.5),
    }
    assert p.segments.min_conversations == 20
    assert p.promote.min_duration_s == 1800


def test_overrides_apply_per_agent_and_environment(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(
        "agents:\n  support-bot:\n    prod:\n      metrics: {quality: {tolerance: -0.05}}\n"
        "    '*':\n      alpha: 0.001\ndefaults:\n  promote: {min_duration_s: 60}\n"
    )
    ps = load_policy(f)
    assert ps.for_agent("support-bot", "prod").metric("quality").tolerance == -0.05
    assert ps.for_agent("support-bot", "staging").alpha == 0.001
    assert ps.for_agent("other", "prod").metric("quality").tolerance == -0.01
    assert ps.for_agent("other", "prod").promote.min_duration_s == 60  # file defaults on top of bundled
    assert ps.for_agent("support-bot", "prod").promote.min_duration_s == 60


@pytest.mark.parametrize(
    "text,field",
    [
        (
            "agents:\n  support-bot:\n    prod:\n      metrics: {quality: {tolerance: 0.03}}\n",
            "agents.support-bot.prod.metrics.quality.tolerance",
        ),
        ("defaults:\n  alpha: 2\n", "defaults.alpha"),
        (
            "defaults:\n  metrics: {error: {tolerance: 1.5, tolerance_mode: absolute}}\n",
            "defaults.metrics.error.tolerance_mode",
        ),
        ("defaults:\n  metrics: {cost: {tolerance: 1.2}}\n", "defaults.metrics.cost"),
        ("defaults:\n  srm: {alpah: 0.1}\n", "defaults.srm.alpah"),
        (
            "defaults:\n  metrics: {quality: {on_regression: explode}}\n",
            "defaults.metrics.quality.on_regression",
        ),
        ("defaults:\n  segments: {min_conversations: many}\n", "defaults.segments.min_conversations"),
        (
            "defaults:\n  metrics: {quality: {promote_tolerance: 0.01}}\n",
            "defaults.metrics.quality.promote_tolerance",
        ),
        (
            "defaults:\n  metrics: {escalation: {promote_tolerance: 0.9}}\n",
            "defaults.metrics.escalation.promote_tolerance",
        ),
        (
            "defaults:\n  metrics: {error: {promote_tolerance: -1.5}}\n",
            "defaults.metrics.error.promote_tolerance",
        ),
        (
            "defaults:\n  metrics: {latency: {promote_tolerance: fast}}\n",
            "defaults.metrics.latency.promote_tolerance",
        ),
        (
            "agents:\n  b:\n    prod:\n      metrics: {latency: {promote_tolerance: 0.95}}\n",
            "agents.b.prod.metrics.latency.promote_tolerance",
        ),
    ],
)
def test_bad_values_name_the_dotted_field(tmp_path: Path, text: str, field: str) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_policy(f)
    assert e.value.field == field


def test_promote_tolerance_is_separate_and_a_bare_tolerance_sets_both_margins(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(
        "defaults:\n  metrics:\n    escalation: {tolerance: 1.5}\n"
        "    error: {tolerance: 1.1, promote_tolerance: 2.0}\n    latency: {promote_tolerance: null}\n"
        "agents:\n  bot:\n    prod:\n      metrics: "
        "{error: {tolerance: 1.3}, compliance: {promote_tolerance: 1.2}}\n"
    )
    ps = load_policy(f)
    d, bot = ps.default, ps.for_agent("bot", "prod")
    # a file written for one margin keeps its meaning: its tolerance is also the promote margin
    assert (d.metric("escalation").tolerance, d.metric("escalation").pass_tolerance) == (1.5, 1.5)
    assert (d.metric("error").tolerance, d.metric("error").pass_tolerance) == (1.1, 2.0)
    assert d.metric("latency").promote_tolerance is None and d.metric("latency").pass_tolerance == 1.025
    assert d.metric("quality").pass_tolerance == -0.03  # untouched: the bundled pair
    assert (bot.metric("error").tolerance, bot.metric("error").pass_tolerance) == (1.3, 1.3)
    # a promote margin narrower than the tolerance is allowed (promotion more conservative than rollback)
    assert (bot.metric("compliance").tolerance, bot.metric("compliance").pass_tolerance) == (1.1, 1.2)


def test_golden_stream_of_decisions() -> None:
    """A scripted rollout: nodata, a pause, hold, escalation to rollback, then silence."""
    stream = [
        ev([row("quality", Verdict.NODATA)]),
        ev([row("quality", Verdict.INCONCLUSIVE)]),
        ev([row("latency", Verdict.FAIL, stat=300)]),  # latency: on_regression pause
        ev([row("latency", Verdict.FAIL, stat=900)]),  # still paused: nothing new
        ev([row("latency", Verdict.FAIL), row("quality", Verdict.FAIL, "intent=billing", 5e4)]),
        ev([row("quality", Verdict.PASS)]),
        ev(ALL_PASS, elapsed=4000, n=5000),
    ]
    state = PolicyState()
    out = []
    for e in stream:
        d, state = decide(state, e, POLICY, REF)
        out.append(None if d is None else (d.action, d.cause, d.trigger, d.sequence))
    assert out == [
        None,
        None,
        (Action.PAUSE, Cause.REGRESSION, {"metric": "latency", "slice": "all"}, 1),
        None,
        (Action.ROLLBACK, Cause.REGRESSION, {"metric": "quality", "slice": "intent=billing"}, 2),
        None,
        None,
    ]
    assert state.action is Action.ROLLBACK and state.last_decision_id == decision_id(
        REF.rollout_id, 2, Action.ROLLBACK
    )


def test_reason_carries_the_numbers_and_the_rows() -> None:
    d, _ = decide(
        PolicyState(),
        ev([row("error", Verdict.FAIL, stat=500), row("quality", Verdict.FAIL, stat=200)]),
        POLICY,
        REF,
    )
    assert d is not None and d.action is Action.ROLLBACK
    assert d.reason == "rollback: error in all x; 1 more failing"
    assert [m.metric for m in d.evidence] == ["error", "quality"]
    assert json.dumps(d.to_dict())


def test_srm_pauses_and_acknowledge_resumes_without_repausing() -> None:
    d, s = decide(PolicyState(), ev([], srm=True), POLICY, REF)
    assert d is not None and (d.action, d.cause) == (Action.PAUSE, Cause.SAMPLE_RATIO_MISMATCH)
    a, s = acknowledge(s, "alice", "known routing change", 1001.0, REF)
    assert a is not None and (a.action, a.cause, a.actor) == (Action.RESUME, Cause.ACKNOWLEDGED, "alice")
    d2, s = decide(s, ev([], srm=True), POLICY, REF)
    assert d2 is None
    d3, s = decide(s, ev([row("latency", Verdict.FAIL)]), POLICY, REF)  # a new cause pauses again
    assert d3 is not None and d3.action is Action.PAUSE and d3.sequence == 3
    assert acknowledge(PolicyState(), "bob", "", 1.0, REF)[0] is None  # nothing to acknowledge


def test_promote_needs_duration_sample_and_every_guardrail() -> None:
    assert decide(PolicyState(), ev(ALL_PASS, elapsed=100, n=5000), POLICY, REF)[0] is None
    assert decide(PolicyState(), ev(ALL_PASS, elapsed=4000, n=50), POLICY, REF)[0] is None
    some = ALL_PASS[:-1] + [row("compliance", Verdict.INCONCLUSIVE)]
    assert decide(PolicyState(), ev(some, elapsed=4000, n=5000), POLICY, REF)[0] is None
    assert (
        decide(PolicyState(), ev(ALL_PASS, elapsed=4000, n=5000, srm=True), POLICY, REF)[0].action
        is Action.PAUSE
    )
    d, s = decide(PolicyState(), ev(ALL_PASS, elapsed=4000, n=5000), POLICY, REF)
    assert d is not None and d.action is Action.PROMOTE and d.cause is Cause.NON_INFERIOR
    assert decide(s, ev([row("compliance", Verdict.FAIL)]), POLICY, REF)[0] is None  # terminal


def test_override_works_in_any_state_and_state_round_trips() -> None:
    _, s = decide(PolicyState(), ev([row("error", Verdict.FAIL)]), POLICY, REF)
    d, s2 = override(s, Action.RESUME, "carol", "false alarm", 5.0, REF)
    assert (d.action, d.cause, d.sequence, s2.action) == (Action.RESUME, Cause.OVERRIDE, 2, Action.CONTINUE)
    assert decide(s2, ev([row("error", Verdict.FAIL)]), POLICY, REF)[0] is None  # the override let it go
    assert PolicyState.from_state(json.loads(json.dumps(s2.to_state()))) == s2


verdicts = st.sampled_from(list(Verdict))
metric_names = st.sampled_from([m.name for m in POLICY.metrics])
rows_st = st.lists(
    st.builds(row, metric_names, verdicts, st.sampled_from(["all", "intent=a"]), st.floats(0.01, 1e6)),
    max_size=5,
)
evidence_st = st.builds(
    lambda rows, srm, el, n: ev(rows, srm=srm, elapsed=el, n=n),
    rows_st,
    st.booleans(),
    st.sampled_from([10.0, 4000.0]),
    st.sampled_from([10, 5000]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(evidence_st, max_size=12))
def test_properties_determinism_latching_and_terminal_rollback(stream: list[RolloutEvidence]) -> None:
    def run() -> list:
        s, out = PolicyState(), []
        for e in stream:
            d, s = decide(s, e, POLICY, REF)
            out.append(d)
        return out

    first, second = run(), run()
    assert [d and d.decision_id for d in first] == [d and d.decision_id for d in second]
    emitted = [d for d in first if d is not None]
    assert [d.sequence for d in emitted] == list(range(1, len(emitted) + 1))
    actions = [d.action for d in emitted]
    for a, b in zip(actions, actions[1:]):
        assert a is not b  # a decision only when the action changes: no flapping
        assert a not in (Action.ROLLBACK, Action.PROMOTE)  # terminal: nothing follows
        assert not (a is Action.PAUSE and b is not Action.ROLLBACK)  # a pause only escalates
    assert all(d.action is not Action.CONTINUE for d in emitted)


def test_a_mistake_in_a_policy_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\ndefaults:\n  alpha: 7\n")
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert info.value.field == "defaults.alpha" and str(info.value).endswith(f"(policy file {path})")
    path.write_text("defaults: {alpha: 0.01\n")  # broken YAML: the file is named once
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert str(info.value).count(str(path)) == 1 and "at line 2, column 1" in str(info.value)
