"""Sources: Kafka consumer group (against the embedded broker) and JSON Lines files."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from watcher.backoff import Backoff
from watcher.errors import ConfigError, SourceError
from watcher.kafka import KafkaSource, Message, MessageBatch, Source
from watcher.kafka.embedded import EmbeddedBroker, free_port
from watcher.kafka.messages import FileSource, messages_from_records

Produce = Callable[..., Awaitable[list[tuple[int, int]]]]


async def consume(
    source: KafkaSource,
    n: int,
    *,
    timeout: float = 20.0,
    commit: Callable[[int, list[Message]], bool] = lambda i, batch: True,
) -> list[list[Message]]:
    """Batches until ``n`` messages arrived; commits the batches ``commit(index, batch)`` selects."""
    batches: list[list[Message]] = []
    got = 0
    async with asyncio.timeout(timeout), aclosing(source.batches()) as stream:
        async for batch in stream:
            assert batch, "batches are never empty"
            batches.append(batch)
            if commit(len(batches) - 1, batch):
                assert await source.commit(batch)
            got += len(batch)
            if got >= n:
                break
    return batches


def flat(batches: Sequence[Sequence[Message]]) -> list[bytes]:
    return [m.value for b in batches for m in b]


async def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)
    return True


# -- Message ---------------------------------------------------------------------------------------
def test_messages_from_records_are_ordinary_frozen_messages() -> None:
    records = [ConsumerRecord("t", 2, 10 + i, 0, 0, None, b"v%d" % i, None, 0, 2, ()) for i in range(3)]
    messages = messages_from_records(records, "t", 2)
    assert messages == [Message(b"v0", "t", 2, 10), Message(b"v1", "t", 2, 11), Message(b"v2", "t", 2, 12)]
    assert all(type(m) is Message for m in messages)
    assert hash(messages[0]) == hash(Message(b"v0", "t", 2, 10))
    with pytest.raises(dataclasses.FrozenInstanceError):
        messages[0].offset = 5  # type: ignore[misc]


def test_forced_settings_cannot_be_overridden() -> None:
    with pytest.raises(ConfigError, match="enable_auto_commit"):
        KafkaSource("127.0.0.1:1", ["t"], "g", client_options={"enable_auto_commit": True})
    with pytest.raises(ConfigError, match="auto_offset_reset"):
        KafkaSource("127.0.0.1:1", ["t"], "g", auto_offset_reset="none")


# -- KafkaSource against the embedded broker ------------------------------------------------------
async def test_commit_then_restart_resumes_after_committed_offsets(
    broker: EmbeddedBroker, unique_topic: Callable[..., str], produce: Produce, kafka_options: dict[str, Any]
) -> None:
    topic, group = unique_topic(), unique_topic("group")
    first = [b"a%d" % i for i in range(600)]
    await produce(topic, first, partitions=3)

    source = KafkaSource(
        broker.bootstrap_servers, [topic], group, max_records=100, client_options=kafka_options
    )
    assert isinstance(source, Source)
    await source.start()
    assert not source.ready  # not connected yet
    batches = await consume(source, len(first))
    assert source.ready
    await source.stop()
    assert not source.ready
    assert sorted(flat(batches)) == sorted(first)
    assert max(len(b) for b in batches) <= 100
    for p in range(3):  # per partition in offset order, without gaps
        offsets = [m.offset for b in batches for m in b if m.partition == p]
        assert offsets == list(range(200))

    second = [b"b%d" % i for i in range(90)]
    await produce(topic, second, partitions=3)
    again = KafkaSource(
        broker.bootstrap_servers, [topic], group, max_records=100, client_options=kafka_options
    )
    await again.start()
    resumed = await consume(again, len(second))
    await again.stop()
    assert sorted(flat(resumed)) == sorted(second)  # nothing lost, nothing read twice


async def test_a_batch_not_committed_is_read_again(
    broker: EmbeddedBroker, unique_topic: Callable[..., str], produce: Produce, kafka_options: dict[str, Any]
) -> None:
    topic, group = unique_topic(), unique_topic("group")
    values = [b"%d" % i for i in range(200)]
    await produce(topic, values)
    source = KafkaSource(
        broker.bootstrap_servers, [topic], group, max_records=50, client_options=kafka_options
    )
    await source.start()
    batches: list[list[Message]] = []
    got = 0
    async with asyncio.timeout(20), aclosing(source.batches()) as stream:
        async for batch in stream:
            batches.append(batch)
            got += len(batch)
            if got >= 200:
                break  # the last batch is processed but never committed
            assert await source.commit(batch)
    await source.stop()
    uncommitted = batches[-1]

    again = KafkaSource(
        broker.bootstrap_servers, [topic], group, max_records=50, client_options=kafka_options
    )
    await again.start()
    reread = await consume(again, len(uncommitted))
    await again.stop()
    assert flat(reread) == [m.value for m in uncommitted]
    assert [m.offset for b in reread for m in b] == [m.offset for m in uncommitted]


async def test_commit_covers_only_the_partitions_of_the_batch(
    broker: EmbeddedBroker, unique_topic: Callable[..., str], produce: Produce, kafka_options: dict[str, Any]
) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic, group = unique_topic(), unique_topic("group")
    await produce(topic, [b"x"] * 30, partitions=3)
    source = KafkaSource(broker.bootstrap_servers, [topic], group, client_options=kafka_options)
    await source.start()
    await consume(source, 30, commit=lambda i, batch: False)
    # Out of order inside a partition: the highest offset counts, not the last one.
    batch = [
        Message(b"x", topic, 0, 5),
        Message(b"x", topic, 0, 7),
        Message(b"x", topic, 0, 6),
        Message(b"x", topic, 2, 3),
    ]
    assert await source.commit(batch)
    await source.stop()

    # (The admin client's OffsetFetch does not decode Tansu's answer; a group consumer's does.)
    reader = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await reader.start()
    try:
        reader.assign([TopicPartition(topic, p) for p in range(3)])
        offsets = {p: await reader.committed(TopicPartition(topic, p)) for p in range(3)}
    finally:
        await reader.stop()
    assert offsets == {0: 8, 1: None, 2: 4}


async def test_lag_is_high_watermark_minus_position(
    broker: EmbeddedBroker, unique_topic: Callable[..., str], produce: Produce, kafka_options: dict[str, Any]
) -> None:
    topic, group = unique_topic(), unique_topic("group")
    await produce(topic, [b"%d" % i for i in range(300)])
    source = KafkaSource(
        broker.bootstrap_servers, [topic], group, max_records=100, client_options=kafka_options
    )
    await source.start()
    assert source.lag() == {}
    seen: list[dict[tuple[str, int], int]] = []
    got = 0
    async with asyncio.timeout(20), aclosing(source.batches()) as stream:
        async for batch in stream:
            seen.append(source.lag())
            got += len(batch)
            await source.commit(batch)
            if got >= 300:
                break
    await source.stop()
    assert seen[0] == {(topic, 0): 200}  # 300 produced, 100 handed out
    assert seen[-1] == {(topic, 0): 0}
    assert [lag[(topic, 0)] for lag in seen] == sorted((lag[(topic, 0)] for lag in seen), reverse=True)


async def test_broker_outage_no_crash_not_ready_then_every_message_exactly_once(
    produce: Produce, kafka_options: dict[str, Any]
) -> None:
    topic = "outage"
    async with EmbeddedBroker() as own:  # paused below: not the shared session broker
        await produce(
            topic, [b"%d" % i for i in range(600)], partitions=3, bootstrap_servers=own.bootstrap_servers
        )
        source = KafkaSource(
            own.bootstrap_servers,
            [topic],
            "g",
            max_records=50,
            client_options=kafka_options,
            stale_after=1.0,
            backoff=Backoff(initial_s=0.1, max_s=0.5),
        )
        await source.start()
        committed: list[bytes] = []
        not_committed: list[bytes] = []
        readiness: list[bool] = []
        outage_over = asyncio.Event()

        async def outage() -> None:
            own.pause()
            await asyncio.sleep(3.0)
            readiness.append(source.ready)
            own.resume()
            await produce(
                topic,
                [b"%d" % i for i in range(600, 900)],
                partitions=3,
                bootstrap_servers=own.bootstrap_servers,
            )
            outage_over.set()

        task: asyncio.Task[None] | None = None
        async with asyncio.timeout(45), aclosing(source.batches()) as stream:
            async for batch in stream:
                values = [m.value for m in batch]
                (committed if await source.commit(batch) else not_committed).extend(values)
                if task is None and len(committed) >= 200:
                    task = asyncio.create_task(outage())
                if outage_over.is_set() and len(set(committed)) >= 900:
                    break
        assert task is not None
        await task
        assert readiness == [False]
        await wait_for(lambda: source.ready, 5)
        await source.stop()
    counts = Counter(committed)
    assert set(counts) == {b"%d" % i for i in range(900)}
    assert max(counts.values()) == 1, "a committed message was delivered twice"
    assert set(not_committed) <= set(committed)  # a failed commit means: read again, never lost


async def test_started_without_a_broker_waits_and_then_consumes(
    produce: Produce, kafka_options: dict[str, Any]
) -> None:
    port = free_port()
    servers = f"127.0.0.1:{port}"
    source = KafkaSource(
        servers, ["late"], "g", client_options=kafka_options, backoff=Backoff(initial_s=0.1, max_s=0.5)
    )
    await source.start()
    got: list[bytes] = []

    async def run() -> None:
        async with aclosing(source.batches()) as stream:
            async for batch in stream:
                got.extend(m.value for m in batch)
                await source.commit(batch)

    consumer = asyncio.create_task(run())
    await asyncio.sleep(1.0)
    assert not consumer.done(), "the source gave up (or crashed) while no broker listened"
    assert not source.ready
    async with EmbeddedBroker(port=port) as late:
        await produce("late", [b"hello", b"world"], bootstrap_servers=late.bootstrap_servers)
        await wait_for(lambda: len(got) == 2, 20)
        assert source.ready
        await source.stop()
        await asyncio.wait_for(consumer, 5)  # the iterator ends after stop()
    assert got == [b"hello", b"world"]


# -- FileSource -----------------------------------------------------------------------------------
async def test_file_source_batches_lines_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"a":1}\n{"a":2}\r\n\n   \n{"a":3}\nnot json\n{"a":5}')  # no final newline
    source = FileSource(path, batch_size=2)
    assert isinstance(source, Source)
    assert not source.ready
    await source.start()
    assert source.ready
    batches = [b async for b in source.batches()]
    assert [[(m.value, m.offset) for m in b] for b in batches] == [
        [(b'{"a":1}', 1), (b'{"a":2}', 2)],
        [(b'{"a":3}', 5), (b"not json", 6)],
        [(b'{"a":5}', 7)],
    ]
    assert {(m.topic, m.partition) for b in batches for m in b} == {("file", 0)}
    assert await source.commit(batches[1])
    assert source.committed == 6
    assert source.lag() == {}
    await source.stop()
    assert not source.ready


async def test_file_source_missing_file_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="missing.jsonl"):
        await FileSource(tmp_path / "missing.jsonl").start()
    with pytest.raises(ConfigError):
        FileSource(tmp_path / "x.jsonl", batch_size=0)


def test_message_batch_is_a_lazy_sequence_of_messages() -> None:

    a = [SimpleNamespace(value=b"a%d" % i, offset=10 + i) for i in range(3)]
    b = [SimpleNamespace(value=b"b%d" % i, offset=5 + i) for i in range(2)]
    batch = MessageBatch()
    batch.add("t", 0, a)
    batch.add("t", 0, [])  # an empty partition adds nothing
    batch.add("u", 3, b)
    assert len(batch) == 5 and batch.values == [b"a0", b"a1", b"a2", b"b0", b"b1"]
    assert batch[3] == Message(b"b0", "u", 3, 5) and batch[-1] == Message(b"b1", "u", 3, 6)
    assert batch[1:3] == [Message(b"a1", "t", 0, 11), Message(b"a2", "t", 0, 12)]
    assert list(batch) == [batch[i] for i in range(5)] and list(batch) is not None
    assert batch.last_offsets() == {("t", 0): 12, ("u", 3): 6}
    with pytest.raises(IndexError):
        batch[5]
    assert not MessageBatch()


def _fetched(tp: Any, values: list[bytes], first_offset: int) -> Any:
    """A fetched, buffered partition as aiokafka's fetcher keeps it (real record batch bytes)."""
    from aiokafka.consumer.fetcher import FetchResult, PartitionRecords
    from aiokafka.record.default_records import DefaultRecordBatchBuilder
    from aiokafka.record.memory_records import MemoryRecords

    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for i, v in enumerate(values):
        builder.append(i, timestamp=None, key=None, value=v, headers=[])
    raw = bytearray(builder.build())
    raw[0:8] = first_offset.to_bytes(8, "big")  # the batch's base offset, as the broker assigns it
    records = PartitionRecords(tp, MemoryRecords(bytes(raw)), [], first_offset, None, None, True, 0)
    assignment = SimpleNamespace(
        active=True,
        state_value=lambda _tp: SimpleNamespace(
            paused=False, position=records.next_fetch_offset, consumed_to=lambda o: None
        ),
    )
    return FetchResult(tp, assignment=assignment, partition_records=records, backoff=0)


def test_buffered_records_reach_the_batch_without_a_consumer_record_each() -> None:
    import collections

    from aiokafka import TopicPartition

    from watcher.kafka.fast_fetch import FetchPath, tune_fetcher

    t0, t1 = TopicPartition("t", 0), TopicPartition("t", 1)
    fetcher = SimpleNamespace(
        _records=collections.OrderedDict([(t0, _fetched(t0, [b"a", b"b"], 40))]),
        _key_deserializer=None,
        _value_deserializer=None,
        _isolation_level=0,
    )
    assert tune_fetcher(SimpleNamespace(_fetcher=fetcher)).path is FetchPath.BULK
    fetcher._records[t1] = _fetched(t1, [b"c"], 7)  # a buffer arriving later (while getmany waits)
    batch = MessageBatch()
    for tp in (t0, t1):
        records = fetcher._records[tp].getall(100)
        assert records and not any(isinstance(r, ConsumerRecord) for r in records)
        batch.add(tp.topic, tp.partition, records)
    assert batch.values == [b"a", b"b", b"c"]
    assert batch.last_offsets() == {("t", 0): 41, ("t", 1): 7}
    assert list(batch) == [Message(b"a", "t", 0, 40), Message(b"b", "t", 0, 41), Message(b"c", "t", 1, 7)]

    # with a value deserializer the client's own records are kept (they carry the deserialised value)
    fetcher = SimpleNamespace(
        _records=collections.OrderedDict([(t0, _fetched(t0, [b"a"], 0))]),
        _key_deserializer=None,
        _value_deserializer=bytes.upper,
        _isolation_level=0,
    )
    assert tune_fetcher(SimpleNamespace(_fetcher=fetcher)).path is FetchPath.STOCK
    assert isinstance(fetcher._records[t0].getall(10)[0], ConsumerRecord)
    assert tune_fetcher(SimpleNamespace()).path is FetchPath.STOCK  # another client layout: no error


def test_a_batch_splits_per_partition_number_without_what_the_state_holds() -> None:

    msgs = [Message(b"t0-%d" % i, "telemetry", 0, 10 + i) for i in range(5)]
    msgs += [Message(b"t1-%d" % i, "telemetry", 1, i) for i in range(3)]
    msgs += [Message(b"d0-%d" % i, "deployments", 0, 7 + i) for i in range(2)]
    batch = MessageBatch.of(msgs)
    assert batch.values == [m.value for m in msgs] and batch.last_offsets()[("telemetry", 0)] == 14

    since = {("telemetry", 0): 12, ("telemetry", 1): 3, ("deployments", 0): None}
    parts = batch.by_partition(lambda t, p: since[(t, p)])
    assert set(parts) == {0}  # partition 1 is wholly below its position
    assert parts[0].values == [b"t0-2", b"t0-3", b"t0-4", b"d0-0", b"d0-1"]
    assert [(m.topic, m.offset) for m in parts[0]] == [
        ("telemetry", 12),
        ("telemetry", 13),
        ("telemetry", 14),
        ("deployments", 7),
        ("deployments", 8),
    ]
    assert {p: part.values for p, part in batch.by_partition().items()} == {
        0: [m.value for m in msgs if m.partition == 0],
        1: [b"t1-0", b"t1-1", b"t1-2"],
    }
