"""The detection benchmark's command line: a smoke run never replaces the committed results."""

from __future__ import annotations

import argparse

from bench.detection.run import RESULTS, results_path


def _args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(**{"quick": False, "judges": None, "scenarios": None, **kw})


def test_only_a_full_run_writes_the_committed_results() -> None:
    assert results_path(_args()) == RESULTS
    for partial in ({"quick": True}, {"judges": "watcher"}, {"scenarios": "a_a"}):
        assert results_path(_args(**partial)) != RESULTS, partial
