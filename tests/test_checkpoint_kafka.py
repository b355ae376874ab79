"""The Kafka checkpoint store, against the real broker: chunked, slotted, shared between instances."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from watcher.checkpoint import Checkpoint
from watcher.checkpoint_kafka import KafkaCheckpointStore
from watcher.errors import CheckpointError


def _checkpoint(n: int, marker: str) -> Checkpoint:
    # a few KB of poorly compressible state, so small chunks cut it into many records
    rows = [[marker, i, (i * 7919) % 10007 / 10007.0] for i in range(n)]
    return Checkpoint({"v": 1, "rows": rows}, {("telemetry", 3): 100 + n}, written_at=1.7e9 + n, owner="group")


@pytest.fixture
def stores(broker, unique_topic) -> Iterator[tuple[KafkaCheckpointStore, KafkaCheckpointStore]]:
    topic = unique_topic("checkpoints")
    a = KafkaCheckpointStore(broker.bootstrap_servers, topic, chunk_bytes=2048)
    b = KafkaCheckpointStore(broker.bootstrap_servers, topic, chunk_bytes=2048)
    yield a, b
    a.close()
    b.close()


async def test_a_checkpoint_round_trips_in_chunks_and_another_instance_reads_it(stores) -> None:
    a, b = stores
    assert await asyncio.to_thread(a.load, "partition-3") is None
    cp = _checkpoint(3000, "first")
    size = await asyncio.to_thread(a.save, cp, "partition-3")
    assert size > 10 * a.chunk_bytes  # many chunks
    got = await asyncio.to_thread(b.load, "partition-3")  # a second instance, own view of the topic
    assert got == cp
    assert await asyncio.to_thread(b.load, "partition-1") is None  # other scopes are separate

    # b takes the partition over and checkpoints it: a (say, after a rebalance back) reads b's
    newer = _checkpoint(2000, "second")
    await asyncio.to_thread(b.save, newer, "partition-3")
    assert await asyncio.to_thread(a.load, "partition-3") == newer


async def test_a_writer_dying_half_way_leaves_the_previous_checkpoint_intact(stores, broker) -> None:
    a, b = stores
    cp = _checkpoint(3000, "kept")
    await asyncio.to_thread(a.save, cp, "partition-0")
    # a crash after some chunks of the next checkpoint and before its manifest: the chunks land in
    # the other slot, the manifest still points at the intact one
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    await producer.start()
    try:
        manifest = json.loads(await asyncio.to_thread(lambda: a._view["partition-0"]))
        free = 1 - manifest["slot"]
        for i in range(3):
            await producer.send_and_wait(a.topic, b"garbage", key=f"partition-0#{free}#{i}".encode())
    finally:
        await producer.stop()
    assert await asyncio.to_thread(b.load, "partition-0") == cp


async def test_a_manifest_that_does_not_match_its_chunks_is_an_error_not_a_wrong_state(stores, broker) -> None:
    a, b = stores
    await asyncio.to_thread(a.save, _checkpoint(500, "x"), "partition-2")
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    await producer.start()
    try:
        manifest = json.loads(a._view["partition-2"])
        await producer.send_and_wait(a.topic, b"tampered", key=f"partition-2#{manifest['slot']}#0".encode())
        await producer.send_and_wait(a.topic, b'{"v": 9}', key=b"partition-9")
    finally:
        await producer.stop()
    with pytest.raises(CheckpointError, match="decompress|do not match"):
        await asyncio.to_thread(b.load, "partition-2")
    with pytest.raises(CheckpointError, match="manifest"):
        await asyncio.to_thread(b.load, "partition-9")


def test_an_unreachable_broker_is_a_checkpoint_error() -> None:
    store = KafkaCheckpointStore("127.0.0.1:1", "watcher.checkpoints", timeout_s=3.0,
                                 client_options={"request_timeout_ms": 1000})
    try:
        with pytest.raises(CheckpointError, match="watcher.checkpoints"):
            store.load("partition-0")
    finally:
        store.close()
