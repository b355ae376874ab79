"""OTLP traces through Kafka: the daemon against the real broker, fed as the Collector's Kafka exporter
feeds a topic (one ExportTraceServiceRequest per message, protobuf or JSON, no message key)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json

from tests.service.test_daemon import _metric
from tests.support.daemon import consume_all, daemon_settings, daemon_topics, until
from tests.support.otlp import RESOURCE, otlp_json, sdk_request, turn_attributes
from watcher.service.compose import build_daemon
from watcher.service.replay import replay
from watcher.service.series_text import render_metrics
from watcher.sim import simulate as sim
from watcher.sim.presets import PRESETS
from watcher.storage import SqliteDecisionLog


async def test_collector_written_otlp_is_judged_and_broken_turn_spans_dead_lettered(
    broker, unique_topic, produce, tmp_path
) -> None:
    topics = await daemon_topics(broker, unique_topic)
    baseline = sdk_request([{"score": 0.8, "attrs": turn_attributes(i)} for i in range(6)])
    canary_turns = [
        {"score": 0.7, "attrs": turn_attributes(i, **{"gen_ai.agent.version": "v43"})} for i in range(6)
    ]
    canary_turns[4] = {
        "attrs": turn_attributes(4, **{"gen_ai.conversation.id": None, "gen_ai.agent.version": "v43"})
    }
    canary = sdk_request(canary_turns, resource={**RESOURCE, "service.version": "v43"})
    values = [baseline.SerializeToString(), otlp_json(canary)]
    await produce(
        topics["telemetry"], values, partitions=3
    )  # no key: spread over partitions, as the exporter does
    daemon = build_daemon(daemon_settings(broker, tmp_path, topics))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await until(lambda: daemon.events_consumed >= len(values))
        text = render_metrics(daemon.registry).decode()
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0

    turns = {
        k[2]: daemon.engine.state.snapshot(k, "cumulative").turns
        for k in daemon.engine.state.keys()
        if not k[4]
    }
    assert turns == {"v42": 6, "v43": 5}
    assert _metric(text, "watcher_otlp_spans_total", outcome="turn") == 11
    assert _metric(text, "watcher_otlp_spans_total", outcome="ignored") == 24  # model and tool calls
    assert _metric(text, "watcher_otlp_spans_total", outcome="rejected") == 1
    assert _metric(text, "watcher_events_rejected_total", reason="missing_field") == 1
    (dead,) = [json.loads(v) for v in await consume_all(broker.bootstrap_servers, topics["deadletter"], 1)]
    assert dead["reason"] == "missing_field" and "gen_ai.conversation.id" in dead["detail"]
    assert dead["origin"].startswith(topics["telemetry"] + "/")
    span = json.loads(base64.b64decode(dead["raw_b64"]))  # the broken span itself, as the request held it
    (broken,) = [
        s
        for s in canary.resource_spans[0].scope_spans[0].spans
        if s.name.startswith("invoke_agent") and "gen_ai.conversation.id" not in {a.key for a in s.attributes}
    ]
    assert span["spanId"] == broken.span_id.hex() and span["name"] == broken.name


async def test_simulated_otlp_through_the_broker_gives_the_json_streams_decision(
    broker, unique_topic, tmp_path
) -> None:
    """The demo's regression (quality down for intent=billing) as OTLP protobuf requests through Kafka:
    the daemon rolls back for the same metric and slice as a replay of the same traffic as JSON."""
    scenario = dataclasses.replace(PRESETS["demo"], duration_s=330.0)
    path = tmp_path / "demo.jsonl"
    sim.write_jsonl(scenario, path)
    expected, _ = replay(path)
    assert expected.decisions
    topics = await daemon_topics(broker, unique_topic)
    sent = await sim.produce(
        scenario,
        broker.bootstrap_servers,
        topics["telemetry"],
        deployments_topic=topics["deployments"],
        fmt="otlp",
    )
    messages = sum(len(block) for block in sim.messages(scenario, "otlp_proto"))
    settings = daemon_settings(broker, tmp_path, topics)
    daemon = build_daemon(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await until(lambda: daemon.events_consumed >= messages, timeout=60)
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0
    with SqliteDecisionLog(settings.judge.decision_log) as log:
        got = log.list(ascending=True)
    assert sent == expected.turns + expected.deployments
    assert [(d["action"], d["trigger"]) for d in got] == [
        (d["action"], d["trigger"]) for d in expected.decisions
    ]
