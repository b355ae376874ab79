"""Hand-over when the checkpoint store cannot be reached at take-over: the partition waits, paused,
and is restored once the store answers (never taken over with a fresh state that would then
overwrite its checkpoint). Unit level, and a daemon against the real broker."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from tests.support.daemon import daemon_settings as _settings
from tests.support.daemon import until as _until
from watcher.config import load_settings
from watcher.engine import Engine
from watcher.engine.tasks import Tasks
from watcher.errors import CheckpointUnavailable
from watcher.kafka import Message
from watcher.kafka.embedded import TopicSpec, create_topics
from watcher.service.compose import build_daemon
from watcher.service.daemon import Daemon
from watcher.service.handover import Handover
from watcher.service.replay import replay
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate
from watcher.storage.checkpoint import Checkpoint, MemoryCheckpointStore


class FlakyStore:
    """A store that is unreachable for its first ``failures`` loads."""

    def __init__(self, inner: MemoryCheckpointStore, failures: int) -> None:
        self.inner, self.failures, self.loads = inner, failures, 0

    def load(self, scope: str = "all") -> Checkpoint | None:
        self.loads += 1
        if self.loads <= self.failures:
            raise CheckpointUnavailable("store unreachable (test)")
        return self.inner.load(scope)

    def save(self, cp: Checkpoint, scope: str = "all") -> int:
        return self.inner.save(cp, scope)

    def close(self) -> None:
        return None


def _lines() -> list[bytes]:
    return list(generate(dataclasses.replace(PRESETS["demo"], duration_s=300.0, conversations_per_s=5.0)))


def test_an_unreachable_store_makes_the_partition_wait_not_start_fresh() -> None:
    settings = load_settings(environ={})
    lines = _lines()
    store = MemoryCheckpointStore()
    first = Handover(Tasks(lambda: Engine(settings)), store, owner="g", interval_s=0.0)
    first.take_over([0])
    first.advance(first.process([Message(v, "t", 0, i) for i, v in enumerate(lines[:1000])])[1])
    for cp in first.leaving([0]):
        cp.save()

    flaky = FlakyStore(store, failures=2)
    second = Handover(Tasks(lambda: Engine(settings)), flaky, owner="g", interval_s=0.0)
    assert second.take_over([0]) == [] and second.waiting == {0}
    assert second.tasks.get(0) is None and second.checkpointers == {}
    result, covered = second.process([Message(v, "t", 0, 1000 + i) for i, v in enumerate(lines[1000:1100])])
    assert result.turns == 0 and covered == {}  # no state to apply them to: not consumed
    assert second.take_over(set(second.waiting)) == [] and second.waiting == {0}  # still unreachable
    assert second.take_over(set(second.waiting)) == [0] and second.waiting == set()
    assert second.resume_offset("t", 0) == 1000  # the checkpoint's, not a fresh start
    assert second.release([0]) == [0]


async def test_a_daemon_pauses_the_partition_and_resumes_it_from_its_checkpoint(
    broker, unique_topic, tmp_path: Path
) -> None:
    lines = _lines()
    path = tmp_path / "all.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    _, expected_engine = replay(path)
    expected = sum(expected_engine.state.snapshot(k).turns for k in expected_engine.state.keys() if not k[4])
    topics = {
        "telemetry": unique_topic("telemetry"),
        "deployments": unique_topic("deployments"),
        "deadletter": unique_topic("deadletter"),
    }
    await create_topics(
        broker.bootstrap_servers,
        [TopicSpec(topics["telemetry"]), TopicSpec(topics["deployments"]), TopicSpec(topics["deadletter"])],
    )
    store = MemoryCheckpointStore()

    async def produce(values: list[bytes]) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all", linger_ms=5)
        await producer.start()
        try:
            for v in values:
                await producer.send(topics["telemetry"], v, key=b"support-bot")
            await producer.flush()
        finally:
            await producer.stop()

    def handover(daemon: Daemon) -> Handover:
        assert daemon.checkpoints is not None and daemon.checkpoints.handover is not None
        return daemon.checkpoints.handover

    def turns(daemon: Daemon) -> int:
        engine: Any = daemon.engine
        return sum(engine.state.snapshot(k).turns for k in engine.state.keys() if not k[4])

    async def run(daemon: Daemon, until: Any) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        try:
            await _until(until, 40)
        finally:
            stop.set()
            await task

    half = len(lines) // 2
    await produce(lines[:half])
    settings = _settings(
        broker, tmp_path, topics, **{"checkpoint.scope": "partition", "checkpoint.interval_s": 0.5}
    )
    first = build_daemon(settings, checkpoint_store=store)
    await run(first, lambda: first.events_consumed >= half)
    first_expected = turns(first)
    assert 0 < first_expected < expected

    await produce(lines[half:])
    flaky = FlakyStore(store, failures=2)
    (tmp_path / "b").mkdir()
    second = build_daemon(
        _settings(
            broker, tmp_path / "b", topics, **{"checkpoint.scope": "partition", "checkpoint.interval_s": 0.5}
        ),
        checkpoint_store=flaky,
    )
    await run(
        second,
        lambda: not handover(second).waiting and turns(second) >= expected,
    )
    assert flaky.loads >= 3  # waited through two unreachable reads
    assert turns(second) == expected  # restored, not fresh: the first half counted once, the rest too
