"""Replay of simulated shadow, blue-green and flag rollouts gives the expected decisions (issue #7)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from watcher.config import load_settings
from watcher.engine import Engine
from watcher.service.replay import replay
from watcher.sim import simulate as sim

STOP = {"pause", "rollback"}


def _replay(name: str, tmp_path: Path, seed: int = 1, **kw: Any) -> tuple[list[dict[str, Any]], Any]:
    s = replace(sim.STRATEGY_PRESETS[name], seed=seed, **kw)
    path = tmp_path / f"{name}.jsonl"
    sim.write_jsonl(s, path)
    report, engine = replay(path, engine=Engine(load_settings(environ={})))
    return report.decisions, engine


@pytest.mark.parametrize(
    "name", ["shadow_healthy", "blue_green_healthy", "blue_green_healthy_daily", "flag_healthy"]
)
def test_null_scenarios_give_no_stop(name: str, tmp_path: Path) -> None:
    decisions, engine = _replay(name, tmp_path)
    assert not [d for d in decisions if d["action"] in STOP], [d["reason"] for d in decisions]
    (evidence,) = engine.evidence.values()  # the rollout was judged
    assert any(m.verdict.value in ("pass", "inconclusive") for m in evidence.metrics)


@pytest.mark.parametrize(
    ("name", "metric"),
    [
        ("shadow_quality_down", "quality"),
        ("shadow_errors_x4", "error"),
        ("blue_green_regression", "quality"),
        ("blue_green_errors_x4", "error"),
        ("flag_errors_x4", "error"),
    ],
)
def test_regressions_are_rolled_back_with_the_strategy_in_the_record(
    name: str, metric: str, tmp_path: Path
) -> None:
    decisions, _ = _replay(name, tmp_path)
    stops = [d for d in decisions if d["action"] in STOP]
    assert stops and stops[0]["action"] == "rollback", [d["reason"] for d in decisions]
    d = stops[0]
    assert d["trigger"]["metric"] == metric
    strategy = sim.STRATEGY_PRESETS[name].strategy
    assert d["rollout"]["strategy"] == strategy and f"[{strategy}:" in d["reason"]
    if strategy == "flag":
        assert d["rollout"]["flag"] == {"name": "new_prompt", "control": "control", "treatment": "treatment"}
        assert "turn flag new_prompt off" in d["reason"]
    if strategy == "blue_green":
        assert "switch traffic back to blue v41" in d["reason"] and "before the switch" in d["reason"]
        assert d["ts_unix"] - sim.STRATEGY_PRESETS[name].start_ts - 1800 < 600  # within minutes of the switch
    if strategy == "shadow":
        assert "paired" in d["reason"]


def test_blue_green_slow_tail_pauses_on_the_tail_row(tmp_path: Path) -> None:
    """The simulator's latency_tail (5 % of green's turns 4x slower from the switch): blue-green's tail
    row, against blue's slowest-turn p95 before the switch, pauses within minutes."""
    slow = sim.Regression("latency_tail", 0.05, start_s=1800.0, slow_factor=4.0)
    decisions, engine = _replay("blue_green_healthy", tmp_path, regressions=(slow,))
    stops = [d for d in decisions if d["action"] in STOP]
    assert stops and stops[0]["action"] == "pause", [d["reason"] for d in decisions]
    assert stops[0]["trigger"]["metric"] == "latency_p95" and "ms) in all rose" in stops[0]["reason"]
    assert "keep blue v41 ready" in stops[0]["reason"]
    assert stops[0]["ts_unix"] - sim.STRATEGY_PRESETS["blue_green_healthy"].start_ts - 1800 < 600


def test_shadow_pairing_counts_unpaired_turns(tmp_path: Path) -> None:
    decisions, engine = _replay("shadow_healthy", tmp_path, shadow_drop=0.2, duration_s=600.0)
    (judge,) = engine.judges.values()
    p = judge.pairing()
    assert p["paired"] > 5000 and p["duplicates"] == 0
    # the dropped shadow turns leave their live turns unpaired (expired, or still waiting at the end)
    lost = (p["unpaired_live"] + p["pending"]) / (p["paired"] + p["unpaired_live"] + p["pending"])
    assert 0.17 < lost < 0.23 and p["unpaired_live"] > 0
    assert not [d for d in decisions if d["action"] in STOP]
