"""Checkpoints: the engine's state together with the Kafka offsets it covers.

A checkpoint is one JSON document, ``{"v": 1, "engine": Engine.to_state(), "offsets": {topic:
{partition: next_offset}}, "written_at": unix}``, written in one SQLite transaction (WAL), so a
reader sees the previous checkpoint or the new one, never half of one, whatever moment the process
is killed at. The daemon writes one at most every ``checkpoint.interval_s`` and *always before it
commits offsets to Kafka*; it commits exactly the offsets of the checkpoint it has just written. On
start it restores the engine from the checkpoint and seeks each assigned partition to the
checkpoint's offset, so the batches processed after the last checkpoint are read again into the
state they had not reached yet: every event counts exactly once in the state (docs/guarantees.md).

Why not the committed offsets alone: a crash between the checkpoint and the commit leaves Kafka's
offsets behind the state; seeking to the checkpoint's own offsets makes the pair atomic.

Safe by construction: the document is JSON (``allow_nan=False``: a component that emitted a
non-finite float fails loudly at save time, not silently at restore), versioned, and decoded with
``json.loads`` only; nothing from the file is ever unpickled or evaluated.

Rows are keyed by a ``scope``: ``"all"`` when one instance keeps one state (``checkpoint.scope:
instance``), ``"partition-<p>"`` per partition task when several instances share a consumer group
(``checkpoint.scope: partition``, ``watcher.engine.tasks``) and a store (docs/guarantees.md, "Scale-out").
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from watcher.clock import Clock, SystemClock
from watcher.errors import CheckpointError, CheckpointUnavailable
from watcher.storage.sqlite import open_store

__all__ = [
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "CheckpointMetrics",
    "CheckpointStore",
    "Checkpointer",
    "MemoryCheckpointStore",
    "NullCheckpointStore",
    "Offsets",
    "SCOPE_ALL",
    "SqliteCheckpointStore",
    "decode",
    "encode",
]

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
SCOPE_ALL = "all"  # the one row of a single instance

Offsets = dict[tuple[str, int], int]  # (topic, partition) -> next offset to read


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The engine's ``to_state()`` and, per partition, the offset of the first message it has not seen."""

    engine: dict[str, Any]
    offsets: Offsets = field(default_factory=dict)
    written_at: float = 0.0
    owner: str = ""  # the consumer group whose offsets these are: another group's checkpoint is not used


def encode(cp: Checkpoint) -> bytes:
    """The checkpoint as compact JSON; raises ``CheckpointError`` on a value JSON cannot hold."""
    by_topic: dict[str, dict[str, int]] = {}
    for (topic, partition), offset in sorted(cp.offsets.items()):
        by_topic.setdefault(topic, {})[str(partition)] = int(offset)
    doc = {
        "v": CHECKPOINT_VERSION,
        "owner": cp.owner,
        "written_at": cp.written_at,
        "offsets": by_topic,
        "engine": cp.engine,
    }
    try:
        return json.dumps(doc, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:  # NaN/inf or a non-JSON type leaked from a component
        raise CheckpointError(f"the engine state is not JSON-safe: {exc}") from exc


def decode(data: bytes | str) -> Checkpoint:
    """The inverse of ``encode``; raises ``CheckpointError`` on another version or a malformed document."""
    try:
        doc = json.loads(data)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("v") != CHECKPOINT_VERSION:
        version = doc.get("v") if isinstance(doc, dict) else type(doc).__name__
        raise CheckpointError(
            f"unsupported checkpoint version {version!r} (this watcher reads v{CHECKPOINT_VERSION})"
        )
    try:
        offsets: Offsets = {}
        for topic, parts in doc["offsets"].items():
            for partition, offset in parts.items():
                if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                    raise ValueError(f"offset of {topic}/{partition} is {offset!r}")
                offsets[(str(topic), int(partition))] = offset
        engine = doc["engine"]
        if not isinstance(engine, dict):
            raise ValueError("engine state is not an object")
        written_at = float(doc.get("written_at") or 0.0)
        owner = str(doc.get("owner") or "")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"malformed checkpoint: {exc}") from exc
    return Checkpoint(engine, offsets, written_at, owner)


class CheckpointStore(Protocol):
    """Where checkpoints live: the latest one per scope survives, older ones are replaced."""

    def load(self, scope: str = SCOPE_ALL) -> Checkpoint | None: ...

    def save(self, cp: Checkpoint, scope: str = SCOPE_ALL) -> int: ...  # returns the bytes written

    def close(self) -> None: ...


class NullCheckpointStore:
    """Checkpoints disabled: nothing is kept, every start is a fresh one."""

    def load(self, scope: str = SCOPE_ALL) -> Checkpoint | None:
        return None

    def save(self, cp: Checkpoint, scope: str = SCOPE_ALL) -> int:
        return 0

    def close(self) -> None:
        return None


class MemoryCheckpointStore:
    """For tests: the encoded bytes are kept, so a restore exercises the real decoding."""

    def __init__(self) -> None:
        self.rows: dict[str, bytes] = {}
        self.saves = 0

    def load(self, scope: str = SCOPE_ALL) -> Checkpoint | None:
        data = self.rows.get(scope)
        return decode(data) if data is not None else None

    def save(self, cp: Checkpoint, scope: str = SCOPE_ALL) -> int:
        data = encode(cp)
        self.rows[scope] = data
        self.saves += 1
        return len(data)

    def close(self) -> None:
        return None


_DDL = (
    "CREATE TABLE IF NOT EXISTS checkpoint_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS checkpoints (scope TEXT PRIMARY KEY, version INTEGER NOT NULL, "
    "written_at REAL NOT NULL, document BLOB NOT NULL)",
)
_STORE_SCHEMA = 1


class SqliteCheckpointStore:
    """The embedded default: one SQLite file (WAL), one row per scope, replaced in one transaction.

    ``synchronous=FULL``: the commit that makes a checkpoint current is on disk before the offsets
    it covers are committed to Kafka (a power loss must not leave Kafka ahead of the file).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = open_store(
            self.path,
            _DDL,
            meta_table="checkpoint_meta",
            schema_version=_STORE_SCHEMA,
            what="checkpoint file",
            synchronous="FULL",
        )

    def load(self, scope: str = SCOPE_ALL) -> Checkpoint | None:
        with self._lock:
            try:
                row = self._db.execute("SELECT document FROM checkpoints WHERE scope=?", (scope,)).fetchone()
            except sqlite3.Error as exc:
                if isinstance(exc, sqlite3.OperationalError):  # locked, I/O: the file may be fine
                    raise CheckpointUnavailable(f"cannot read checkpoint file {self.path}: {exc}") from exc
                raise CheckpointError(f"cannot read checkpoint file {self.path}: {exc}") from exc
        return decode(bytes(row[0])) if row is not None else None

    def save(self, cp: Checkpoint, scope: str = SCOPE_ALL) -> int:
        data = encode(cp)
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO checkpoints VALUES (?, ?, ?, ?) ON CONFLICT (scope) DO UPDATE SET "
                    "version=excluded.version, written_at=excluded.written_at, document=excluded.document",
                    (scope, CHECKPOINT_VERSION, cp.written_at, data),
                )
            except sqlite3.Error as exc:
                raise CheckpointError(f"cannot write checkpoint file {self.path}: {exc}") from exc
        return len(data)

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:  # closing is best effort
                pass


class Stateful(Protocol):
    """What is checkpointed (``watcher.engine.Engine`` fits)."""

    def to_state(self) -> dict[str, Any]: ...

    def load_state(self, d: dict[str, Any]) -> None: ...


@dataclass(slots=True)
class SaveStats:
    seconds: float = 0.0
    bytes: int = 0
    count: int = 0


class Checkpointer:
    """When to checkpoint, and the positions the state covers.

    The daemon calls ``advance(offsets)`` after each batch it has fully handled, ``due()`` to ask
    whether the interval has passed, and ``save()`` right before it commits ``positions``.
    ``positions`` is also where a partition resumes when it is (re)assigned: on start that is the
    restored checkpoint's offset; after a reconnect in the same process, the offset after the last
    batch in the state (never the committed offset, which may be behind the in-memory state).
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
        self.target.load_state(cp.engine)
        self.positions = dict(cp.offsets)
        self.checkpointed = dict(cp.offsets)
        self.restored = cp
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

    def save(self) -> Offsets:
        """Write a checkpoint of the target at ``positions``; returns the offsets it covers."""
        started = time.perf_counter()
        offsets = dict(self.positions)
        size = self.store.save(
            Checkpoint(self.target.to_state(), offsets, self._clock.now(), self.owner), self.scope
        )
        self.checkpointed = offsets
        self._urgent = False
        self._last_save = self._clock.now()
        seconds = time.perf_counter() - started
        self.last = SaveStats(seconds, size, self.last.count + 1)
        if seconds > 0.2:
            log.info("checkpoint took %.0f ms (%.1f MB)", seconds * 1e3, size / 1e6)
        return offsets


class CheckpointMetrics:
    """The daemon's own checkpoint health (``watcher_checkpoint_*``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "watcher_checkpoint_duration_seconds",
            "Time to serialise and write a checkpoint",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.size = Gauge(
            "watcher_checkpoint_bytes", "Size of the last checkpoint written", registry=registry
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

    def saved(self, seconds: float, size: int) -> None:
        self.duration.observe(seconds)
        self.size.set(size)
        self.last.set(time.time())

    def restored(self, cp: Checkpoint) -> None:
        self.last.set(cp.written_at)
