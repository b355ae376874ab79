"""`watcher replay` of a stream makes exactly the daemon's decisions on the same stream: the same
records (ids, event times, reasons, evidence), although Kafka cuts the stream into other batches."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

from tests.support.daemon import daemon_settings, until
from watcher.kafka.embedded import TopicSpec, create_topics
from watcher.service import replay
from watcher.service.compose import build_daemon
from watcher.sim.presets import PRESETS
from watcher.sim.scenario import Regression
from watcher.sim.traffic import generate
from watcher.storage import SqliteDecisionLog


async def test_the_daemon_on_the_broker_and_replay_make_the_same_records(
    broker, unique_topic, produce, tmp_path: Path
) -> None:
    scenario = dataclasses.replace(
        PRESETS["demo"],
        duration_s=900.0,
        conversations_per_s=5.0,
        weight_steps=((300.0, 0.3),),
        regressions=(  # a pause (latency), then a rollback (quality) after a weight change
            Regression("latency", 0.4, start_s=60.0),
            Regression("quality", -0.2, start_s=400.0, segment={"intent": "billing"}),
        ),
    )
    lines = list(generate(scenario))  # markers travel in the telemetry topic, in stream order
    topics = {k: unique_topic(k) for k in ("telemetry", "deployments", "deadletter")}
    await create_topics(broker.bootstrap_servers, [TopicSpec(t) for t in topics.values()])
    await produce(topics["telemetry"], lines, partitions=1, key=b"support-bot")
    settings = daemon_settings(broker, tmp_path, topics, **{"kafka.max_batch_records": 137})
    daemon = build_daemon(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await until(lambda: daemon.events_consumed >= len(lines), timeout=120)
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0
    with SqliteDecisionLog(settings.judge.decision_log) as log:
        logged = log.list(limit=1000, ascending=True)
    path = tmp_path / "stream.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    replayed, _ = replay(path)
    assert [d["action"] for d in logged] == ["pause", "rollback"]
    assert [json.dumps(d, sort_keys=True) for d in replayed.decisions] == [
        json.dumps(d, sort_keys=True) for d in logged
    ]
