"""Partition hand-over (``checkpoint.scope: partition``): each owned partition's task with its own
checkpointer, taken over from its checkpoint when the group assigns the partition, checkpointed and
released when it is revoked, and fed only its own partition's messages.

``TaskPartitions`` (``watcher.service.partitions``) calls these under the daemon's batch lock:
``leaving`` names the checkpointers to save before a revocation, and the source commits exactly the
offsets they cover. See ``watcher.engine.tasks`` for the model and docs/guarantees.md, "Scale-out".
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from watcher.engine import BatchResult, Engine, Tasks, scope_of
from watcher.errors import CheckpointError, CheckpointUnavailable
from watcher.kafka import Message, MessageBatch, Origins, next_offsets
from watcher.storage import Checkpoint, Checkpointer, CheckpointMetrics, CheckpointStore, Offsets

__all__ = ["Handover", "HandoverMetrics"]

log = logging.getLogger(__name__)


class HandoverMetrics:
    """``watcher_partitions_owned`` and ``watcher_partition_handovers_total{kind}``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.owned = Gauge(
            "watcher_partitions_owned", "Partition numbers this instance holds", registry=registry
        )
        self.partitions = Gauge(
            "watcher_partitions",
            "Partition numbers of the consumed topics (the most any of them has), from the cluster metadata",
            registry=registry,
        )
        self.handovers = Counter(
            "watcher_partition_handovers",
            "Partitions taken over (with or without a checkpoint) or released to another instance",
            ["kind"],
            registry=registry,
        )
        for kind in ("taken_over", "taken_over_fresh", "released"):
            self.handovers.labels(kind)
        self.offset_resets = Counter(
            "watcher_offset_resets",
            "Partitions moved because their position was beyond the end of the log (the broker came back "
            "empty or truncated; kafka.past_end says where to)",
            ["topic"],
            registry=registry,
        )


class Handover:
    """The checkpointers of the tasks this instance owns, keyed by partition."""

    def __init__(
        self,
        tasks: Tasks,
        store: CheckpointStore,
        *,
        owner: str,
        interval_s: float,
        metrics: CheckpointMetrics | None = None,
        handover_metrics: HandoverMetrics | None = None,
    ) -> None:
        self.tasks = tasks
        self.handover_metrics = handover_metrics or HandoverMetrics(None)
        self.store = store
        self.owner = owner
        self.interval_s = interval_s
        self.metrics = metrics
        self.checkpointers: dict[int, Checkpointer] = {}
        # assigned partitions whose checkpoint could not be read because the store was unreachable:
        # no task yet (the daemon pauses them); ``take_over`` is tried again until the store answers
        self.waiting: set[int] = set()

    # -- ownership --------------------------------------------------------------------------------
    def take_over(self, partitions: Iterable[int]) -> list[int]:
        """Rebuild each newly assigned partition's task from its checkpoint (a fresh one without, or
        when the checkpoint is unreadable). Returns the partitions taken over; those whose store
        could not be reached stay ``waiting``, without a task, to be tried again."""
        taken: list[int] = []
        for partition in sorted(set(partitions)):
            if partition in self.checkpointers:
                continue
            engine = self.tasks.create(partition)
            cp = Checkpointer(
                self.store, engine, owner=self.owner, interval_s=self.interval_s, scope=scope_of(partition)
            )
            restored: Checkpoint | None
            try:
                restored = cp.restore()
            except CheckpointUnavailable as exc:
                self.tasks.drop(partition)
                if partition not in self.waiting:
                    log.error(
                        "partition %d: checkpoint store unreachable (%s): the partition waits, paused, "
                        "and its checkpoint is read again",
                        partition,
                        exc,
                    )
                self.waiting.add(partition)
                continue
            except CheckpointError as exc:
                # a partition cannot refuse to be assigned: it starts fresh, counted and alerted on
                # (WatcherCheckpointLost); the unreadable rows stay in the store
                log.error(
                    "partition %d: checkpoint not restored (%s): starting it from a fresh state",
                    partition,
                    exc,
                )
                if self.metrics is not None:
                    self.metrics.lost.inc()
                restored = None
            if restored is not None and self.metrics is not None:
                self.metrics.restored(restored)
                if restored.skipped:  # from a backup copy (logged by the store)
                    self.metrics.fallbacks.inc()
            self.checkpointers[partition] = cp
            self.waiting.discard(partition)
            taken.append(partition)
            self.handover_metrics.handovers.labels("taken_over" if restored else "taken_over_fresh").inc()
            self.handover_metrics.owned.set(len(self.checkpointers))
            where = (
                ", ".join(f"{t}/{p}@{o}" for (t, p), o in sorted(restored.offsets.items()))
                if restored
                else ""
            )
            log.info(
                "partition %d taken over %s",
                partition,
                f"with its checkpointed state at {where}" if restored else "with no state",
            )
        return taken

    def leaving(self, partitions: Iterable[int]) -> list[Checkpointer]:
        """The checkpointers of the owned ones among ``partitions``: to save before releasing them."""
        return [self.checkpointers[p] for p in sorted(set(partitions)) if p in self.checkpointers]

    def release(self, partitions: Iterable[int]) -> list[int]:
        """Drop the tasks of ``partitions`` (after their checkpoint); returns those dropped."""
        dropped = []
        self.waiting -= set(partitions)
        for partition in sorted(set(partitions)):
            if self.checkpointers.pop(partition, None) is not None:
                self.tasks.drop(partition)
                dropped.append(partition)
                self.handover_metrics.handovers.labels("released").inc()
        self.handover_metrics.owned.set(len(self.checkpointers))
        if dropped:
            log.info("partitions %s handed over", ",".join(map(str, dropped)))
        return dropped

    def set_partition_counts(self, counts: Mapping[str, int | None], telemetry_topic: str) -> None:
        """Markers must reach the task of their agent's telemetry: one partition count everywhere."""
        known = {t: n for t, n in counts.items() if n}
        if known:
            self.tasks.partition_count = known.get(telemetry_topic) or max(known.values())
        if len(set(known.values())) > 1:
            log.error(
                "checkpoint.scope=partition needs co-partitioned topics (one partition count, keyed by "
                "agent_id); found %s: markers may reach an instance that does not own their agent",
                ", ".join(f"{t}={n}" for t, n in sorted(known.items())),
            )

    # -- the stream -------------------------------------------------------------------------------
    def resume_offset(self, topic: str, partition: int) -> int | None:
        cp = self.checkpointers.get(partition)
        return cp.resume_offset(topic, partition) if cp is not None else None

    def process(self, batch: Sequence[Message]) -> tuple[BatchResult, dict[int, Offsets]]:
        """Each partition's messages through its own task; returns the merged result and, per task,
        the offsets its state now covers (``advance`` them once the batch's effects are safe)."""
        merged = BatchResult()
        covered: dict[int, Offsets] = {}
        for partition, engine, fresh in self.pieces(batch):
            merged.merge(engine.process(fresh.values, origins=Origins(fresh)))
            covered[partition] = next_offsets(fresh)
        return merged, covered

    def pieces(self, batch: Sequence[Message]) -> list[tuple[int, Engine, MessageBatch]]:
        """The batch's messages per owned partition, with the partition's task. Messages of a
        partition with no task (revoked while the batch was in flight) and messages below a task's
        position (fetched before a hand-over, already in the restored state) are left out: the
        partition's owner counts them, once."""
        whole = batch if isinstance(batch, MessageBatch) else MessageBatch.of(batch)
        out = []
        for partition, fresh in sorted(whole.by_partition(self.resume_offset).items()):
            engine = self.tasks.get(partition)
            if engine is None or partition not in self.checkpointers:
                log.debug("%d messages of unowned partition %d skipped", len(fresh), partition)
                continue
            out.append((partition, engine, fresh))
        return out

    def advance(self, covered: Mapping[int, Offsets]) -> None:
        for partition, offsets in covered.items():
            cp = self.checkpointers.get(partition)
            if cp is not None:
                cp.advance(offsets)

    def mark_dirty(self, rollout_ids: Iterable[str]) -> None:
        """An override changed these rollouts' policy state outside any batch: checkpoint them soon."""
        wanted = set(rollout_ids)
        for partition, engine in self.tasks.engines.items():
            if (
                any(engine.registry.get(rid) is not None for rid in wanted)
                and partition in self.checkpointers
            ):
                self.checkpointers[partition].mark_dirty()
