"""What a gate run shows a pipeline: a Markdown summary and JUnit XML.

* ``gate_markdown``: for the job page (GitHub Actions' ``$GITHUB_STEP_SUMMARY``, a GitLab artifact or MR
  note): the verdict and its reason first, the overall rows as a table, the segment rows folded.
* ``gate_html``: the HTML report (``watcher.report``; needs the extra ``watcher[report]``): a forest plot
  of every row's effect and bounds against its margins, and every row with its reason.
* ``gate_junit``: one ``testcase`` per metric x slice, so CI systems list failures natively. The layout is
  the common denominator of what GitLab's and the popular GitHub reporters read: ``testsuites`` >
  ``testsuite`` (counts in attributes) > ``testcase`` (``classname``, ``name``, ``time``), a failing row
  a ``failure`` element (``message``: the row's reason; text: its numbers), a row that is
  inconclusive or without data a ``skipped`` element with the reason; the verdict and the decision id
  travel as ``properties``. A gate that fails only on a segment shows as that one failed test case.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from watcher.contract import MetricEvidence, Verdict, rfc3339
from watcher.report import render_gate

if TYPE_CHECKING:
    from watcher.service.gate import GateRun

__all__ = ["gate_html", "gate_junit", "gate_markdown", "title"]

_ICON = {Verdict.PASS: "✅", Verdict.FAIL: "❌", Verdict.INCONCLUSIVE: "⚠️", Verdict.NODATA: "➖"}


def title(run: GateRun) -> str:
    v = run.result.verdict
    return (
        f"watcher gate: {v.value.upper()} ({run.result.decision.action.value}) — {run.agent} "
        f"{run.candidate} vs {run.baseline} in {run.environment}"
    )


def _num(x: float | None, relative: bool) -> str:
    if x is None:
        return "?"
    if relative:
        return f"×{x:.3g}"
    return f"{x:+.3g}"


def _est(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.3g}" if abs(x) >= 0.01 or x == 0 else f"{x:.2e}"


def _table(rows: list[MetricEvidence]) -> list[str]:
    out = [
        "| | metric | slice | candidate | baseline | effect | bounds | margin (fail / pass) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in rows:
        rel = m.effect_unit == "ratio"
        margin = f"{_num(m.tolerance, rel)} / {_num(m.promote_tolerance, rel)}"
        bounds = (
            "–" if m.lower is None and m.upper is None else f"{_num(m.lower, rel)} … {_num(m.upper, rel)}"
        )
        cand = f"{_est(m.treatment.estimate)} (n={m.treatment.n})"
        base = f"{_est(m.control.estimate)} (n={m.control.n})"
        effect = _num(m.effect, rel) if m.effect is not None else "–"
        critical = " (critical)" if m.critical else ""
        out.append(
            f"| {_ICON[m.verdict]} | {m.metric}{critical} | {m.slice} | {cand} | {base} | {effect} | "
            f"{bounds} | {margin} |"
        )
    return out


def gate_markdown(run: GateRun) -> str:
    """The summary for the pipeline's job page (GitHub-flavoured Markdown)."""
    d = run.result.decision
    rows = list(run.result.rows)
    overall = [m for m in rows if m.slice == "all"]
    segments = [m for m in rows if m.slice != "all"]
    counts = {v: sum(m.verdict is v for m in rows) for v in Verdict}
    lines = [
        f"## {_ICON[run.result.verdict]} {title(run)}",
        "",
        f"**{d.reason}**",
        "",
        f"{len(rows)} rows: {counts[Verdict.FAIL]} failed, {counts[Verdict.PASS]} non-inferior, "
        f"{counts[Verdict.INCONCLUSIVE]} inconclusive, {counts[Verdict.NODATA]} without enough data. "
        "Bounds: the harm side at the row's share of the fail test's alpha, the other side at the "
        "promotion alpha; a row fails when its harm-side bound is beyond the fail margin and passes when "
        "the other bound is within the pass margin.",
        "",
        "### Overall",
        "",
        *_table(overall),
    ]
    if segments:
        failing = [m for m in segments if m.verdict is Verdict.FAIL]
        if failing:
            lines += ["", "### Failing segments", "", *_table(failing)]
        lines += [
            "",
            f"<details><summary>All {len(segments)} segment rows</summary>",
            "",
            *_table(segments),
            "",
            "</details>",
        ]
    design = "paired by conversation" if run.paired else "unpaired"
    lines += [
        "",
        f"Input: {_input_line(run)}; baseline from "
        f"{run.baseline_environment}, candidate from {run.environment}; {design}. "
        f"Decision `{d.decision_id}` at {rfc3339(d.ts)} (`watcher.decision/v1`).",
        "",
    ]
    return "\n".join(lines)


def _input_line(run: GateRun) -> str:
    data = run.input
    rejected = sum(data.rejected.values())
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(data.rejected.items()))
    return (
        f"{data.lines} lines, {len(data.turns)} turns, {data.duplicates} duplicates, "
        f"{rejected} rejected{f' ({reasons})' if rejected else ''}, {data.outside} outside the time "
        f"range, {data.other} of other versions"
    )


def gate_html(run: GateRun) -> str:
    """The HTML report of the run (raises ``ReportUnavailable`` without the plotting extra)."""
    d = run.result.decision
    rows = run.result.rows
    counts = {v: sum(m.verdict is v for m in rows) for v in Verdict}
    facts = [
        ("agent", run.agent),
        ("candidate", f"{run.candidate} (turns from {run.environment})"),
        ("baseline", f"{run.baseline} (turns from {run.baseline_environment})"),
        ("design", "paired by conversation" if run.paired else "unpaired"),
        (
            "rows",
            f"{len(rows)}: {counts[Verdict.FAIL]} failed, {counts[Verdict.PASS]} non-inferior, "
            f"{counts[Verdict.INCONCLUSIVE]} inconclusive, {counts[Verdict.NODATA]} without enough data",
        ),
        ("input", _input_line(run)),
        ("decided at", rfc3339(d.ts)),
    ]
    return render_gate(d, rows, facts, title=title(run))


def gate_junit(run: GateRun) -> bytes:
    """JUnit XML: one test case per metric x slice."""
    rows = run.result.rows
    fails = sum(m.verdict is Verdict.FAIL for m in rows)
    skipped = sum(m.verdict in (Verdict.INCONCLUSIVE, Verdict.NODATA) for m in rows)
    stamp = rfc3339(run.result.decision.ts)
    name = f"watcher gate {run.agent} {run.candidate} vs {run.baseline} ({run.environment})"
    counts = {"tests": str(len(rows)), "failures": str(fails), "errors": "0", "skipped": str(skipped)}
    root = ET.Element("testsuites", {"name": "watcher gate", **counts, "time": "0"})
    suite = ET.SubElement(root, "testsuite", {"name": name, **counts, "time": "0", "timestamp": stamp[:19]})
    props = ET.SubElement(suite, "properties")
    d = run.result.decision
    for key, value in (
        ("verdict", run.result.verdict.value),
        ("action", d.action.value),
        ("decision_id", d.decision_id),
        ("reason", d.reason),
        ("agent", run.agent),
        ("environment", run.environment),
        ("baseline", run.baseline),
        ("candidate", run.candidate),
        ("design", "paired" if run.paired else "unpaired"),
    ):
        ET.SubElement(props, "property", {"name": key, "value": value})
    for m in rows:
        case = ET.SubElement(
            suite,
            "testcase",
            {"classname": f"watcher.gate.{m.metric}", "name": f"{m.metric} [{m.slice}]", "time": "0"},
        )
        if m.verdict is Verdict.FAIL:
            failure = ET.SubElement(case, "failure", {"message": m.reason, "type": "regression"})
            failure.text = _details(m)
        elif m.verdict in (Verdict.INCONCLUSIVE, Verdict.NODATA):
            ET.SubElement(case, "skipped", {"message": f"{m.verdict.value}: {m.reason}"})
        else:
            ET.SubElement(case, "system-out").text = m.reason
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _details(m: MetricEvidence) -> str:
    return (
        f"{m.reason}\n"
        f"effect={m.effect} ({m.effect_unit}) bounds=[{m.lower}, {m.upper}] tolerance={m.tolerance} "
        f"pass margin={m.promote_tolerance} critical={m.critical}\n"
        f"candidate n={m.treatment.n} estimate={m.treatment.estimate}; "
        f"baseline n={m.control.n} estimate={m.control.estimate}"
    )
