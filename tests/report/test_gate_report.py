"""``watcher gate --report``: the gate's HTML page, drawn in a real headless browser."""

from __future__ import annotations

import html
import json
import re
import sys
from pathlib import Path

import pytest

from tests.support.browser import dom
from watcher.cli.main import main
from watcher.sim.scenario import Regression, Scenario
from watcher.sim.simulate import write_jsonl

POLICY = str(Path(__file__).parents[2] / "deploy" / "ci" / "gate-policy.yaml")


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gate-report") / "bad.jsonl"
    sc = Scenario(
        seed=3,
        strategy="shadow",
        environment="staging",
        conversations_per_s=1.0,
        duration_s=600.0,
        regressions=(Regression("quality", -0.15, segment={"intent": "billing"}),),
    )
    write_jsonl(sc, path)
    return path


def test_the_report_plots_every_row_against_its_margins_offline(bad: Path, tmp_path: Path) -> None:
    page, rec = tmp_path / "gate.html", tmp_path / "decision.json"
    argv = ["gate", str(bad), "--policy", POLICY, "--report", str(page), "--decision-out", str(rec)]
    assert main(argv) == 1
    record = json.loads(rec.read_text())
    rows = record["evidence"]
    text = page.read_text()
    assert not re.search(r"<script[^>]+src=", text)  # plotly.js is inside the page
    # every row in the table, coloured by its verdict, with its reason
    assert text.count("<tr style='background:") == len(rows)
    billing = next(m for m in rows if (m["metric"], m["slice"]) == ("quality", "intent=billing"))
    assert billing["verdict"] == "fail" and html.escape(billing["reason"]) in text
    drawn = dom(page, tmp_path)
    metrics = list(dict.fromkeys(m["metric"] for m in rows if m["effect"] is not None))
    for metric in metrics:  # one subplot per metric, its unit in the title
        assert re.search(rf"{metric}( \(critical\))?: candidate (/|−) baseline", drawn), metric
    # one marker per row with an effect on its axis: plotly drew the figure, not just its placeholder;
    # a ratio of zero (no events on the candidate's side) has no place on a log axis: said, not hidden
    on_axis = [
        m for m in rows if m["effect"] is not None and (m["effect_unit"] != "ratio" or m["effect"] > 0)
    ]
    assert drawn.count('class="point"') == len(on_axis)
    assert 0 < len(rows) - len(on_axis) and f"{len(rows) - len(on_axis)} row(s) not drawn" in drawn
    assert html.escape(record["reason"], quote=False) in drawn


def test_without_the_plotting_extra_the_gate_stops_before_reading(
    bad: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "plotly", None)  # an import of plotly now fails
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    page, rec = tmp_path / "gate.html", tmp_path / "decision.json"
    argv = ["gate", str(bad), "--policy", POLICY, "--report", str(page), "--decision-out", str(rec)]
    assert main(argv) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "pip install 'rollout-watcher[report]'" in err[0]
        and err[0].startswith("watcher gate: ")
    )
    assert not page.exists() and not rec.exists()  # nothing read, nothing half-written
