"""The exposition of the per-series statistics is the metric catalogue's families, with the state's
numbers."""

from __future__ import annotations

import dataclasses
import re

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from watcher.config import load_settings
from watcher.contract import RATE_METRICS, SERIES_FAMILIES, Family
from watcher.engine import Engine
from watcher.service.series_text import render_metrics
from watcher.service.telemetry import StateCollector
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate


def _scraped() -> tuple[Engine, str]:
    engine = Engine(load_settings(environ={}))
    lines = list(generate(dataclasses.replace(PRESETS["demo"], duration_s=120.0, conversations_per_s=5.0)))
    for i in range(0, len(lines), 1000):
        engine.process(lines[i : i + 1000])
    registry = CollectorRegistry()
    registry.register(StateCollector(engine))
    return engine, render_metrics(registry).decode()


def _exposed(prefix: str, f: Family) -> str:
    return prefix + f.name + ("_total" if f.type == "counter" else "")


def test_every_series_family_of_the_catalogue_is_exposed_with_its_type_and_doc() -> None:
    _, text = _scraped()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    helps = dict(re.findall(r"^# HELP (\S+) (.+)$", text, re.M))
    want = {
        _exposed(prefix, f): f
        for f, _ in SERIES_FAMILIES
        for prefix in ("watcher_", "watcher_segment_")
        if not (prefix == "watcher_segment_" and f.stat == "share")  # a share of the agent's turns
    }
    per_series = {n for n in types if n.startswith("watcher_segment_") or n in want}
    assert per_series == set(want)
    for name, f in want.items():
        assert (types[name], helps[name]) == (f.type, f.doc), name


def test_the_exposed_numbers_are_the_states() -> None:
    engine, text = _scraped()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    series = {"agent": "support-bot", "environment": "prod", "version": "v42", "arm": "canary"}

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({**series, **labels}.items())))]

    key = ("support-bot", "prod", "v42", "canary", "", "")
    for window in ("cumulative", "recent"):
        snap = engine.state.snapshot(key, window)  # type: ignore[arg-type]
        for m in RATE_METRICS:
            ratio = next(f for f in m.families if f.stat == "rate")
            assert value(f"watcher_{ratio.name}", window=window) == snap.rates[m.name], (m.name, window)
        assert value("watcher_quality_mean", window=window) == snap.quality_mean
        assert (
            value("watcher_latency_seconds", window=window, quantile="0.95") == snap.latency_p95_ms / 1000.0
        )  # type: ignore[operator]
    cumulative = engine.state.snapshot(key)
    for m in RATE_METRICS:
        counter = next(f for f in m.families if f.stat == "events")
        assert value(f"watcher_{counter.name}_total") == cumulative.events[m.name], m.name
    assert value("watcher_turns_total") == cumulative.turns > 0
