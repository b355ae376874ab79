"""Retired and idle versions leave the state, /metrics and the drift detectors (issue #13): a simulated
week of deployment churn (a new version per agent every hour or so) keeps the state at its level."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry

from tests.support.platform import platform_batches
from tests.support.state import roundtrip
from watcher.config import load_settings
from watcher.engine import Engine
from watcher.service.series_text import render_metrics
from watcher.service.telemetry import StateCollector
from watcher.sim.platform import Platform

DAY = 86400.0
WEEK = Platform(
    agents=4,
    seed=7,
    duration_s=7 * DAY,
    conversations_per_s=0.005,
    zipf=0.5,
    rollout_share=0.5,
    rollout_s=1800,
    strategies={"canary": 1.0},
)


def _engine(**state: Any) -> Engine:
    settings = load_settings(environ={})
    return Engine(msgspec.structs.replace(settings, state=msgspec.structs.replace(settings.state, **state)))


def _sizes(engine: Engine) -> dict[str, int]:
    registry = CollectorRegistry()
    registry.register(StateCollector(engine))
    text = render_metrics(registry).decode()
    return {
        "series": len(engine.state.keys()),
        "versions": len(engine.state.version_last()),
        "marker_times": len(engine.registry.marker_times),
        "metrics_lines": sum(1 for line in text.splitlines() if not line.startswith("#")),
        "exposed_versions": int(
            float(next(ln for ln in text.splitlines() if ln.startswith("watcher_state_versions ")).split()[1])
        ),
        "retired": len(engine.retired_versions),
        "last_action": len(engine.last_action),
    }


def _batches() -> Iterator[list[bytes]]:
    return platform_batches(WEEK, 500)


def _run(engine: Engine, days: int) -> list[dict[str, int]]:
    """Feed ``days`` of the week; the sizes at the end of each day (and at the end of the stream)."""
    out: list[dict[str, int]] = []
    end = WEEK.start_ts + DAY
    for batch in _batches():
        engine.process(batch)
        if (engine.state.watermark or 0.0) >= end:
            out.append(_sizes(engine))
            end += DAY
            if len(out) >= days:
                return out
    return [*out, _sizes(engine)]


def test_a_week_of_churn_keeps_the_state_and_metrics_at_their_level() -> None:
    days = _run(_engine(), 7)
    assert len(days) >= 7
    # ~24 versions per agent and day were shipped; the state holds the live ones and the canaries
    assert all(day["versions"] <= 2 * WEEK.agents for day in days), days
    assert all(day["exposed_versions"] == day["versions"] for day in days), days
    for k in ("series", "metrics_lines", "marker_times"):  # no growth after the first two days
        level = max(day[k] for day in days[:2])
        assert all(day[k] <= 1.5 * level for day in days[2:]), (k, days)


def test_without_retirement_the_state_grows_with_every_version() -> None:
    (day,) = _run(_engine(retired_after_s=1e12, idle_after_s=None), 1)
    assert day["versions"] > 10 * WEEK.agents, day


def test_retired_versions_leave_after_their_quiet_time_idle_ones_after_theirs() -> None:
    engine = _engine(retired_after_s=600.0, idle_after_s=3 * 3600.0)
    _run(engine, 1)
    wm = engine.state.watermark
    assert wm is not None
    live = {
        (r.agent_id, r.environment, v)
        for r in engine.registry.active_rollouts()
        for v in (r.baseline_version, r.canary_version)
    }
    for key, last in engine.state.version_last().items():
        if key in live:
            continue
        assert wm - last < 3 * 3600.0 + 60.0, key  # the sweep runs every minute of event time
        if key in engine.retired_versions and engine.registry.baseline(key[0], key[1]) != key[2]:
            assert wm - last < 600.0 + 60.0, key
    # what the sweep needs survives a checkpoint
    restored = _engine(retired_after_s=600.0, idle_after_s=3 * 3600.0)
    restored.load_state(roundtrip(engine.to_state()))
    assert restored.state.version_last() == engine.state.version_last()
    assert restored.retired_versions == engine.retired_versions
