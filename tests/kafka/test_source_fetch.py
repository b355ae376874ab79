"""watcher.kafka.fast_fetch: fetched record batches taken whole, with exactly aiokafka's positions.

Two kinds of test: the bulk ``getall`` against aiokafka's own on identical buffers of real record
batch bytes (control batches, compacted gaps, a fetch offset inside a batch, a bad CRC), call by
call; and ``KafkaSource`` against the embedded broker (max_records cutting fetches, seek, pause,
a rebalance with buffered data, restart, the stock path when the layout is not the expected one).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import struct
from collections.abc import Awaitable, Callable, Collection, Mapping
from contextlib import aclosing
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.consumer.fetcher import FetchResult, PartitionRecords
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.legacy_records import LegacyRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import ConsumerRecord

from watcher.kafka import KafkaSource, Message, MessageBatch, fast_fetch
from watcher.kafka.embedded import EmbeddedBroker
from watcher.kafka.fast_fetch import FetchPath, tune_fetcher
from watcher.kafka.rebalance import NullPartitionListener, Partitions

Produce = Callable[..., Awaitable[list[tuple[int, int]]]]
TP = TopicPartition("t", 0)


# -- buffers of real record batch bytes -------------------------------------------------------------
def _batch(
    base: int,
    deltas: list[int],
    *,
    control: bool = False,
    last_delta: int | None = None,
    empty: bool = False,
    bad_crc: bool = False,
) -> bytes:
    """One v2 record batch: records at ``base + delta``; ``last_delta`` overrides the header's last
    offset delta (a compacted batch whose last records are gone), ``empty`` drops every record (the
    batch keeps its offsets), ``control`` marks a control batch."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for d in deltas:
        builder.append(d, timestamp=1, key=None, value=b"v%d" % (base + d), headers=[])
    raw = bytearray(builder.build())
    if empty:
        del raw[61:]  # the v2 header is 61 bytes; then the records
        struct.pack_into(">i", raw, 57, 0)  # record count
        struct.pack_into(">i", raw, 8, len(raw) - 12)  # batch length
    struct.pack_into(">q", raw, 0, base)
    if control:
        struct.pack_into(">h", raw, 21, struct.unpack_from(">h", raw, 21)[0] | 0x20)
    if last_delta is not None:
        struct.pack_into(">i", raw, 23, last_delta)
    struct.pack_into(">I", raw, 17, calc_crc32c(bytes(raw[21:])))
    if bad_crc:
        raw[-1] ^= 0xFF
    return bytes(raw)


def _legacy(base: int, n: int, *, compressed: bool) -> bytes:
    """Magic v1 messages as a broker stores them: ``n`` plain messages, or one gzip wrapper whose
    offset is its last inner record's (the inner offsets are relative)."""
    if not compressed:
        out = b""
        for i in range(n):
            builder = LegacyRecordBatchBuilder(1, 0, 1 << 20)
            builder.append(0, timestamp=1, key=None, value=b"v%d" % (base + i))
            raw = bytearray(builder.build())
            struct.pack_into(">q", raw, 0, base + i)
            out += bytes(raw)
        return out
    builder = LegacyRecordBatchBuilder(1, LegacyRecordBatchBuilder.CODEC_GZIP, 1 << 20)
    for i in range(n):
        builder.append(i, timestamp=1, key=None, value=b"v%d" % (base + i))
    raw = bytearray(builder.build())
    struct.pack_into(">q", raw, 0, base + n - 1)
    return bytes(raw)


class _TpState:
    def __init__(self, position: int) -> None:
        self.position = position
        self.paused = False

    def consumed_to(self, offset: int) -> None:
        self.position = offset


def _result(raw: bytes, fetch_offset: int, *, check_crcs: bool = True) -> tuple[FetchResult, _TpState]:
    state = _TpState(fetch_offset)
    assignment = SimpleNamespace(active=True, state_value=lambda _tp: state)
    records = PartitionRecords(TP, MemoryRecords(raw), [], fetch_offset, None, None, check_crcs, 0)
    return FetchResult(TP, assignment=assignment, partition_records=records, backoff=0), state


def _tuned(raw: bytes, fetch_offset: int, **kw: Any) -> tuple[FetchResult, _TpState]:
    """The same buffer as a bulk-tuned consumer's fetcher holds it."""
    fetcher = SimpleNamespace(
        _records=collections.OrderedDict(),
        _key_deserializer=None,
        _value_deserializer=None,
        _isolation_level=0,
    )
    assert tune_fetcher(SimpleNamespace(_fetcher=fetcher)).path is FetchPath.BULK
    result, state = _result(raw, fetch_offset, **kw)
    fetcher._records[TP] = result
    assert "getall" in vars(result)
    return result, state


def _step(result: FetchResult, state: _TpState, max_records: int | None) -> tuple[Any, ...]:
    """One getall as the fetcher makes it, and everything aiokafka can observe afterwards."""
    try:
        got = [(r.offset, r.value) for r in result.getall(max_records)]
    except CorruptRecordException as exc:
        got = [f"raised {exc}"]  # type: ignore[list-item]
    pr = result._partition_records
    return got, state.position, result.has_more(), pr.next_fetch_offset if pr is not None else None


def _layouts(rng: random.Random) -> tuple[bytes, int]:
    """A fetch response of several record batches: plain, compacted (gaps, missing tail, emptied),
    control, or magic v1 messages; and a fetch offset that may fall inside the first batch."""
    raw, base = b"", rng.randrange(0, 50)
    first = base
    # magic v1 messages (plain, or gzip wrappers) in some responses; the client reads no mix of both
    kinds = (
        ["legacy", "legacy_gzip"]
        if rng.random() < 0.2
        else ["plain", "plain", "gaps", "tail", "control", "empty"]
    )
    for _ in range(rng.randrange(1, 6)):
        kind = rng.choice(kinds)
        n = rng.randrange(1, 30)
        if kind == "plain":
            raw += _batch(base, list(range(n)))
            base += n
        elif kind == "gaps":
            deltas = sorted(rng.sample(range(2 * n), n))
            raw += _batch(base, deltas)
            base += deltas[-1] + 1
        elif kind == "tail":  # compaction removed the last records: next_offset beyond the last one
            raw += _batch(base, list(range(n)), last_delta=n + 4)
            base += n + 5
        elif kind == "control":
            raw += _batch(base, [0], control=True)
            base += 1
        elif kind == "empty":  # every record compacted away; the batch keeps its offsets
            raw += _batch(base, [0], last_delta=n, empty=True)
            base += n + 1
        else:
            raw += _legacy(base, n, compressed=kind == "legacy_gzip")
            base += n
    return raw, first + rng.randrange(0, 4)


def test_bulk_getall_matches_aiokafka_call_by_call() -> None:
    rng = random.Random(20240611)
    cuts = 0
    for _ in range(300):
        raw, fetch_offset = _layouts(rng)
        stock, stock_state = _result(raw, fetch_offset)
        bulk, bulk_state = _tuned(raw, fetch_offset)
        while stock.has_more() or bulk.has_more():
            n = rng.choice([None, 1, 2, 3, 5, 8, 13, 40])
            expected = _step(stock, stock_state, n)
            assert _step(bulk, bulk_state, n) == expected
            cuts += bool(expected[2] and expected[0])
        assert "getall" not in vars(bulk)  # used up: the bound method (a reference cycle) is gone
        assert bulk_state.position == stock_state.position
    assert cuts > 100  # max_records cut many buffers (often inside a record batch)


def test_a_cut_after_a_batch_s_last_record_leaves_the_position_there_as_aiokafka_does() -> None:
    raw = _batch(10, [0, 1, 2], last_delta=6) + _batch(17, [0, 1])  # 13..16 compacted away
    bulk, state = _tuned(raw, 10)
    assert _step(bulk, state, 3) == ([(10, b"v10"), (11, b"v11"), (12, b"v12")], 13, True, 13)
    assert _step(bulk, state, 3) == ([(17, b"v17"), (18, b"v18")], 19, False, None)


def test_records_below_the_fetch_offset_and_control_batches_are_skipped() -> None:
    raw = _batch(0, list(range(5))) + _batch(5, [0], control=True) + _batch(6, [0, 3, 4])
    bulk, state = _tuned(raw, 3)
    got, position, more, _ = _step(bulk, state, None)
    assert got == [(3, b"v3"), (4, b"v4"), (6, b"v6"), (9, b"v9"), (10, b"v10")]
    assert (position, more) == (11, False)


def test_a_bad_crc_raises_where_aiokafka_raises_and_ends_the_buffer() -> None:
    raw = _batch(0, [0, 1, 2]) + _batch(3, [0, 1], bad_crc=True)
    for check in (True, False):
        stock, stock_state = _result(raw, 0, check_crcs=check)
        bulk, bulk_state = _tuned(raw, 0, check_crcs=check)
        steps = []
        while stock.has_more():
            steps.append(_step(stock, stock_state, 2))
            assert _step(bulk, bulk_state, 2) == steps[-1]
        assert not bulk.has_more()
        errors = [g[0] for g, *_ in steps if g and isinstance(g[0], str)]
        assert len(errors) == 1  # without the CRC check: the corrupt record itself, after the good ones
        assert ("Invalid CRC - " in errors[0]) == check


def test_aiokafka_s_per_record_calls_still_work_on_a_bulk_buffer() -> None:
    raw = _batch(0, list(range(6))) + _batch(6, [0, 1])
    bulk, state = _tuned(raw, 0)
    assert [(r.offset, r.value) for r in bulk.getall(4)] == [(i, b"v%d" % i) for i in range(4)]
    one = FetchResult.getone(bulk)  # aiokafka's getone: next() on the records, from where bulk left off
    assert (one.offset, state.position) == (4, 5)
    assert [r.offset for r in FetchResult.getall(bulk, 2)] == [5, 6]  # aiokafka's own getall too
    assert [r.offset for r in bulk.getall(None)] == [7] and not bulk.has_more()


def test_a_buffer_already_read_by_aiokafka_stays_on_aiokafka_s_path() -> None:
    raw = _batch(0, list(range(6)))
    bulk, state = _tuned(raw, 0)
    assert FetchResult.getone(bulk).offset == 0  # the stock generator has started
    assert [r.offset for r in bulk.getall(3)] == [1, 2, 3]
    assert "getall" not in vars(bulk)  # handed back to aiokafka's getall
    assert not isinstance(bulk._partition_records._records_iterator, fast_fetch._BulkRecords)
    assert [r.offset for r in bulk.getall(None)] == [4, 5] and state.position == 6


def test_a_paused_or_sought_partition_s_buffer_is_dropped() -> None:
    raw = _batch(0, list(range(10)))
    bulk, state = _tuned(raw, 0)
    assert len(bulk.getall(3)) == 3
    state.paused = True
    assert bulk.getall(3) == [] and not bulk.has_more() and "getall" not in vars(bulk)
    bulk, state = _tuned(raw, 0)
    assert len(bulk.getall(3)) == 3
    state.position = 1  # a seek
    assert bulk.getall(3) == [] and not bulk.has_more()


def test_unexpected_layouts_keep_the_stock_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def fetcher(**kw: Any) -> SimpleNamespace:
        base = dict(
            _records=collections.OrderedDict(),
            _key_deserializer=None,
            _value_deserializer=None,
            _isolation_level=0,
        )
        return SimpleNamespace(_fetcher=SimpleNamespace(**{**base, **kw}))

    assert tune_fetcher(SimpleNamespace()).path is FetchPath.STOCK
    assert tune_fetcher(fetcher(_records={})).path is FetchPath.STOCK
    assert tune_fetcher(fetcher(_value_deserializer=bytes.upper)).path is FetchPath.STOCK
    assert tune_fetcher(fetcher(_isolation_level=1)).path is FetchPath.BARE  # read_committed

    # aiokafka's code is not the one this was written against
    changed = dict(fast_fetch._EXPECTED_NAMES)
    changed[("PartitionRecords", "_unpack_records")] |= {"something_new"}
    monkeypatch.setattr(fast_fetch, "_EXPECTED_NAMES", changed)
    monkeypatch.setattr(fast_fetch, "_CLIENT", None)
    consumer = fetcher()
    tuning = tune_fetcher(consumer)
    assert tuning.path is FetchPath.BARE and "_unpack_records" in tuning.reason
    result, _ = _result(_batch(3, [0, 1]), 3)
    consumer._fetcher._records[TP] = result
    assert "getall" not in vars(result)
    records = result.getall(10)  # aiokafka's loop, without a ConsumerRecord per record
    assert [r.offset for r in records] == [3, 4] and not isinstance(records[0], ConsumerRecord)


def test_buffers_fetched_before_tuning_are_included() -> None:
    early, _ = _result(_batch(40, [0, 1]), 40)
    fetcher = SimpleNamespace(
        _records=collections.OrderedDict([(TP, early)]),
        _key_deserializer=None,
        _value_deserializer=None,
        _isolation_level=0,
    )
    assert tune_fetcher(SimpleNamespace(_fetcher=fetcher)).path is FetchPath.BULK
    assert tune_fetcher(SimpleNamespace(_fetcher=fetcher)).reason == "already tuned"
    assert fetcher._records[TP] is early and "getall" in vars(early)
    batch = MessageBatch()
    batch.add("t", 0, early.getall(100))
    assert list(batch) == [Message(b"v40", "t", 0, 40), Message(b"v41", "t", 0, 41)]


# -- against the embedded broker ------------------------------------------------------------------
async def _take(
    source: KafkaSource,
    n: int,
    *,
    commit: bool = True,
    timeout: float = 20.0,
    each: Callable[[MessageBatch], Awaitable[None]] | None = None,
) -> list[Message]:
    got: list[Message] = []
    async with asyncio.timeout(timeout), aclosing(source.batches()) as stream:
        async for batch in stream:
            assert batch and len(batch) <= source.max_records
            got += list(batch)
            if commit:
                assert await source.commit(batch)
            if each is not None:
                await each(batch)
            if len(got) >= n:
                break
    return got


def _by_partition(messages: list[Message]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = collections.defaultdict(list)
    for m in messages:
        out[m.partition].append(m.offset)
    return dict(out)


async def test_max_records_smaller_than_a_fetch_every_offset_once_commits_and_restart_exact(
    broker: EmbeddedBroker, unique_topic: Callable[..., str], produce: Produce, kafka_options: dict[str, Any]
) -> None:
    topic, group = unique_topic(), unique_topic("group")
    await produce(topic, [b"a%d" % i for i in range(900)], partitions=3)
    source = KafkaSource(
        broker.bootstrap_servers, [topic], group, max_records=7, client_options=kafka_options
    )
    await source.start()
    positions_right: list[bool] = []

    async def check_positions(batch: MessageBatch) -> None:
        consumer = source._consumer
        assert consumer is not None
        for (t, p), last in batch.last_offsets().items():
            # the consumer's position is right after what it handed out, also when a fetch was cut
            positions_right.append(await consumer.position(TopicPartition(t, p)) == last + 1)

    got = await _take(source, 900, each=check_positions)
    assert source.fetch_path is FetchPath.BULK
    consumer = source._consumer
    assert consumer is not None
    committed = {p: await consumer.committed(TopicPartition(topic, p)) for p in range(3)}
    await source.stop()
    assert _by_partition(got) == {p: list(range(300)) for p in range(3)}
    assert [m.value for m in got if m.partition == 1] == [b"a%d" % i for i in range(1, 900, 3)]
    assert all(positions_right) and len(positions_right) > 120
    assert committed == {0: 300, 1: 300, 2: 300}

    await produce(topic, [b"b%d" % i for i in range(30)], partitions=3)
    again = KafkaSource(broker.bootstrap_servers, [topic], group, max_records=7, client_options=kafka_options)
    await again.start()
    resumed = await _take(again, 30)
    await again.stop()
    assert _by_partition(resumed) == {p: list(range(300, 310)) for p in range(3)}


async def test_seek_back_and_forth_while_records_are_buffered(
    broker: EmbeddedBroker, unique_topic: Callable[..., str], produce: Produce, kafka_options: dict[str, Any]
) -> None:
    topic = unique_topic()
    await produce(topic, [b"%d" % i for i in range(400)])
    source = KafkaSource(
        broker.bootstrap_servers, [topic], unique_topic("group"), max_records=10, client_options=kafka_options
    )
    await source.start()
    tp = TopicPartition(topic, 0)
    seen: list[list[int]] = []
    plan = iter([3, 250, 100])  # back inside what was handed out, forward past the buffer's position, back

    async def seek(batch: MessageBatch) -> None:
        seen.append([m.offset for m in batch])
        consumer = source._consumer
        assert consumer is not None
        target = next(plan, None)
        if target is not None:
            assert tp in consumer._fetcher._records  # the rest of the fetch is buffered
            consumer.seek(tp, target)

    await _take(source, 40 + 150, commit=False, each=seek)
    await source.stop()
    assert seen[:4] == [list(range(0, 10)), list(range(3, 13)), list(range(250, 260)), list(range(100, 110))]
    assert [o for b in seen[4:] for o in b][:20] == list(range(110, 130))


async def test_pause_and_resume_with_buffered_records_neither_skip_nor_repeat(
    broker: EmbeddedBroker, unique_topic: Callable[..., str], produce: Produce, kafka_options: dict[str, Any]
) -> None:
    topic = unique_topic()
    await produce(topic, [b"%d" % i for i in range(400)], partitions=2)
    source = KafkaSource(
        broker.bootstrap_servers, [topic], unique_topic("group"), max_records=15, client_options=kafka_options
    )
    await source.start()
    batches: list[MessageBatch] = []
    while_paused: list[int] = []

    async def pause_then_resume(batch: MessageBatch) -> None:
        batches.append(batch)
        if len(batches) == 2:
            source.pause_partitions([0])
        elif 2 < len(batches) <= 6:
            while_paused.extend(m.partition for m in batch)
            if len(batches) == 6:
                source.resume_partitions([0], lambda _t, _p: None)  # from its position: no seek

    got = await _take(source, 400, each=pause_then_resume)
    await source.stop()
    assert while_paused and set(while_paused) == {1}
    assert _by_partition(got) == {0: list(range(200)), 1: list(range(200))}


async def test_a_partition_revoked_with_buffered_records_is_not_handed_out_after(
    broker: EmbeddedBroker, unique_topic: Callable[..., str], produce: Produce, kafka_options: dict[str, Any]
) -> None:
    topic, group = unique_topic(), unique_topic("group")
    per_partition = 1500
    await produce(topic, [b"%d" % i for i in range(2 * per_partition)], partitions=2)
    # The first member's fetches bring whole partitions, handed out one after the other. The group
    # assigns partitions round-robin over the members sorted by id (which starts with the client
    # id): the second member's client id makes the partition the first one is reading move to it.
    first = KafkaSource(
        broker.bootstrap_servers,
        [topic],
        group,
        max_records=20,
        client_options={**kafka_options, "client_id": "m-first"},
    )
    members: list[KafkaSource] = []
    revoked: set[int] = set()  # the first member's partitions revoked and not assigned again
    rebalances: list[dict[int, int]] = []  # the first member's commits when its partitions were revoked
    committed: dict[int, int] = {}  # the first member's last successful commit per partition
    # the first member's commit in flight: a revocation can come while it awaits the broker, which
    # may then take it (the second member starts there) although the commit's answer is not in yet
    in_flight: dict[int, int] = {}
    in_flight_at_revocation: list[dict[int, int]] = []
    after_revocation: list[Message] = []
    got: dict[str, list[Message]] = {"first": [], "second": []}
    buffered_at_join: list[bool] = []
    buffered_at_revocation: list[set[int]] = []

    class Listener(NullPartitionListener):
        async def revoked(self, partitions: Partitions) -> Mapping[tuple[str, int], int]:
            revoked.update(p for _, p in partitions)
            rebalances.append(dict(committed))
            in_flight_at_revocation.append(dict(in_flight))
            consumer = first._consumer
            buffered_at_revocation.append(
                {tp.partition for tp in consumer._fetcher._records} if consumer else set()
            )
            return {}

        async def assigned(
            self, partitions: Partitions, partition_counts: Mapping[str, int | None]
        ) -> Collection[int]:
            revoked.difference_update(p for _, p in partitions)
            return ()

    async def run(name: str, source: KafkaSource) -> None:
        async with aclosing(source.batches()) as stream:
            async for batch in stream:
                if name == "first":
                    after_revocation.extend(m for m in batch if m.partition in revoked)
                got[name] += list(batch)
                offsets = {p: o + 1 for (_, p), o in batch.last_offsets().items()}
                if name == "first":
                    in_flight.update(offsets)
                if await source.commit(batch) and name == "first":
                    committed.update(offsets)
                if name == "first":
                    in_flight.clear()
                if name == "first" and not tasks[1:] and len(got["first"]) >= 100:
                    # the second member joins while the first holds the rest of a fetch
                    consumer = first._consumer
                    buffered_at_join.append(consumer is not None and bool(consumer._fetcher._records))
                    reading = got["first"][-1].partition
                    second = KafkaSource(
                        broker.bootstrap_servers,
                        [topic],
                        group,
                        max_records=20,
                        client_options={**kafka_options, "client_id": "az"[reading] + "-second"},
                    )
                    members.append(second)
                    await second.start()
                    tasks.append(asyncio.create_task(run("second", second)))
                if name == "first" and not rebalances:
                    await asyncio.sleep(0.1 if tasks[1:] else 0.02)  # slow: the rebalance comes mid-stream

    def everything_delivered() -> bool:
        seen = {(m.partition, m.offset) for name in got for m in got[name]}
        return len(seen) == 2 * per_partition and bool(got["second"])

    await first.start(Listener())
    tasks = [asyncio.create_task(run("first", first))]
    try:
        async with asyncio.timeout(45):
            while not everything_delivered():
                await asyncio.sleep(0.1)
    finally:
        for source in (first, *members):
            await source.stop()
        await asyncio.gather(*tasks)

    assert buffered_at_join == [True] and rebalances, "the group never rebalanced"
    assert [m.fetch_path for m in (first, *members)] == [FetchPath.BULK, FetchPath.BULK]
    assert after_revocation == []  # nothing of a revoked partition is handed out after revocation
    at_revocation, racing = rebalances[0], in_flight_at_revocation[0]
    moved = _by_partition(got["second"])
    assert len(moved) == 1
    for p, offsets in moved.items():
        # the second member starts exactly where the first one's commits ended; the first member
        # had records of that partition buffered (fetched, not handed out) when it was revoked
        assert p in buffered_at_revocation[0]
        assert offsets[0] in (at_revocation[p], racing.get(p)) and offsets[0] > 0
        assert offsets == list(range(offsets[0], per_partition))
    for p, offsets in _by_partition(got["first"]).items():
        # in order, without gaps; a partition assigned again resumes at its committed offset
        restarts = [i for i in range(1, len(offsets)) if offsets[i] != offsets[i - 1] + 1]
        assert all(offsets[i] in (at_revocation[p], racing.get(p)) for i in restarts), (
            p,
            [offsets[i] for i in restarts],
        )
        assert offsets[0] == 0


async def test_the_stock_path_is_used_when_aiokafka_is_not_the_expected_one(
    broker: EmbeddedBroker,
    unique_topic: Callable[..., str],
    produce: Produce,
    kafka_options: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = unique_topic()
    await produce(topic, [b"%d" % i for i in range(120)])
    monkeypatch.setattr(
        fast_fetch, "_CLIENT", "aiokafka's FetchResult.getall is not the code this was written against"
    )
    caplog.set_level(logging.DEBUG, logger="watcher.kafka.source")
    source = KafkaSource(
        broker.bootstrap_servers, [topic], unique_topic("group"), max_records=25, client_options=kafka_options
    )
    await source.start()
    got = await _take(source, 120)
    consumer = source._consumer
    assert consumer is not None
    buffered = list(consumer._fetcher._records.values())
    await source.stop()
    assert source.fetch_path is FetchPath.BARE
    assert "fetched records: bare path (aiokafka's FetchResult.getall is not" in caplog.text
    assert all("getall" not in vars(r) for r in buffered)
    assert [m.offset for m in got] == list(range(120))

    # a consumer that deserialises values: aiokafka's records, untouched
    options = {**kafka_options, "value_deserializer": bytes.decode}
    plain = KafkaSource(
        broker.bootstrap_servers, [topic], unique_topic("group"), max_records=50, client_options=options
    )
    await plain.start()
    got = await _take(plain, 120)
    await plain.stop()
    assert plain.fetch_path is FetchPath.STOCK
    assert [m.value for m in got] == [str(i) for i in range(120)]
