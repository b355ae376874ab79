"""``watcher gate`` as a pipeline runs it: exit codes, the summary, JUnit XML and the decision record."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from watcher.cli.main import main
from watcher.sim.scenario import Regression, Scenario
from watcher.sim.simulate import write_jsonl

POLICY = str(Path(__file__).parents[2] / "deploy" / "ci" / "gate-policy.yaml")


def _file(tmp_path: Path, name: str, **kw) -> str:
    sc = Scenario(seed=kw.pop("seed", 1), strategy="shadow", environment="staging", **kw)
    path = tmp_path / name
    write_jsonl(sc, path)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("gate")
    return {
        "healthy": _file(d, "healthy.jsonl", conversations_per_s=4.0, duration_s=1800.0),
        "bad": _file(
            d,
            "bad.jsonl",
            conversations_per_s=1.0,
            duration_s=1200.0,
            regressions=(Regression("quality", -0.12, segment={"intent": "billing"}),),
        ),
        "small": _file(d, "small.jsonl", conversations_per_s=1.0, duration_s=120.0),
    }


def test_exit_codes(files, capsys) -> None:
    assert main(["gate", files["healthy"], "--policy", POLICY, "--segments", "no-fail"]) == 0
    assert capsys.readouterr().out.startswith("PASS: promote: all 5 overall rows")
    assert main(["gate", files["bad"], "--policy", POLICY, "--segments", "no-fail"]) == 1
    assert capsys.readouterr().out.startswith("FAIL: rollback: quality in intent=billing fell")
    assert main(["gate", files["small"], "--policy", POLICY]) == 2
    assert capsys.readouterr().out.startswith("INCONCLUSIVE: inconclusive: no regression shown")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["gate", "missing.jsonl"], "watcher gate: cannot read missing.jsonl"),
        (["gate"], "watcher gate: FILE: give at least one input file"),
        (["gate", "{small}", "--candidate", "v9"], "watcher gate: --candidate: no turns of version 'v9'"),
        (["gate", "{small}", "--policy", "nope.yaml"], "watcher gate: policy: cannot read nope.yaml"),
        (["gate", "{small}", "--pairing", "sometimes"], "argument --pairing: invalid choice"),
    ],
)
def test_errors_are_one_line_and_exit_3(files, capsys, argv, message) -> None:
    argv = [a.format(**files) for a in argv]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert message in err


def test_usage_errors_exit_3_not_2(files) -> None:
    """2 means inconclusive: argparse's usage error must not look like it."""
    assert main(["gate", files["small"], "--segments", "some"]) == 3
    # an unknown option is the gate's usage error too (left to the top parser it exited 2)
    assert main(["gate", files["small"], "--junit-out", "x.xml"]) == 3


def test_junit_one_case_per_row_failures_and_skips(files, tmp_path) -> None:
    out = tmp_path / "gate.xml"
    rec = tmp_path / "decision.json"
    code = main(["gate", files["bad"], "--policy", POLICY, "--junit", str(out), "--decision-out", str(rec)])
    assert code == 1
    record = json.loads(rec.read_text())
    root = ET.parse(out).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(record["evidence"]) == int(suite.get("tests")) == int(root.get("tests"))
    by_name = {c.get("name"): c for c in cases}
    failed = [c for c in cases if c.find("failure") is not None]
    skipped = [c for c in cases if c.find("skipped") is not None]
    assert int(suite.get("failures")) == len(failed) and int(suite.get("skipped")) == len(skipped)
    assert suite.get("errors") == "0"
    billing = by_name["quality [intent=billing]"]
    assert billing.get("classname") == "watcher.gate.quality"
    failure = billing.find("failure")
    assert failure.get("type") == "regression" and "fell" in failure.get("message")
    rows = {(m["metric"], m["slice"]): m["verdict"] for m in record["evidence"]}
    for c in cases:
        metric, slice_ = c.get("name")[:-1].split(" [")
        verdict = rows[(metric, slice_)]
        assert (c.find("failure") is not None) == (verdict == "fail")
        assert (c.find("skipped") is not None) == (verdict in ("inconclusive", "nodata"))
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["verdict"] == "fail" and props["decision_id"] == record["decision_id"]
    assert record["action"] == "rollback" and record["rollout"]["strategy"] == "gate"


def test_junit_as_a_github_reporter_reads_it(files, tmp_path) -> None:
    """EnricoMi/publish-unit-test-result-action reads JUnit with junitparser: the same counts, a
    failure per failing row, a skip per inconclusive one, the verdict as a property."""
    from junitparser import Failure, JUnitXml, Skipped

    out, rec = tmp_path / "gate.xml", tmp_path / "d.json"
    main(["gate", files["bad"], "--policy", POLICY, "--junit", str(out), "--decision-out", str(rec)])
    evidence = json.loads(rec.read_text())["evidence"]
    verdicts = {f"{m['metric']} [{m['slice']}]": m["verdict"] for m in evidence}
    (suite,) = list(JUnitXml.fromfile(str(out)))
    cases = list(suite)
    assert suite.tests == len(cases) == len(verdicts)
    assert suite.failures == sum(v == "fail" for v in verdicts.values())
    assert suite.skipped == sum(v in ("inconclusive", "nodata") for v in verdicts.values())
    for case in cases:
        kinds = {type(r) for r in case.result}
        expected = {"fail": {Failure}, "inconclusive": {Skipped}, "nodata": {Skipped}, "pass": set()}
        assert kinds == expected[verdicts[case.name]], case.name
        assert case.is_passed == (verdicts[case.name] == "pass")
    assert {p.name: p.value for p in suite.properties()}["verdict"] == "fail"


def test_summary_is_markdown_and_appends_to_the_step_summary(files, tmp_path, monkeypatch) -> None:
    step = tmp_path / "step_summary.md"
    step.write_text("# build\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    assert main(["gate", files["bad"], "--policy", POLICY, "--summary", str(step), "--quiet"]) == 1
    text = step.read_text()
    assert text.startswith("# build\n## ❌ watcher gate: FAIL (rollback) — support-bot v42 vs v41 in staging")
    assert "### Failing segments" in text and "| ❌ | quality | intent=billing |" in text
    other = tmp_path / "summary.md"
    other.write_text("old")
    main(["gate", files["bad"], "--policy", POLICY, "--summary", str(other), "--quiet"])
    assert other.read_text().startswith("## ❌")  # any other file is written afresh


def test_decision_to_stdout_keeps_stdout_json(files, capsys) -> None:
    assert main(["gate", files["small"], "--decision-out", "-"]) == 2
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert record["action"] == "inconclusive" and record["cause"] == "insufficient_evidence"
    assert captured.err.startswith("INCONCLUSIVE:")
