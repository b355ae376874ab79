"""The state's side of rebalances (watcher.service.partitions), without a broker: what the listeners
answer the source (offsets to commit, partitions to hold, offsets to resume at) and what they keep."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from prometheus_client import CollectorRegistry

from watcher.backoff import Backoff
from watcher.clock import ManualClock
from watcher.config import load_settings
from watcher.engine import Engine, Tasks
from watcher.errors import CheckpointError, CheckpointUnavailable
from watcher.kafka import Message
from watcher.service.handover import Handover, HandoverMetrics
from watcher.service.partitions import Checkpoints, InstancePartitions, TaskPartitions
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate
from watcher.storage.checkpoint import Checkpoint, MemoryCheckpointStore
from watcher.storage.checkpointer import Checkpointer, CheckpointMetrics

LINES = list(generate(dataclasses.replace(PRESETS["demo"], duration_s=120.0, conversations_per_s=4.0)))


class Store(MemoryCheckpointStore):
    """Memory, with scopes whose saves fail (a full disk) and loads that find the store unreachable."""

    def __init__(self) -> None:
        super().__init__()
        self.failing_saves: set[str] = set()
        self.unreachable = 0  # loads that fail before the store answers again

    def save(self, cp: Checkpoint, scope: str = "all") -> int:
        if scope in self.failing_saves:
            raise CheckpointError(f"disk full ({scope})")
        return super().save(cp, scope)

    def load(self, scope: str = "all") -> Checkpoint | None:
        if self.unreachable:
            self.unreachable -= 1
            raise CheckpointUnavailable("store unreachable (test)")
        return super().load(scope)


def _tasks(store: Store, registry: CollectorRegistry, clock: ManualClock) -> TaskPartitions:
    settings = load_settings(environ={})
    metrics = HandoverMetrics(registry)
    handover = Handover(
        Tasks(lambda: Engine(settings)), store, owner="g", interval_s=0.0, handover_metrics=metrics
    )
    checkpoints = Checkpoints(store, CheckpointMetrics(registry), handover=handover)
    return TaskPartitions(
        handover,
        checkpoints,
        asyncio.Lock(),
        telemetry_topic="t",
        retry=Backoff(initial_s=1.0, max_s=30.0, jitter=0.0),
        clock=clock,
    )


def _feed(partitions: TaskPartitions, partition: int, start: int, n: int) -> None:
    batch = [Message(v, "t", partition, start + i) for i, v in enumerate(LINES[start : start + n])]
    result, covered = partitions.handover.process(batch)
    assert result.turns > 0
    partitions.checkpoints.advance_tasks(covered)


async def test_revoked_partitions_are_checkpointed_and_exactly_their_offsets_returned() -> None:
    store, registry = Store(), CollectorRegistry()
    partitions = _tasks(store, registry, ManualClock())
    assert await partitions.assigned({("t", 0), ("t", 1)}, {"t": 2}) == set()
    _feed(partitions, 0, 0, 300)
    _feed(partitions, 1, 300, 200)

    offsets = await partitions.revoked({("t", 1)})
    assert offsets == {("t", 1): 500}  # partition 1's, none of partition 0's
    assert store.load("partition-1") is not None and store.load("partition-0") is None
    assert partitions.handover.tasks.get(1) is None and partitions.handover.tasks.get(0) is not None
    assert registry.get_sample_value("watcher_partition_handovers_total", {"kind": "released"}) == 1
    assert registry.get_sample_value("watcher_partitions") == 2
    assert await partitions.revoked({("t", 7)}) == {}  # never owned: nothing to commit


async def test_a_failed_checkpoint_commits_nothing_for_its_partition() -> None:
    store, registry = Store(), CollectorRegistry()
    partitions = _tasks(store, registry, ManualClock())
    await partitions.assigned({("t", 0), ("t", 1)}, {"t": 2})
    _feed(partitions, 0, 0, 300)
    _feed(partitions, 1, 300, 200)
    store.failing_saves.add("partition-0")
    assert await partitions.checkpoints.save(force=True) == {("t", 1): 500}
    assert registry.get_sample_value("watcher_checkpoint_failures_total") == 1
    assert (
        await partitions.revoked({("t", 0)}) == {}
    )  # its offsets stay uncommitted: re-read by the next owner


async def test_a_partition_whose_store_is_unreachable_is_held_and_retried_with_backoff() -> None:
    store, registry, clock = Store(), CollectorRegistry(), ManualClock(1000.0)
    first = _tasks(store, registry, clock)
    await first.assigned({("t", 0)}, {"t": 1})
    _feed(first, 0, 0, 300)
    assert await first.revoked({("t", 0)}) == {("t", 0): 300}

    second = _tasks(store, CollectorRegistry(), clock)
    store.unreachable = 2
    assert await second.assigned({("t", 0)}, {"t": 1}) == {0}  # held: the source pauses it
    assert second.resume_offset("t", 0) is None and not second.retry_due
    clock.advance(0.9)
    assert not second.retry_due and second.retry_waiting() == []
    clock.advance(0.1)  # 1 s: the first retry finds the store still unreachable
    assert second.retry_due and second.retry_waiting() == []
    clock.advance(1.5)
    assert not second.retry_due  # the second wait is 2 s
    clock.advance(0.5)
    assert second.retry_waiting() == [0] and not second.retry_due
    assert second.resume_offset("t", 0) == 300  # the checkpoint's offset, not a fresh start


async def test_one_state_for_the_instance_counts_partitions_and_resumes_at_its_checkpoint() -> None:
    registry = CollectorRegistry()
    settings = load_settings(environ={})
    checkpointer = Checkpointer(MemoryCheckpointStore(), Engine(settings), owner="g")
    checkpointer.advance({("t", 2): 42})
    partitions = InstancePartitions(HandoverMetrics(registry), checkpointer)
    assert await partitions.assigned({("t", 0), ("t", 2), ("d", 0)}, {"t": 3, "d": None}) == ()
    assert registry.get_sample_value("watcher_partitions_owned") == 2
    assert registry.get_sample_value("watcher_partitions") == 3
    assert partitions.resume_offset("t", 2) == 42 and partitions.resume_offset("t", 0) is None
    assert await partitions.revoked({("t", 0), ("t", 2)}) == {}  # committed with the next checkpoint
    assert registry.get_sample_value("watcher_partitions_owned") == 0
    assert InstancePartitions(HandoverMetrics(CollectorRegistry())).resume_offset("t", 2) is None


def test_checkpoints_are_kept_for_the_instance_or_per_partition_not_both() -> None:
    store = MemoryCheckpointStore()
    with pytest.raises(ValueError):
        Checkpoints(store, CheckpointMetrics(CollectorRegistry()))
