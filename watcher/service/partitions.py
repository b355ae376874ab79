"""The state's side of the partitions: checkpoints, and what happens when the group moves partitions.

``Checkpoints`` holds this instance's checkpointers (one for the whole instance, or one per owned
partition task) and saves the ones that are due; it returns exactly the offsets the saved ones
cover, and only those are committed (a checkpoint that failed leaves its partitions uncommitted).

The two ``PartitionListener``s (``watcher.kafka.rebalance``), one per ``checkpoint.scope``:

* ``InstancePartitions`` (``instance``): one state for every partition; partitions are only counted,
  and each resumes at the offset the checkpoint covers;
* ``TaskPartitions`` (``partition``): one task per partition (``watcher.service.handover``), restored
  from its checkpoint when assigned, checkpointed and released when revoked. A partition whose
  checkpoint store cannot be reached is held (not fetched) and read again, backing off from 1 s to
  30 s, until its state is restored (``retry_waiting``).

Both take the daemon's batch lock around every change of state, so a rebalance never interleaves
with a batch, a checkpoint or a reload.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Iterable, Mapping, Sequence

from watcher.backoff import Backoff, Retries
from watcher.clock import Clock, SystemClock
from watcher.errors import CheckpointError, CheckpointLost
from watcher.kafka import Partitions
from watcher.service.handover import Handover, HandoverMetrics
from watcher.storage import Checkpointer, CheckpointMetrics, CheckpointStore, Offsets

__all__ = ["STORE_RETRY", "Checkpoints", "InstancePartitions", "TaskPartitions"]

log = logging.getLogger(__name__)

# a checkpoint store that cannot be reached at take-over is read again after 1 s, 2 s... up to 30 s
STORE_RETRY = Backoff(initial_s=1.0, max_s=30.0)
# a checkpoint that could not be written is tried again after 1 s, 2 s... up to 60 s, not after every
# batch (each try serialises the whole state, and a store that hangs would hold every batch)
SAVE_RETRY = Backoff(initial_s=1.0, max_s=60.0)
# checkpoints failing for longer than this make the daemon not ready
NOT_READY_AFTER_S = 60.0


class Checkpoints:
    """The checkpointers of this instance: ``checkpointer`` (scope instance) or those of
    ``handover``'s tasks (scope partition)."""

    def __init__(
        self,
        store: CheckpointStore,
        metrics: CheckpointMetrics,
        *,
        checkpointer: Checkpointer | None = None,
        handover: Handover | None = None,
        clock: Clock | None = None,
        reset_state: bool = False,
    ) -> None:
        if (checkpointer is None) == (handover is None):
            raise ValueError("checkpoints are kept either for the instance or per partition task")
        self.store = store
        self.metrics = metrics
        self.checkpointer = checkpointer
        self.handover = handover
        self._clock = clock or SystemClock()
        self._retries = Retries(SAVE_RETRY)
        self._retry_at = 0.0
        self.failing_since: float | None = None  # the first failure of the current streak
        self.last_error: str | None = None
        self._frozen: str | None = None  # why no checkpoint may be written any more (a torn state)
        self.not_ready_after_s = NOT_READY_AFTER_S
        self.reset_state = reset_state  # an unreadable checkpoint means a fresh state (not a refusal)

    def all(self) -> list[Checkpointer]:
        if self.checkpointer is not None:
            return [self.checkpointer]
        assert self.handover is not None
        return list(self.handover.checkpointers.values())

    def restore(self) -> bool:
        """Restore the instance's state from its checkpoint (before consuming); True if there was
        one. A checkpoint that was written but cannot be read (``CheckpointLost``) stops the start-up,
        unless ``reset_state`` (``watcher run --reset-state``): then the state starts fresh, counted;
        the unreadable rows stay in the store either way. A store that cannot be reached stops the
        start-up too (the checkpoint may be fine). Partition tasks are restored when
        their partition is assigned."""
        if self.checkpointer is None:
            return False
        try:
            cp = self.checkpointer.restore()
        except CheckpointLost as exc:
            if not self.reset_state:
                raise
            self.metrics.lost.inc()
            log.error("%s: starting from a fresh state, as --reset-state asks", exc)
            return False
        if cp is None:
            return False
        self.metrics.restored(cp)
        if cp.skipped:
            self.metrics.fallbacks.inc()
            log.error("checkpoint restored from a backup copy (%s)", "; ".join(cp.skipped))
        log.info(
            "state restored from the checkpoint of %s: %s",
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cp.written_at)),
            ", ".join(f"{t}/{p}@{o}" for (t, p), o in sorted(cp.offsets.items())) or "no offsets",
        )
        return True

    async def save(self, *, force: bool = False, only: Sequence[Checkpointer] | None = None) -> Offsets:
        """Save every checkpoint that is due (or dirty, when ``force``d); returns the offsets the
        saved ones cover: those, and only those, may be committed. The caller holds the batch lock:
        each state is copied on the event loop in slices (it keeps answering), then written by a
        worker thread (``Checkpointer.save_async``)."""
        saved: Offsets = {}
        if self._frozen is not None:
            return saved
        now = self._clock.now()
        if not force and now < self._retry_at:
            return saved  # backing off after a failure
        for cp in self.all() if only is None else only:
            if not (cp.due() or (force and cp.dirty)):
                continue
            try:
                saved.update(await cp.save_async())
            except CheckpointError as exc:  # e.g. disk full: nothing is committed, retried later
                self.metrics.failures.inc()
                self.failing_since = self.failing_since or now
                self.last_error = str(exc)
                wait = self._retries.next()
                self._retry_at = self._clock.now() + wait
                log.error(
                    "checkpoint %s failed, its offsets are not committed (tried again in %.0fs): %s",
                    cp.scope,
                    wait,
                    exc,
                )
                continue
            self.metrics.saved(cp.last)
            if self.failing_since is not None:
                log.info(
                    "checkpoints are written again (after %.0fs)", self._clock.now() - self.failing_since
                )
            self.failing_since, self.last_error = None, None
            self._retries.reset()
        return saved

    def health(self) -> str | None:
        """Why the state is not being checkpointed (None: it is)."""
        if self.failing_since is None or self._clock.now() - self.failing_since < self.not_ready_after_s:
            return None
        return (
            f"checkpoints fail since {self._clock.now() - self.failing_since:.0f}s, offsets are not "
            f"committed ({self.last_error})"
        )

    def freeze(self, why: str) -> None:
        """No checkpoint from now on (the engine may hold a batch its positions do not)."""
        if self._frozen is None:
            log.warning("checkpoints stopped: %s", why)
        self._frozen = why

    def advance(self, offsets: Offsets) -> None:
        """The instance's state now covers a batch: its next offsets (scope instance)."""
        assert self.checkpointer is not None
        self.checkpointer.advance(offsets)

    def advance_tasks(self, covered: Mapping[int, Offsets]) -> None:
        """Per partition task, the offsets its own state now covers (``Handover.process``)."""
        assert self.handover is not None
        self.handover.advance(covered)

    def mark_dirty(self, rollout_ids: Iterable[str]) -> None:
        """An override or acknowledgement changed these rollouts' policy state outside any batch:
        checkpoint them soon (the ticker picks it up within a second)."""
        if self.checkpointer is not None:
            self.checkpointer.mark_dirty()
        elif self.handover is not None:
            self.handover.mark_dirty(rollout_ids)

    def mark_all_dirty(self) -> None:
        """A new policy reached every judge: its policies are part of every checkpoint."""
        for cp in self.all():
            cp.mark_dirty()

    def close(self) -> None:
        self.store.close()


def _count(metrics: HandoverMetrics, counts: Mapping[str, int | None]) -> None:
    known = [n for n in counts.values() if n]
    if known:  # what the instances of the group hold between them (WatcherPartitionsUnowned)
        metrics.partitions.set(max(known))


class InstancePartitions:
    """``checkpoint.scope: instance``: one state for all partitions, which are only counted."""

    def __init__(self, metrics: HandoverMetrics, checkpointer: Checkpointer | None = None) -> None:
        self.metrics = metrics
        self.checkpointer = checkpointer

    async def assigned(
        self, partitions: Partitions, partition_counts: Mapping[str, int | None]
    ) -> Collection[int]:
        _count(self.metrics, partition_counts)
        numbers = {p for _, p in partitions}
        self.metrics.handovers.labels("taken_over").inc(len(numbers))
        self.metrics.owned.set(len(numbers))
        return ()

    async def revoked(self, partitions: Partitions) -> Mapping[tuple[str, int], int]:
        self.metrics.handovers.labels("released").inc(len({p for _, p in partitions}))
        self.metrics.owned.set(0)
        return {}

    def resume_offset(self, topic: str, partition: int) -> int | None:
        return self.checkpointer.resume_offset(topic, partition) if self.checkpointer is not None else None

    def moved(self, topic: str, partition: int, was: int, now: int) -> None:
        _moved(self.metrics, self.checkpointer, topic, partition, was, now)


def _moved(
    metrics: HandoverMetrics,
    checkpointer: Checkpointer | None,
    topic: str,
    partition: int,
    was: int,
    now: int,
) -> None:
    """A partition's log no longer holds the offsets the state had reached: the state keeps what it
    counted and covers the log from ``now`` on (without this, the next checkpoint would still say
    ``was`` and a restart would wait there again)."""
    metrics.offset_resets.labels(topic).inc()
    if checkpointer is not None:
        checkpointer.rewind((topic, partition), now)


class TaskPartitions:
    """``checkpoint.scope: partition``: a task per owned partition, handed over on rebalance."""

    def __init__(
        self,
        handover: Handover,
        checkpoints: Checkpoints,
        lock: asyncio.Lock,
        *,
        telemetry_topic: str,
        retry: Backoff = STORE_RETRY,
        clock: Clock | None = None,
    ) -> None:
        self.handover = handover
        self.checkpoints = checkpoints
        self.telemetry_topic = telemetry_topic
        self._lock = lock
        self._clock = clock or SystemClock()
        self._retries = Retries(retry)
        self._retry_at = 0.0

    async def assigned(
        self, partitions: Partitions, partition_counts: Mapping[str, int | None]
    ) -> Collection[int]:
        """Rebuild each new partition's task from its checkpoint; the partitions whose store could
        not be reached are held until ``retry_waiting`` restores them."""
        async with self._lock:
            _count(self.handover.handover_metrics, partition_counts)
            self.handover.set_partition_counts(partition_counts, self.telemetry_topic)
            self.handover.take_over(p for _, p in partitions)
            if self.handover.waiting:
                self._retries.reset()
                self._retry_at = self._clock.monotonic() + self._retries.next()
            return set(self.handover.waiting)

    async def revoked(self, partitions: Partitions) -> Mapping[tuple[str, int], int]:
        """Checkpoint the revoked partitions' tasks and drop them; returns the offsets to commit
        while this member still owns them (the next owner restores the checkpoints)."""
        numbers = {p for _, p in partitions}
        async with self._lock:
            offsets = await self.checkpoints.save(force=True, only=self.handover.leaving(numbers))
            self.handover.release(numbers)
        return offsets

    def resume_offset(self, topic: str, partition: int) -> int | None:
        return self.handover.resume_offset(topic, partition)

    def moved(self, topic: str, partition: int, was: int, now: int) -> None:
        metrics = self.handover.handover_metrics
        _moved(metrics, self.handover.checkpointers.get(partition), topic, partition, was, now)

    @property
    def retry_due(self) -> bool:
        """Partitions are held and their backoff has passed: time for ``retry_waiting``."""
        return bool(self.handover.waiting) and self._clock.monotonic() >= self._retry_at

    def retry_waiting(self) -> list[int]:
        """The held partitions whose checkpoint store answers now (the caller holds the batch lock
        and resumes them); nothing before the backoff has passed."""
        if not self.retry_due:
            return []
        taken = self.handover.take_over(set(self.handover.waiting))
        self._retry_at = self._clock.monotonic() + self._retries.next()
        return taken
