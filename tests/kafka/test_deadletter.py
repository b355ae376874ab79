"""Dead letters: every rejected message delivered with its reason and original bytes."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest

from watcher.backoff import Backoff
from watcher.clock import ManualClock
from watcher.contract.schema import Rejected, RejectReason
from watcher.errors import ConfigError, SinkError
from watcher.kafka.deadletter import DeadLetters, FileDeadLetters, KafkaDeadLetters, NullDeadLetters
from watcher.kafka.embedded import EmbeddedBroker, free_port


def rejects() -> list[Rejected]:
    return [
        Rejected(RejectReason.NOT_JSON, "expected value at line 1 column 1", b"{nope", "telemetry/0@17"),
        Rejected(
            RejectReason.MISSING_FIELD,
            "missing field `agent_id`",
            b'{"schema":"watcher.turn/v1"}',
            "telemetry/2@3",
        ),
        Rejected(RejectReason.NOT_JSON, "invalid utf-8", b"\xff\xfe\x00binary", "telemetry/1@0"),
    ]


async def read_topic(servers: str, topic: str, n: int, timeout: float = 10.0) -> list[Any]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=servers, auto_offset_reset="earliest")
    await consumer.start()
    out: list[Any] = []
    try:
        async with asyncio.timeout(timeout):
            while len(out) < n:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    out.extend(records)
    finally:
        await consumer.stop()
    return out


def check_records(values: list[bytes], expected: list[Rejected], now: float) -> None:
    decoded = [json.loads(v) for v in values]
    assert [d["schema"] for d in decoded] == ["watcher.deadletter/v1"] * len(expected)
    by_origin = {d["origin"]: d for d in decoded}
    for r in expected:
        d = by_origin[r.origin]
        assert d["reason"] == r.reason.value
        assert d["detail"] == r.detail
        assert base64.b64decode(d["raw_b64"]) == r.raw
        assert d["ts"] == now


async def test_kafka_dead_letters_are_readable_back(broker: EmbeddedBroker, unique_topic) -> None:
    from watcher.kafka.embedded import TopicSpec, create_topics

    topic = unique_topic("deadletter")
    await create_topics(broker.bootstrap_servers, [TopicSpec(topic)])
    sink = KafkaDeadLetters(broker.bootstrap_servers, topic, clock=ManualClock(1_700_000_000.5))
    records = rejects()
    await sink.publish(records)
    await sink.publish([])  # nothing to do, returns at once
    await sink.stop()
    assert sink.published == 3
    got = await read_topic(broker.bootstrap_servers, topic, 3)
    assert sorted(r.key for r in got) == sorted(r.origin.encode() for r in records)  # key = origin
    check_records([r.value for r in got], records, 1_700_000_000.5)


async def test_publish_during_an_outage_returns_only_once_delivered() -> None:
    async with EmbeddedBroker() as own:  # paused below: not the shared session broker
        from watcher.kafka.embedded import TopicSpec, create_topics

        await create_topics(own.bootstrap_servers, [TopicSpec("dl")])
        sink = KafkaDeadLetters(
            own.bootstrap_servers,
            "dl",
            client_options={"request_timeout_ms": 1000},
            backoff=Backoff(initial_s=0.1, max_s=0.5),
        )
        await sink.publish(rejects()[:1])  # connected before the outage
        own.pause()
        publish = asyncio.create_task(sink.publish(rejects()[1:]))
        await asyncio.sleep(2.5)  # more than two request timeouts: sends fail and are retried
        assert not publish.done(), "publish returned while the broker could not have acknowledged"
        own.resume()
        await asyncio.wait_for(publish, 15)
        await sink.stop()
        got = await read_topic(own.bootstrap_servers, "dl", 3)
    origins = [r.key.decode() for r in got]
    assert set(origins) == {r.origin for r in rejects()}  # duplicates are allowed, losses are not


async def test_stop_interrupts_a_publish_that_cannot_be_delivered() -> None:
    sink = KafkaDeadLetters(f"127.0.0.1:{free_port()}", "dl", backoff=Backoff(initial_s=0.05, max_s=0.1))
    publish = asyncio.create_task(sink.publish(rejects()))
    await asyncio.sleep(0.3)
    assert not publish.done()  # no broker: it keeps retrying instead of returning
    await sink.stop()
    with pytest.raises(SinkError, match="3 records not delivered"):
        await asyncio.wait_for(publish, 5)


async def test_oversized_raw_is_truncated_not_retried_forever(tmp_path: Path) -> None:
    big = Rejected(RejectReason.TOO_LARGE, "message of 300000 bytes", b"x" * 300_000, "telemetry/0@1")
    sink = FileDeadLetters(tmp_path / "dl.jsonl", clock=ManualClock(5.0), max_raw_bytes=1000)
    await sink.publish([big])
    record = json.loads((tmp_path / "dl.jsonl").read_bytes())
    assert base64.b64decode(record["raw_b64"]) == b"x" * 1000
    assert "first 1000 of 300000 raw bytes" in record["detail"]


async def test_file_dead_letters_append_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dead.jsonl"
    sink: DeadLetters = FileDeadLetters(path, clock=ManualClock(42.0))
    records = rejects()
    await sink.publish(records[:2])
    await sink.publish(records[2:])
    await sink.publish([])
    lines = path.read_bytes().splitlines()
    assert len(lines) == 3
    check_records(lines, records, 42.0)


async def test_null_dead_letters_accept_anything() -> None:
    sink: DeadLetters = NullDeadLetters()
    assert await sink.publish(rejects()) is None


def test_kafka_dead_letters_from_the_settings_slice() -> None:
    from watcher.config import KafkaSettings

    sink = KafkaDeadLetters(KafkaSettings(bootstrap_servers="k:9092", dead_letter_topic="dead"))
    assert (sink.bootstrap_servers, sink.topic) == ("k:9092", "dead")
    with pytest.raises(ConfigError, match="acks"):
        KafkaDeadLetters("k:9092", "dead", client_options={"acks": 1})
