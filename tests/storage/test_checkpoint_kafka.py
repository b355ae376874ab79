"""The Kafka checkpoint store, against the real broker: chunked, one write id per changed part,
unchanged parts kept, shared between instances, safe against a second (zombie) writer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from watcher.errors import CheckpointError
from watcher.storage.checkpoint import Checkpoint
from watcher.storage.kafka_checkpoints import KafkaCheckpointStore


def _checkpoint(n: int, marker: str) -> Checkpoint:
    # a few KB of poorly compressible state, so small chunks cut it into many records
    rows = [[marker, i, (i * 7919) % 10007 / 10007.0] for i in range(n)]
    return Checkpoint(
        {"v": 1, "rows": rows}, {("telemetry", 3): 100 + n}, written_at=1.7e9 + n, owner="group"
    )


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


async def _send(broker, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key, partition=0)
    finally:
        await producer.stop()


async def test_only_changed_parts_are_sent_and_the_others_kept(stores) -> None:
    a, b = stores
    big = [[i, (i * 7919) % 10007 / 10007.0] for i in range(3000)]
    await asyncio.to_thread(
        a.save, Checkpoint({"big": big, "small": 1}, {("t", 0): 1}, 1.0, "g"), "partition-4"
    )
    sent = await asyncio.to_thread(
        a.save, Checkpoint({"small": 2}, {("t", 0): 2}, 2.0, "g", frozenset({"big"})), "partition-4"
    )
    assert sent < 1000  # the big part stays where it is
    assert await asyncio.to_thread(b.load, "partition-4") == Checkpoint(
        {"big": big, "small": 2}, {("t", 0): 2}, 2.0, "g"
    )
    with pytest.raises(CheckpointError, match="kept parts"):
        await asyncio.to_thread(
            b.save, Checkpoint({}, {("t", 0): 3}, 3.0, "g", frozenset({"nope"})), "partition-4"
        )
    # the replaced part's chunks are tombstoned, the kept part's are not
    live = {k for k in a._view if k.startswith("partition-4#")}
    manifest = json.loads(a._view["partition-4"])
    assert live == {
        f"partition-4#{e['write']}#{i}" for e in manifest["parts"].values() for i in range(e["chunks"])
    }


async def test_a_writer_dying_half_way_leaves_the_previous_checkpoint_intact(stores, broker) -> None:
    a, b = stores
    cp = _checkpoint(3000, "kept")
    await asyncio.to_thread(a.save, cp, "partition-0")
    # a crash after some chunks of the next checkpoint and before its manifest: they sit under a
    # write id of their own, the manifest still points at the intact chunks
    await _send(broker, a.topic, [(f"partition-0#deadbeef#{i}".encode(), b"garbage") for i in range(3)])
    assert await asyncio.to_thread(b.load, "partition-0") == cp


async def test_a_zombie_writer_cannot_corrupt_the_owners_checkpoint(stores, broker) -> None:
    owner, zombie = stores
    await asyncio.to_thread(owner.save, _checkpoint(2000, "first"), "partition-5")
    assert await asyncio.to_thread(zombie.load, "partition-5") is not None  # the zombie's view: "first"
    second = _checkpoint(2500, "second")
    await asyncio.to_thread(owner.save, second, "partition-5")  # the partition moved on
    stale = _checkpoint(2200, "zombie")  # the paused instance wakes up and checkpoints once more
    await asyncio.to_thread(zombie.save, stale, "partition-5")
    reader = KafkaCheckpointStore(broker.bootstrap_servers, owner.topic, chunk_bytes=owner.chunk_bytes)
    try:
        # whichever manifest landed last is whole: here the zombie's, a consistent checkpoint
        assert await asyncio.to_thread(reader.load, "partition-5") == stale
        third = _checkpoint(2600, "third")
        await asyncio.to_thread(owner.save, third, "partition-5")
        assert await asyncio.to_thread(reader.load, "partition-5") == third

        # replaced checkpoints' chunks are tombstoned by their replacer; the zombie's one write is
        # replaced by a writer that never knew it, so its chunks stay (one write's worth, bounded)
        def chunks(store: KafkaCheckpointStore) -> set[str]:
            m = json.loads(store._view["partition-5"])
            return {f"partition-5#{e['write']}#{i}" for e in m["parts"].values() for i in range(e["chunks"])}

        live = {k for k in reader._view if k.startswith("partition-5#")}
        assert live == chunks(reader) | chunks(zombie)
    finally:
        reader.close()


async def test_a_version_1_checkpoint_is_still_read(stores, broker) -> None:
    import hashlib
    import zlib

    a, b = stores
    assert await asyncio.to_thread(a.load, "partition-7") is None  # the topic exists, as the store made it
    cp = _checkpoint(100, "old")
    document = json.dumps(  # a checkpoint of watcher before #13: one JSON document
        {
            "v": 1,
            "owner": cp.owner,
            "written_at": cp.written_at,
            "offsets": {"telemetry": {"3": 200}},
            "engine": cp.engine,
        }
    ).encode()
    manifest = {
        "v": 1,
        "slot": 1,
        "chunks": 1,
        "bytes": len(document),
        "sha256": hashlib.sha256(document).hexdigest(),
        "written_at": cp.written_at,
    }
    await _send(
        broker,
        a.topic,
        [(b"partition-7#1#0", zlib.compress(document)), (b"partition-7", json.dumps(manifest).encode())],
    )
    assert await asyncio.to_thread(b.load, "partition-7") == Checkpoint(
        cp.engine, {("telemetry", 3): 200}, cp.written_at, cp.owner
    )
    await asyncio.to_thread(b.save, _checkpoint(120, "new"), "partition-7")  # replaces it in the new format
    assert await asyncio.to_thread(a.load, "partition-7") == _checkpoint(120, "new")


async def test_a_manifest_that_does_not_match_its_chunks_is_an_error_not_a_wrong_state(
    stores, broker
) -> None:
    a, b = stores
    await asyncio.to_thread(a.save, _checkpoint(500, "x"), "partition-2")
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    await producer.start()
    try:
        manifest = json.loads(a._view["partition-2"])
        write = manifest["parts"]["rows"]["write"]
        await producer.send_and_wait(a.topic, b"tampered", key=f"partition-2#{write}#0".encode())
        await producer.send_and_wait(a.topic, b'{"v": 9}', key=b"partition-9")
    finally:
        await producer.stop()
    with pytest.raises(CheckpointError, match="decompress|do not match"):
        await asyncio.to_thread(b.load, "partition-2")
    with pytest.raises(CheckpointError, match="manifest"):
        await asyncio.to_thread(b.load, "partition-9")


def test_an_unreachable_broker_is_a_checkpoint_error() -> None:
    store = KafkaCheckpointStore(
        "127.0.0.1:1", "watcher.checkpoints", timeout_s=3.0, client_options={"request_timeout_ms": 1000}
    )
    try:
        with pytest.raises(CheckpointError, match="watcher.checkpoints"):
            store.load("partition-0")
    finally:
        store.close()
