"""The gate on simulated staging traffic: verdicts, designs, records and the errors a person can make."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from watcher.contract import Action, Cause, Verdict
from watcher.errors import ConfigError
from watcher.judges import load_policy
from watcher.service import GateRequest, load_gate_input, run_gate
from watcher.sim.scenario import Regression, Scenario
from watcher.sim.traffic import generate

EXAMPLE_POLICY = Path(__file__).parents[2] / "deploy" / "ci" / "gate-policy.yaml"
NO_FAIL = GateRequest(segments_must_pass=False)


def _data(sc: Scenario, extra: list[bytes] | None = None):
    raws = list(generate(sc)) + (extra or [])
    return load_gate_input([(raws, [f"sim:{i}" for i in range(len(raws))])])


def _paired(seed: int = 1, cps: float = 1.0, duration: float = 1800.0, **kw) -> Scenario:
    return Scenario(
        seed=seed,
        strategy="shadow",
        conversations_per_s=cps,
        duration_s=duration,
        environment="staging",
        **kw,
    )


@pytest.fixture(scope="module")
def example_policy():
    return load_policy(EXAMPLE_POLICY)


def test_a_healthy_candidate_passes_with_a_promote_record(example_policy) -> None:
    run = run_gate(_data(_paired(cps=4.0)), NO_FAIL, example_policy)
    assert run.result.verdict is Verdict.PASS, run.result.decision.reason
    assert run.exit_code == 0
    assert run.paired  # the shadow marker and the shared conversation ids say so
    d = run.result.decision
    assert (d.action, d.cause, d.rollout.strategy) == (Action.PROMOTE, Cause.NON_INFERIOR, "gate")
    assert (d.rollout.baseline_version, d.rollout.canary_version, d.rollout.environment) == (
        "v41",
        "v42",
        "staging",
    )
    record = d.to_dict()
    assert record["schema"] == "watcher.decision/v1" and record["action"] == "promote"
    overall = {m["metric"]: m for m in record["evidence"] if m["slice"] == "all"}
    assert all(overall[name]["verdict"] == "pass" for name in ("quality", "latency", "escalation", "error"))
    # compliance is critical: its pass margin is the tolerance itself, not the wider promote margin
    tolerance = example_policy.default.metric("compliance").tolerance
    assert overall["compliance"]["promote_tolerance"] == overall["compliance"]["tolerance"] == tolerance
    assert tolerance != example_policy.default.metric("compliance").pass_tolerance


REGRESSIONS = {
    "quality": Regression("quality", -0.05),
    "latency": Regression("latency", 0.25),
    "latency_p95": Regression("latency_tail", 0.05, slow_factor=4.0),
    "escalation": Regression("escalation", 3.0, mode="multiply"),
    "error": Regression("error", 4.0, mode="multiply"),
    "compliance": Regression("compliance", 5.0, mode="multiply"),
}


@pytest.mark.parametrize("metric", sorted(REGRESSIONS))
def test_each_regression_type_fails_the_gate(metric: str, example_policy) -> None:
    sc = _paired(seed=2, regressions=(REGRESSIONS[metric],))
    run = run_gate(_data(sc), NO_FAIL, example_policy)
    assert run.result.verdict is Verdict.FAIL
    assert run.exit_code == 1
    d = run.result.decision
    assert (d.action, d.cause) == (Action.ROLLBACK, Cause.REGRESSION)
    failing = {m.metric for m in run.result.rows if m.verdict is Verdict.FAIL}
    assert metric in failing, d.reason
    assert d.reason.startswith("rollback: ")


def test_a_regression_in_one_segment_fails_on_that_segment(example_policy) -> None:
    sc = _paired(seed=3, regressions=(Regression("quality", -0.1, segment={"intent": "cancellation"}),))
    run = run_gate(_data(sc), NO_FAIL, example_policy)
    assert run.result.verdict is Verdict.FAIL
    assert run.result.decision.trigger == {"metric": "quality", "slice": "intent=cancellation"}
    overall = next(m for m in run.result.rows if m.metric == "quality" and m.slice == "all")
    assert overall.verdict is not Verdict.FAIL  # the average hides it


def test_too_little_data_is_inconclusive_never_a_failure(example_policy) -> None:
    run = run_gate(_data(_paired(duration=5.0)), NO_FAIL, example_policy)
    assert run.result.verdict is Verdict.INCONCLUSIVE
    assert run.exit_code == 2
    d = run.result.decision
    assert (d.action, d.cause) == (Action.INCONCLUSIVE, Cause.INSUFFICIENT_EVIDENCE)
    assert any(m.verdict is Verdict.NODATA for m in run.result.rows)
    assert "inconclusive: no regression shown" in d.reason


def test_every_segment_must_pass_by_default(example_policy) -> None:
    """With the issue's rule (the default) the same healthy data that passes overall is inconclusive
    when a judged segment cannot be shown non-inferior."""
    data = _data(_paired(cps=4.0))
    strict = run_gate(data, GateRequest(), example_policy)
    assert strict.result.verdict is Verdict.INCONCLUSIVE
    assert any(m.slice != "all" and m.verdict is Verdict.INCONCLUSIVE for m in strict.result.rows)
    assert run_gate(data, NO_FAIL, example_policy).result.verdict is Verdict.PASS


def test_unpaired_production_baseline(example_policy) -> None:
    """Candidate from staging, baseline from production telemetry: an unpaired comparison."""
    staging = Scenario(
        seed=4,
        environment="staging",
        canary_weight=1.0,
        conversations_per_s=2.0,
        emit_markers=False,
        regressions=(Regression("quality", -0.06),),
    )
    prod = Scenario(
        seed=5, environment="prod", canary_weight=0.0, conversations_per_s=2.0, emit_markers=False
    )
    raws = list(generate(staging)) + list(generate(prod))
    data = load_gate_input([(raws, [str(i) for i in range(len(raws))])])
    request = GateRequest(baseline="v41", candidate="v42", environment="staging", baseline_environment="prod")
    run = run_gate(data, request, example_policy)
    assert not run.paired
    assert (run.environment, run.baseline_environment) == ("staging", "prod")
    assert run.result.verdict is Verdict.FAIL
    assert run.result.decision.trigger == {"metric": "quality", "slice": "all"}


def test_same_input_same_decision_id_and_other_input_another(example_policy) -> None:
    sc = _paired(duration=600.0)
    a = run_gate(_data(sc), NO_FAIL, example_policy).result.decision
    b = run_gate(_data(sc), NO_FAIL, example_policy).result.decision
    c = run_gate(_data(replace(sc, seed=9)), NO_FAIL, example_policy).result.decision
    assert a.decision_id == b.decision_id and a.rollout.rollout_id == b.rollout.rollout_id
    assert c.rollout.rollout_id != a.rollout.rollout_id


def test_bad_lines_are_counted_not_dropped(example_policy) -> None:
    data = _data(_paired(duration=300.0), extra=[b"{not json", b'{"event_id":"x"}'])
    assert dict(data.rejected) == {"not_json": 1, "missing_field": 1}
    assert len(data.rejections) == 2


@pytest.mark.parametrize(
    ("request_", "field", "text"),
    [
        (GateRequest(candidate="v24"), "--candidate", "no turns of version 'v24'"),
        (GateRequest(agent="other-bot"), "--agent", "no turns of agent 'other-bot'"),
        (GateRequest(environment="prod"), "--environment", "no turns of v42 in environment 'prod'"),
        (GateRequest(baseline="v42", candidate="v42"), "--candidate", "the candidate is the baseline"),
    ],
)
def test_requests_the_data_cannot_answer_name_the_option(request_, field, text, example_policy) -> None:
    data = _data(_paired(duration=120.0))
    with pytest.raises(ConfigError) as err:
        run_gate(data, request_, example_policy)
    assert err.value.field == field and text in str(err.value)


def test_without_marker_or_flags_the_versions_come_from_the_arms(example_policy) -> None:
    data = _data(_paired(duration=300.0, emit_markers=False))
    run = run_gate(data, NO_FAIL, example_policy)
    assert (run.baseline, run.candidate) == ("v41", "v42")
    assert run.paired  # no shadow marker: the shared conversation ids made it paired


def test_otlp_traces_and_json_turns_of_the_same_traffic_give_the_same_rows(tmp_path, example_policy) -> None:
    """A replay exported as OpenTelemetry GenAI spans (OTLP/JSON lines, the Collector's file exporter)
    is judged as the same turns sent as watcher.turn/v1 JSON."""
    from watcher.service import gate_files
    from watcher.sim.output import write_jsonl

    sc = _paired(duration=900.0, regressions=(Regression("error", 4.0, mode="multiply"),))
    runs = []
    for fmt in ("json", "otlp"):
        path = tmp_path / f"{fmt}.jsonl"
        write_jsonl(sc, path, fmt)
        runs.append(run_gate(load_gate_input(gate_files([path])), NO_FAIL, example_policy))
    json_run, otlp_run = runs
    assert otlp_run.input.rejected == {} and len(otlp_run.input.turns) == len(json_run.input.turns)
    assert otlp_run.input.lines < json_run.input.lines  # one trace request holds many turns
    # the same rows, to the last digits a different order of summation leaves
    assert [_rounded(m.to_dict()) for m in otlp_run.result.rows] == [
        _rounded(m.to_dict()) for m in json_run.result.rows
    ]
    assert otlp_run.result.verdict is Verdict.FAIL


def _rounded(x: object) -> object:
    if isinstance(x, float):
        return float(f"{x:.12g}")
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items() if k != "reason"}
    return x
