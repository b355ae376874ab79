"""The checkpointer: when to checkpoint, what changed, and writing it without stalling the daemon.

A save has two phases (issue #13: a checkpoint of 2,000 agents blocked the event loop for 12 s):

1. ``snapshot``: on the event loop, while the caller holds the batch lock (no batch, override or
   rebalance changes the state meanwhile), the parts changed since the last checkpoint are copied out
   of the state (``Engine.build_parts``: arrays as bytes, fresh lists and dicts, nothing shared with
   the live state). The snapshot steps through the parts; ``save_async`` lets the loop run between
   them whenever a slice of ``SLICE_S`` has passed, so ``/healthz``, the API and the deployer hooks
   keep answering while a large state is copied.
2. ``write``: encoding (MessagePack) and the store's write run in a worker thread; only the parts in
   the snapshot are encoded and written, the store keeps the others. A part the snapshot holds as a
   function (the engine's passes over every version or event id: drift, history, dedup) is built
   there too, the batch lock still held: each was one step of the loop of hundreds of milliseconds
   at thousands of agents.

A target that only has ``to_state``/``load_state`` is written whole every time (one part per key).
A write that fails puts its parts back among the changed ones, so the next save writes them again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from watcher.clock import Clock, SystemClock
from watcher.errors import CheckpointError, CheckpointLost
from watcher.storage.checkpoint import SCOPE_ALL, Checkpoint, CheckpointStore, Offsets

__all__ = ["SLICE_S", "CheckpointMetrics", "Checkpointer", "Snapshot", "Stateful"]

log = logging.getLogger(__name__)

SLICE_S = 0.02  # the longest the snapshot holds the event loop before letting it run


class Stateful(Protocol):
    """What is checkpointed (``watcher.engine.Engine`` fits): its state as a dict of parts."""

    def to_state(self) -> dict[str, Any]: ...

    def load_state(self, d: dict[str, Any]) -> None: ...


@runtime_checkable
class Incremental(Stateful, Protocol):
    """A target that names its parts and which of them changed (``watcher.engine.Engine``)."""

    def part_names(self) -> set[str]: ...

    def take_changed(self) -> set[str]: ...

    def build_parts(self, wanted: set[str]) -> Iterator[tuple[str, Any] | None]: ...  # see Snapshot


@dataclass(slots=True)
class SaveStats:
    seconds: float = 0.0  # the whole save
    bytes: int = 0
    count: int = 0
    snapshot_seconds: float = 0.0  # of which on the event loop
    parts: int = 0  # parts written


@dataclass(slots=True)
class Snapshot:
    """The state at ``offsets``: the changed parts' states, the names of the unchanged ones. A part
    may be a function that builds its state: ``write`` calls it, in its own thread, and the caller
    holds the batch lock until ``write`` returns, so the state is still the one at ``offsets``."""

    parts: dict[str, Any]
    kept: frozenset[str]
    offsets: Offsets
    seconds: float = 0.0  # spent taking it (on the loop)


class Checkpointer:
    """When to checkpoint, and the positions the state covers.

    The daemon calls ``advance(offsets)`` after each batch it has fully handled, ``due()`` to ask
    whether the interval has passed, and ``save_async()`` (or ``save()``) right before it commits
    ``positions``. ``positions`` is also where a partition resumes when it is (re)assigned: on start
    that is the restored checkpoint's offset; after a reconnect in the same process, the offset after
    the last batch in the state (never the committed offset, which may be behind the in-memory state).
    """

    def __init__(
        self,
        store: CheckpointStore,
        target: Stateful,
        *,
        owner: str = "",
        interval_s: float = 5.0,
        clock: Clock | None = None,
        scope: str = SCOPE_ALL,
    ) -> None:
        self.store = store
        self.owner = owner
        self.scope = scope
        self.target = target
        self.interval_s = interval_s
        self._clock = clock or SystemClock()
        self.positions: Offsets = {}
        self.checkpointed: Offsets = {}  # the offsets of the last checkpoint written or restored
        self._last_save = self._clock.now()
        self._urgent = False  # state changed outside the offsets (an API override): save soon
        # the store holds this state's parts (restored or written): a save writes the changed ones only
        self._stored = False
        self.last = SaveStats()
        self.restored: Checkpoint | None = None

    def restore(self) -> Checkpoint | None:
        """Load the latest checkpoint into the target; None (and a fresh state) when there is none
        or it belongs to another consumer group (its offsets would mean nothing to this one)."""
        cp = self.store.load(self.scope)
        if cp is None:
            return None
        if cp.owner != self.owner:
            log.warning(
                "checkpoint of consumer group %r ignored (this is %r): starting from a fresh state",
                cp.owner,
                self.owner,
            )
            return None
        try:
            self.target.load_state(cp.engine)  # leaves the target as it was when it raises
        except CheckpointError as exc:  # read whole, but not a state this version can restore
            raise CheckpointLost(self.scope, [str(exc)]) from exc
        self.positions = dict(cp.offsets)
        self.checkpointed = dict(cp.offsets)
        self.restored = cp
        # the parts of a v1 document are not the target's parts: the first save writes them all
        self._stored = isinstance(self.target, Incremental) and "engine" in cp.engine
        if cp.skipped:  # restored from a backup copy: the store does not hold these parts
            self._stored = False
        return cp

    def advance(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """The state now covers these next offsets (per partition, only ever forwards)."""
        for key, offset in offsets.items():
            if offset > self.positions.get(key, -1):
                self.positions[key] = offset

    def rewind(self, key: tuple[str, int], offset: int) -> None:
        """The partition reads from ``offset`` now, backwards too (its log was emptied or truncated)."""
        self.positions[key] = offset

    def mark_dirty(self) -> None:
        """The state changed without new offsets (an override over HTTP): checkpoint at once."""
        self._urgent = True

    @property
    def dirty(self) -> bool:
        return self._urgent or self.positions != self.checkpointed

    def due(self) -> bool:
        return self._urgent or (self.dirty and self._clock.now() - self._last_save >= self.interval_s)

    def resume_offset(self, topic: str, partition: int) -> int | None:
        return self.positions.get((topic, partition))

    # -- saving ---------------------------------------------------------------------------------
    def snapshot_steps(self) -> Iterator[Snapshot | None]:
        """Copy the changed parts out of the state: ``None`` between parts (the caller may let the
        event loop run there, holding the batch lock), the ``Snapshot`` last."""
        started = time.perf_counter()
        offsets = dict(self.positions)
        self._urgent = False
        target = self.target
        if not isinstance(target, Incremental):
            yield Snapshot(target.to_state(), frozenset(), offsets, time.perf_counter() - started)
            return
        names = target.part_names()
        changed = target.take_changed()
        wanted = names if not self._stored else changed & names
        parts: dict[str, Any] = {}
        for item in target.build_parts(wanted):
            if item is None:
                yield None
            else:
                parts[item[0]] = item[1]
        yield Snapshot(parts, frozenset(names - parts.keys()), offsets, time.perf_counter() - started)

    def snapshot(self) -> Snapshot:
        return next(s for s in self.snapshot_steps() if s is not None)

    def write(self, snap: Snapshot) -> Offsets:
        """Encode and store a snapshot (in a worker thread is fine); returns the offsets it covers.
        After a failure (``CheckpointError``) the next save writes every part: the store may hold
        none of this one's, or miss some it should have kept."""
        started = time.perf_counter()
        parts = {name: state() if callable(state) else state for name, state in snap.parts.items()}
        cp = Checkpoint(parts, snap.offsets, self._clock.now(), self.owner, snap.kept)
        try:
            size = self.store.save(cp, self.scope)
        except CheckpointError:
            self._stored = False
            raise
        self._stored = True
        self.checkpointed = snap.offsets
        self._last_save = self._clock.now()
        seconds = snap.seconds + time.perf_counter() - started
        self.last = SaveStats(seconds, size, self.last.count + 1, snap.seconds, len(snap.parts))
        if seconds > 0.2:
            log.info(
                "checkpoint took %.0f ms (%.0f ms of it on the event loop, %d parts, %.1f MB)",
                seconds * 1e3,
                snap.seconds * 1e3,
                len(snap.parts),
                size / 1e6,
            )
        return snap.offsets

    def save(self) -> Offsets:
        """Snapshot and write at once, in the caller's thread (tests, and targets saved rarely)."""
        return self.write(self.snapshot())

    async def save_async(self, slice_s: float = SLICE_S) -> Offsets:
        """Snapshot on the event loop, letting it run every ``slice_s``, then write in a worker
        thread. The caller holds the batch lock throughout: the state is the one at ``positions``."""
        snap: Snapshot | None = None
        mark = time.perf_counter()
        for step in self.snapshot_steps():
            if step is not None:
                snap = step
            elif time.perf_counter() - mark >= slice_s:
                await asyncio.sleep(0)
                mark = time.perf_counter()
        assert snap is not None
        return await asyncio.to_thread(self.write, snap)


class CheckpointMetrics:
    """The daemon's own checkpoint health (``watcher_checkpoint_*``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "watcher_checkpoint_duration_seconds",
            "Time to snapshot, serialise and write a checkpoint",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.snapshot = Histogram(
            "watcher_checkpoint_snapshot_seconds",
            "Of a checkpoint, the time spent copying the changed state on the event loop (in slices)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )
        self.size = Gauge(
            "watcher_checkpoint_bytes",
            "Bytes written by the last checkpoint (its changed parts)",
            registry=registry,
        )
        self.parts = Gauge(
            "watcher_checkpoint_parts", "Parts of the state written by the last checkpoint", registry=registry
        )
        self.last = Gauge(
            "watcher_checkpoint_last_timestamp_seconds",
            "When the last checkpoint was written or restored (Unix time)",
            registry=registry,
        )
        self.failures = Counter(
            "watcher_checkpoint_failures_total",
            "Checkpoints that could not be written (offsets were not committed)",
            registry=registry,
        )
        self.fallbacks = Counter(
            "watcher_checkpoint_fallbacks_total",
            "Restores from a backup copy because the checkpoint could not be read",
            registry=registry,
        )
        self.lost = Counter(
            "watcher_checkpoint_lost_total",
            "Restores that found a checkpoint written but unreadable and started from a fresh state",
            registry=registry,
        )

    def saved(self, stats: SaveStats) -> None:
        self.duration.observe(stats.seconds)
        self.snapshot.observe(stats.snapshot_seconds)
        self.size.set(stats.bytes)
        self.parts.set(stats.parts)
        self.last.set(time.time())

    def restored(self, cp: Checkpoint) -> None:
        self.last.set(cp.written_at)
