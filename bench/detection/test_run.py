"""The detection benchmark's command line: a smoke run never replaces the committed results."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.detection import everyday
from bench.detection.run import RESULTS, RESULTS_EVERYDAY, results_path, run_all, yardstick_judge


def _args(**kw: object) -> argparse.Namespace:
    base = {
        "quick": False,
        "judges": None,
        "scenarios": None,
        "strategies": None,
        "regime": "fast",
        "kind": "all",
        "onset_delay": 0.0,
    }
    return argparse.Namespace(**{**base, **kw})


def test_only_a_full_run_writes_the_committed_results() -> None:
    assert results_path(_args()) == RESULTS
    assert results_path(_args(regime="everyday")) == RESULTS_EVERYDAY  # each regime its own file
    for partial in (
        {"quick": True},
        {"judges": "watcher"},
        {"scenarios": "a_a"},
        {"strategies": "flag"},
        {"kind": "null"},
        {"onset_delay": 600.0},
    ):
        for regime in ("fast", "everyday"):
            assert results_path(_args(regime=regime, **partial)) not in (RESULTS, RESULTS_EVERYDAY), partial


def test_parallel_runs_give_the_rows_of_a_serial_run(tmp_path: Path) -> None:
    """--jobs changes the wall time, never the results: the same rows in the same order."""
    short = [
        replace(c, scenario=replace(c.scenario, duration_s=420.0))
        for c in everyday.regression_cases(("canary",))[:2]
    ]
    runs = [(case, seed) for case in short for seed in (1, 2)]
    judges = {"yardstick": yardstick_judge}

    def stable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]

    serial = run_all(runs, judges, tmp_path, jobs=1)
    assert len(serial) == len(runs) and {r["outcome"] for r in serial} <= {"detected", "missed"}
    assert stable(run_all(runs, judges, tmp_path, jobs=2)) == stable(serial)


def test_the_zero_tolerance_policy_asks_the_yardsticks_question_and_keeps_promotion() -> None:
    # docs/detection.md "The same question": every FAIL tolerance at the neutral value (quality 0,
    # ratios 1), every other setting the bundled policy's, so only the question differs
    from watcher.judges import load_policy

    bundled = load_policy().default
    zero = load_policy(Path(__file__).with_name("zero_tolerance.yaml")).default
    assert [m.name for m in zero.metrics] == [m.name for m in bundled.metrics]
    for z, b in zip(zero.metrics, bundled.metrics, strict=True):
        assert z.tolerance == (0.0 if z.tolerance_mode.value == "absolute" else 1.0), z.name
        assert b.tolerance != z.tolerance
        assert z.pass_tolerance == b.pass_tolerance, z.name
        assert replace(z, tolerance=b.tolerance) == b, z.name
    assert replace(zero, metrics=bundled.metrics) == bundled


def test_an_onset_delay_moves_every_regression_and_its_onset() -> None:
    from bench.detection import everyday

    plain = {c.name: c for c in everyday.regression_cases(("canary", "blue_green"))}
    later = {c.name: c for c in everyday.regression_cases(("canary", "blue_green"), delay_s=600.0)}
    assert plain.keys() == later.keys()
    for name, case in later.items():
        assert case.onset_s == plain[name].onset_s + 600.0
        starts = [r.start_s for r in case.scenario.regressions]
        assert starts == [r.start_s + 600.0 for r in plain[name].scenario.regressions]
    # blue-green's regressions start after the switch, then later still
    assert later["blue_green:latency_+25%"].onset_s == 3600.0 + 1200.0 + 600.0


def test_the_twenty_minute_policy_differs_from_the_bundled_one_only_in_its_restart_grid() -> None:
    # docs/detection.md "Where the onset falls between two restarts": the former grid, as a what-if
    from watcher.judges import load_policy

    bundled = load_policy().default
    twenty = load_policy(Path(__file__).with_name("twenty_minutes.yaml")).default
    assert (bundled.changepoint.epoch_s, bundled.changepoint.span_epochs) == (600.0, 12)
    assert (twenty.changepoint.epoch_s, twenty.changepoint.span_epochs) == (1200.0, 6)
    assert twenty.changepoint.epoch_s * twenty.changepoint.span_epochs == 7200.0  # both see 2 h
    assert replace(twenty, changepoint=bundled.changepoint) == bundled
