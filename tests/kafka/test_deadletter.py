"""Dead letters: every rejected message delivered with its reason and original bytes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from watcher.backoff import Backoff
from watcher.clock import ManualClock
from watcher.contract.schema import Rejected, RejectReason
from watcher.errors import ConfigError, SinkError
from watcher.kafka.deadletter import DeadLetters, FileDeadLetters, KafkaDeadLetters, NullDeadLetters
from watcher.kafka.embedded import EmbeddedBroker, free_port
from watcher.storage import SqliteSpool


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
        await asyncio.sleep(
            0.3
        )  # SIGSTOP is asynchronous: on a loaded machine the broker can answer once more
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


async def test_a_message_too_large_for_one_record_travels_whole_in_parts(
    broker: EmbeddedBroker, unique_topic
) -> None:
    # issue #15, 9: dead letters of messages over 256 KiB kept only the first 256 KiB
    from watcher.kafka.embedded import TopicSpec, create_topics

    topic = unique_topic("deadletter")
    await create_topics(broker.bootstrap_servers, [TopicSpec(topic)])
    raw = bytes(range(256)) * 2900  # 742,400 bytes: three parts of at most 256 KiB
    big = Rejected(RejectReason.TOO_LARGE, "message of 742400 bytes", raw, "telemetry/0@1")
    sink = KafkaDeadLetters(broker.bootstrap_servers, topic, clock=ManualClock(5.0))
    await sink.publish([big, rejects()[0]])
    await sink.stop()
    got = [json.loads(r.value) for r in await read_topic(broker.bootstrap_servers, topic, 4)]
    parts = sorted((d for d in got if d["origin"] == "telemetry/0@1"), key=lambda d: d["part"])
    assert [(d["part"], d["parts"]) for d in parts] == [(0, 3), (1, 3), (2, 3)]
    whole = b"".join(base64.b64decode(d["raw_b64"]) for d in parts)
    assert whole == raw and parts[0]["raw_bytes"] == len(raw)
    assert parts[0]["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert all(d["reason"] == "too_large" and d["detail"] == big.detail for d in parts)
    (small,) = [d for d in got if d["origin"] != "telemetry/0@1"]
    assert "part" not in small  # one record: as before


async def test_a_topic_that_refuses_writes_never_holds_the_batch(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    # issue #15, 3: an unwritable dead-letter topic stopped all counting (publish retried forever)
    spool = SqliteSpool(tmp_path / "spool.sqlite")
    sink = KafkaDeadLetters(
        broker.bootstrap_servers,
        "not a topic name!",  # the broker refuses it, as it would an ACL denial
        client_options={"request_timeout_ms": 500},
        spool=spool,
        direct_timeout_s=0.5,
        not_ready_after_s=0.3,
    )
    await sink.start()
    try:
        started = time.monotonic()
        await asyncio.wait_for(sink.publish(rejects()[:2]), 5)
        assert time.monotonic() - started < 2.0  # the direct try, then the spool
        started = time.monotonic()
        await sink.publish(rejects()[2:])  # the spool holds some: straight there, no wait
        assert time.monotonic() - started < 0.2
        assert spool.stats("deadletter").records == 3 and sink.published == 0
        assert sink.health() is None  # not at once: a hiccup is not a reason to be unready
        await asyncio.sleep(0.4)
        why = sink.health()
        assert why is not None and "3 dead letters wait in the spool" in why and "not a topic name" in why
    finally:
        await sink.stop()
    # the spool is a file: what waits is still there for the next process
    again = SqliteSpool(tmp_path / "spool.sqlite")
    assert [s.record.key for s in again.head("deadletter", 10)] == [r.origin.encode() for r in rejects()]
    again.close()
    spool.close()


async def test_spooled_dead_letters_are_forwarded_when_the_broker_takes_them_again(tmp_path: Path) -> None:
    async with EmbeddedBroker() as own:  # paused below: not the shared session broker
        from watcher.kafka.embedded import TopicSpec, create_topics

        await create_topics(own.bootstrap_servers, [TopicSpec("dl")])
        spool = SqliteSpool(tmp_path / "spool.sqlite")
        sink = KafkaDeadLetters(
            own.bootstrap_servers,
            "dl",
            client_options={"request_timeout_ms": 1000},
            spool=spool,
            direct_timeout_s=0.5,
        )
        await sink.start()
        own.pause()
        await asyncio.sleep(0.3)  # SIGSTOP is asynchronous
        await asyncio.wait_for(sink.publish(rejects()), 5)  # spooled: the batch goes on
        assert spool.stats("deadletter").records == 3
        own.resume()
        for _ in range(200):
            if spool.stats("deadletter").records == 0:
                break
            await asyncio.sleep(0.1)
        assert spool.stats("deadletter").records == 0
        await sink.stop()
        got = await read_topic(own.bootstrap_servers, "dl", 3)
        spool.close()
    assert {r.key.decode() for r in got} == {r.origin for r in rejects()}


async def test_a_full_spool_holds_the_batch_until_stop(broker: EmbeddedBroker, tmp_path: Path) -> None:
    spool = SqliteSpool(tmp_path / "spool.sqlite")
    sink = KafkaDeadLetters(
        broker.bootstrap_servers,
        "not a topic name!",
        client_options={"request_timeout_ms": 500},
        spool=spool,
        max_spool_bytes=600,  # room for about two of these records
        direct_timeout_s=0.3,
    )
    await sink.start()
    await sink.publish(rejects()[:2])
    publish = asyncio.create_task(sink.publish(rejects()[2:] * 3))
    await asyncio.sleep(0.5)
    assert not publish.done() and sink.waiting_for_room  # bounded: the consumer waits, nothing is lost
    assert "spool is full" in (sink.health() or "")
    await sink.stop()
    with pytest.raises(SinkError, match="spool full"):
        await asyncio.wait_for(publish, 5)
    assert spool.stats("deadletter").records == 2
    spool.close()


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
