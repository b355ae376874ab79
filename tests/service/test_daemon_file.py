"""The daemon's loop without Kafka: a file source, file dead letters, an in-memory span exporter."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from watcher.config import load_settings
from watcher.kafka.deadletter import FileDeadLetters
from watcher.kafka.messages import FileSource
from watcher.service.compose import build_daemon
from watcher.service.markers import NullMarkerPublisher
from watcher.sim.presets import PRESETS
from watcher.sim.simulate import write_jsonl
from watcher.storage.decisions import SqliteDecisionLog


async def test_daemon_over_a_file_decides_dead_letters_and_traces(tmp_path) -> None:
    path = tmp_path / "traffic.jsonl"
    write_jsonl(dataclasses.replace(PRESETS["demo"], duration_s=600.0), path)
    with path.open("ab") as fh:
        fh.write(b"{broken\n" + b'{"schema":"watcher.turn/v2","event_id":"z"}\n')
    settings = load_settings(
        environ={},
        overrides={
            "http.port": 0,
            "outbox.path": str(tmp_path / "outbox.sqlite"),
            "spool.path": str(tmp_path / "spool.sqlite"),
            "checkpoint.path": str(tmp_path / "checkpoint.sqlite"),
        },
    )
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    source = FileSource(path, batch_size=500)
    daemon = build_daemon(
        settings,
        registry=CollectorRegistry(),
        source=source,
        dead_letters=FileDeadLetters(tmp_path / "dead.jsonl"),
        decision_log=SqliteDecisionLog(tmp_path / "decisions.sqlite"),
        marker_publisher=NullMarkerPublisher(),
        tracer=provider.get_tracer("test"),
    )
    try:  # the file's end ends the run
        assert await asyncio.wait_for(daemon.run(asyncio.Event(), freeze_heap=True), 60) == 0
        assert gc.get_freeze_count() > 10_000  # start-up's objects out of the collector's reach
    finally:
        gc.unfreeze()

    lines = path.read_bytes().count(b"\n")
    assert daemon.events_consumed == lines
    assert source.committed == lines  # every batch committed after its state was updated

    dead = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert sorted(d["reason"] for d in dead) == ["not_json", "unknown_schema"]

    spans = exporter.get_finished_spans()
    assert len(spans) == daemon.batches_processed
    assert sum(s.attributes["watcher.events"] for s in spans) == lines
    assert sum(s.attributes["watcher.rejected"] for s in spans) == 2

    log = SqliteDecisionLog(tmp_path / "decisions.sqlite")
    records = log.list()
    assert [r["action"] for r in records] == ["rollback"]
    assert records[0]["trigger"] == {"metric": "quality", "slice": "intent=billing"}
    assert "intent=billing" in records[0]["reason"]
