"""/metrics keeps the per-series lines between scrapes and redoes only the agents that changed; the
text is what prometheus-client wrote for the same state; a scrape hands the event loop back between
agents and writes the answer off the loop's thread (issue #13)."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tests.support.loop import run_counting_turns
from tests.support.platform import platform_batches
from watcher.config import load_settings
from watcher.contract import SERIES_FAMILIES
from watcher.engine import Engine
from watcher.service import series_text
from watcher.service.exposition import Exposition
from watcher.service.series_text import QUANTILES, SeriesText, render_metrics
from watcher.service.telemetry import StateCollector
from watcher.sim.platform import Platform
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate

PLATFORM = Platform(agents=12, seed=5, duration_s=900, conversations_per_s=4.0, rollout_share=0.5)
ODD = ['a "quoted" value', "back\\slash", "two\nlines", "café ☕"]  # what the text format must escape


def _lines() -> Iterator[list[bytes]]:
    """A platform's events, then one agent whose segment values need escaping, in batches."""
    yield from platform_batches(PLATFORM, 400)
    odd = []
    demo = dataclasses.replace(PRESETS["demo"], duration_s=60.0, conversations_per_s=3.0, agent_id="odd-bot")
    for i, line in enumerate(generate(demo)):
        event = json.loads(line)
        if event.get("segment"):
            event["segment"] = {k: ODD[i % len(ODD)] for k in event["segment"]}
        odd.append(json.dumps(event).encode())
    yield odd


def _engine() -> Engine:
    engine = Engine(load_settings(environ={}))
    for batch in _lines():
        engine.process(batch)
    return engine


class Reference(Collector):
    """The per-series families as they were built before #13 (prometheus-client families, every
    series' snapshots at each scrape): the text the incremental one must equal."""

    def __init__(self, engine: Engine, agents: set[tuple[str, str]] | None = None) -> None:
        self.engine = engine
        self.agents = agents  # the agents exposed (telemetry.series), None: every agent

    def collect(self) -> Iterator[Metric]:
        state = self.engine.state
        keys = state.keys()
        versions = {k[:3] for k in keys}
        shown = [k for k in keys if self.agents is None or k[:2] in self.agents]
        yield GaugeMetricFamily(
            "watcher_state_series", "series in the state (one per version, arm and segment value)", len(keys)
        )
        yield GaugeMetricFamily(
            "watcher_state_versions", "(agent, environment, version)s in the state", len(versions)
        )
        yield GaugeMetricFamily(
            "watcher_state_agents", "(agent, environment)s in the state", len({k[:2] for k in versions})
        )
        yield GaugeMetricFamily(
            "watcher_state_series_exposed",
            "series whose families this answer carries (telemetry.series: all, or the active rollouts')",
            len(shown),
        )
        families: dict[str, Any] = {}

        def add(f: Any, prefix: str, labels: list[str], values: list[str], value: float) -> None:
            if prefix + f.name not in families:
                kind = CounterMetricFamily if f.type == "counter" else GaugeMetricFamily
                families[prefix + f.name] = kind(prefix + f.name, f.doc, labels=[*labels, *f.labels])
            families[prefix + f.name].add_metric(values, value)

        for key in shown:
            agent, env, version, arm, seg_key, seg_value = key
            seg = bool(seg_key)
            prefix = "watcher_segment_" if seg else "watcher_"
            labels = [
                "agent",
                "environment",
                "version",
                "arm",
                *(["segment_key", "segment_value"] if seg else []),
            ]
            values = [agent, env, version, arm, *([seg_key, seg_value] if seg else [])]
            for f, m in SERIES_FAMILIES:
                for window in ("cumulative",) if f.type == "counter" else ("cumulative", "recent"):
                    lab, val = (
                        (labels, values) if f.type == "counter" else ([*labels, "window"], [*values, window])
                    )
                    if f.stat == "share":
                        share = {} if seg else state.traffic_share(agent, env, window)
                        if (version, arm) in share:
                            add(f, prefix, lab, val, share[(version, arm)])
                        continue
                    snap = state.snapshot(key, window)
                    for extra, value in _samples(f, m, snap):
                        add(f, prefix, lab, [*val, *extra], value)
        yield from families.values()


def _samples(f: Any, m: Any, s: Any) -> list[tuple[tuple[str, ...], float]]:
    if f.stat in ("turns", "conversations"):
        return [((), float(getattr(s, f.stat)))]
    if f.stat == "events":
        return [((), float(s.events[m.name]))]
    if f.stat == "rate":
        return [] if s.rates[m.name] is None else [((), s.rates[m.name])]
    if f.stat in ("mean", "stddev"):
        value = s.quality_mean if f.stat == "mean" else (s.quality_std or 0.0)
        return [] if s.quality_mean is None else [((), value)]
    found = [(q, getattr(s, attr)) for q, attr in QUANTILES]
    return [((q,), v / 1000.0) for q, v in found if v is not None]


def _reference(engine: Engine, agents: set[tuple[str, str]] | None = None) -> bytes:
    registry = CollectorRegistry()
    registry.register(Reference(engine, agents))
    return generate_latest(registry)


def _text(series: SeriesText) -> bytes:
    for _ in series.steps():
        pass
    return b"".join(series.rendered().chunks())


@pytest.fixture(scope="module")
def engine() -> Engine:
    return _engine()


def test_the_text_is_what_prometheus_client_wrote_for_the_same_state(engine: Engine) -> None:
    text = _text(SeriesText(engine))
    assert len(engine.state.keys()) > 200
    assert text == _reference(engine)
    for value in ODD:  # escaped as the text format says, not dropped
        escaped = value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
        assert f'segment_value="{escaped}"'.encode() in text


def test_an_unchanged_state_is_not_redone_and_a_batch_redoes_only_its_agents() -> None:
    engine = _engine()
    series = SeriesText(engine)
    first = _text(series)
    assert series.redone == len(engine.state.keys())
    assert _text(series) == first and series.redone == 0

    # one agent's turns, a little later: its series are redone, and the rest only where data left
    # their recent window (the watermark moved on)
    turns = [json.loads(x) for b in _lines() for x in b if b'"odd-bot"' in x and b"turn/v1" in x][-50:]
    engine.process([json.dumps({**t, "event_id": t["event_id"] + "-again"}).encode() for t in turns])
    assert _text(series) == _reference(engine)
    odd = [k for k in engine.state.keys() if k[0] == "odd-bot"]
    assert len(odd) <= series.redone < len(engine.state.keys())


def test_a_pass_abandoned_half_way_leaves_the_rest_for_the_next() -> None:
    engine = _engine()
    series = SeriesText(engine)
    _text(series)
    turns = [json.loads(x) for b in _lines() for x in b if b"turn/v1" in x and b'"odd-bot"' not in x]
    engine.process([json.dumps({**t, "event_id": t["event_id"] + "-late"}).encode() for t in turns[-400:]])
    assert len(engine.state.take_dirty()) > 2  # several agents to redo (taken: peeked, put back below)
    engine.process([json.dumps({**t, "event_id": t["event_id"] + "-again"}).encode() for t in turns[-400:]])
    steps = series.steps()
    next(steps)  # one agent's first step, then the scrape is cancelled
    steps.close()
    assert _text(series) == _reference(engine)


def test_versions_that_leave_and_resets_are_redone(engine: Engine) -> None:
    series = SeriesText(engine)
    _text(series)
    agent, env, version = next(k[:3] for k in engine.state.keys() if k[0] != "odd-bot")
    engine.state.forget_version(agent, env, version)
    assert _text(series) == _reference(engine)
    other = next(k[:2] for k in engine.state.keys() if k[:2] != (agent, env))
    engine.state.reset_cumulative(*other)
    assert _text(series) == _reference(engine)
    assert series.redone == sum(1 for k in engine.state.keys() if k[:2] == other)


def _marker(r: Any, action: str, ts: float) -> bytes:
    return json.dumps(
        {
            "schema": "watcher.deployment/v1",
            "event_id": f"{r.rollout_id}-{action}-test",
            "ts": ts,
            "agent_id": r.agent_id,
            "environment": r.environment,
            "action": action,
            "strategy": "canary",
            "baseline_version": r.baseline_version,
            "canary_version": r.canary_version,
            "canary_weight": 0.1,
        }
    ).encode()


def test_beyond_the_limit_only_the_active_rollouts_agents_are_exposed() -> None:
    engine = _engine()
    n = len(engine.state.keys())
    active = {(r.agent_id, r.environment) for r in engine.registry.all() if r.active}
    assert active and active < {k[:2] for k in engine.state.keys()}
    assert _text(SeriesText(engine, "auto", limit=n)) == _reference(engine)  # within the limit: all
    for selection, limit in (("auto", n - 1), ("rollouts", n)):
        series = SeriesText(engine, selection, limit)
        assert _text(series) == _reference(engine, active)
        assert 0 < series.exposed == sum(1 for k in engine.state.keys() if k[:2] in active) < n

    # back within the limit: every agent again, those unchanged since included, once the state is a
    # tenth below it (at the limit itself it stays limited: no flapping between scrapes)
    series = SeriesText(engine, "auto", limit=n - 1)
    _text(series)
    quiet = Counter(k[:3] for k in engine.state.keys() if k[:2] not in active)  # series per version
    smallest = min(quiet, key=quiet.__getitem__)
    assert quiet[smallest] < 0.1 * n
    engine.state.forget_version(*smallest)
    assert _text(series) == _reference(engine, active)
    for version in sorted(quiet, key=quiet.__getitem__, reverse=True):
        if len(engine.state.keys()) <= 0.9 * (n - 1):
            break
        engine.state.forget_version(*version)
    assert _text(series) == _reference(engine)

    # a rollout that ends takes its agent's series out at the next scrape; one that starts brings
    # its agent's in (their lines computed then: they were not kept meanwhile)
    series = SeriesText(engine, "rollouts")
    _text(series)
    ending = next(r for r in engine.registry.all() if r.active)
    idle = next(k for k in engine.state.keys() if k[:2] not in active and k[3] == "live")
    starting = dataclasses.replace(ending, rollout_id="new", agent_id=idle[0], environment=idle[1])
    starting = dataclasses.replace(starting, baseline_version=idle[2], canary_version=idle[2] + "-next")
    late = PLATFORM.start_ts + PLATFORM.duration_s + 60
    engine.process([_marker(ending, "promoted", late), _marker(starting, "started", late)])
    now = (active - {(ending.agent_id, ending.environment)}) | {idle[:2]}
    assert _text(series) == _reference(engine, now)
    assert any(k[:2] == idle[:2] for k in engine.state.keys())


def test_a_scrape_hands_the_loop_back_between_agents_and_writes_off_the_loop(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(series_text, "CHUNK_SERIES", 50)
    monkeypatch.setattr(series_text, "STEP_SERIES", 4)
    registry = CollectorRegistry()
    state = StateCollector(engine)
    registry.register(state)
    threads: list[threading.Thread] = []

    class Probe(Collector):  # where the other collectors (the outbox's, the spool's SQLite) run
        def collect(self) -> list[Metric]:
            threads.append(threading.current_thread())
            return []

    registry.register(Probe())
    exposition = Exposition(registry, state, slice_s=0.0)  # hand it back after every agent

    pieces, ticks = run_counting_turns(exposition.render())
    body = b"".join(pieces)
    # written in pieces of 50 series (no step copies the whole text at once)
    assert max(map(len, pieces)) < len(body) / 10
    per_agent = Counter(k[:2] for k in engine.state.keys())
    rollouts = len(engine.registry.all())
    assert rollouts > 3 and max(per_agent.values()) > 8
    # the loop ran between every two agents, every 4 series of a busy one, and every two rollouts
    steps = sum(1 + n // 4 for n in per_agent.values())
    assert exposition.slices >= steps + rollouts and ticks >= exposition.slices
    assert threads and threads[0] is not threading.main_thread()
    assert body == render_metrics(registry)  # the same answer as all at once
    assert _reference(engine) in body
