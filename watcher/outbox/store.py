"""The outbox's durable queue: one SQLite (WAL) file of deliveries and of the sinks' stored state.

A *delivery* is one item for one sink: ``pending`` until sent or given up (``DeliveryStatus``),
with its attempts, the time of the next one, the requests already acknowledged (``done``) and the
last error. Unique per (sink, item kind, item id): enqueueing an item again is a no-op. The sinks'
state (a Grafana region id, an open PagerDuty incident) lives in the same file, so it survives a
restart together with the deliveries that depend on it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from watcher.clock import Clock
from watcher.errors import CheckpointError
from watcher.storage import open_store

__all__ = ["DeliveryRow", "DeliveryStatus", "OutboxStore", "StoredSinkState"]

_SCHEMA_VERSION = 1


class DeliveryStatus(str, Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # permanent error, or out of attempts


_DDL = (
    "CREATE TABLE IF NOT EXISTS outbox_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS outbox_deliveries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        sink TEXT NOT NULL,
        item_kind TEXT NOT NULL,
        item_id TEXT NOT NULL,
        item TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        enqueued_at REAL NOT NULL,
        next_at REAL NOT NULL,
        finished_at REAL,
        done TEXT NOT NULL DEFAULT '[]',
        last_error TEXT,
        UNIQUE (sink, item_kind, item_id)
    )""",
    "CREATE INDEX IF NOT EXISTS outbox_pending ON outbox_deliveries (sink, status, seq)",
    """CREATE TABLE IF NOT EXISTS outbox_sink_state (
        sink TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, updated_at REAL NOT NULL,
        PRIMARY KEY (sink, key)
    )""",
)
_COLUMNS = "seq, sink, item_kind, item_id, item, status, attempts, enqueued_at, next_at, finished_at, done, last_error"  # noqa: E501


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    seq: int
    sink: str
    item_kind: str
    item_id: str
    item: str
    status: str
    attempts: int
    enqueued_at: float
    next_at: float
    finished_at: float | None
    done: str
    last_error: str | None


class OutboxStore:
    """SQLite (WAL) behind a lock; every method is one short transaction."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.closed = False
        self._db = open_store(
            path, _DDL, meta_table="outbox_meta", schema_version=_SCHEMA_VERSION, what="outbox"
        )

    def _tx(self, fn: Any) -> Any:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(self._db)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return out
            except sqlite3.Error as exc:
                raise CheckpointError(f"outbox {self.path}: {exc}") from exc

    def read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            if self.closed:
                return []
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise CheckpointError(f"outbox {self.path}: {exc}") from exc

    def insert(self, rows_by_sink: dict[str, list[tuple[Any, ...]]]) -> dict[str, int]:
        sql = (
            "INSERT INTO outbox_deliveries (sink, item_kind, item_id, item, status, enqueued_at, next_at) "
            "VALUES (?, ?, ?, ?, 'pending', ?, ?) ON CONFLICT (sink, item_kind, item_id) DO NOTHING"
        )

        def run(db: sqlite3.Connection) -> dict[str, int]:
            added: dict[str, int] = {}
            for sink, rows in rows_by_sink.items():
                before = db.total_changes
                db.executemany(sql, rows)
                added[sink] = db.total_changes - before
            return added

        return self._tx(run)  # type: ignore[no-any-return]

    def head(self, sink: str) -> DeliveryRow | None:
        rows = self.read(
            f"SELECT {_COLUMNS} FROM outbox_deliveries WHERE sink=? AND status='pending' "
            "ORDER BY seq LIMIT 1",
            (sink,),
        )
        return DeliveryRow(*rows[0]) if rows else None

    def update(self, seq: int, **fields: Any) -> None:
        names = ", ".join(f"{k}=?" for k in fields)
        self._tx(
            lambda db: db.execute(
                f"UPDATE outbox_deliveries SET {names} WHERE seq=?", (*fields.values(), seq)
            )
        )

    def prune(self, retain: int) -> None:
        self._tx(
            lambda db: db.execute(
                "DELETE FROM outbox_deliveries WHERE status != 'pending' AND seq <= (SELECT seq FROM "
                "outbox_deliveries WHERE status != 'pending' ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (retain,),
            )
        )

    def pending_by_sink(self) -> dict[str, int]:
        rows = self.read("SELECT sink, COUNT(*) FROM outbox_deliveries WHERE status='pending' GROUP BY sink")
        return {str(name): int(n) for name, n in rows}

    def pending_stats(self, sink: str) -> tuple[int, float | None]:
        rows = self.read(
            "SELECT COUNT(*), MIN(enqueued_at) FROM outbox_deliveries WHERE sink=? AND status='pending'",
            (sink,),
        )
        return (int(rows[0][0]), rows[0][1]) if rows else (0, None)

    def recent(self, sink: str | None, status: str | None, limit: int) -> list[DeliveryRow]:
        """Newest first, optionally of one sink and one status."""
        where, args = [], []
        if sink is not None:
            where.append("sink=?")
            args.append(sink)
        if status is not None:
            where.append("status=?")
            args.append(status)
        sql = f"SELECT {_COLUMNS} FROM outbox_deliveries"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        return [DeliveryRow(*r) for r in self.read(sql, (*args, limit))]

    def state_get(self, sink: str, key: str) -> Any:
        rows = self.read("SELECT value FROM outbox_sink_state WHERE sink=? AND key=?", (sink, key))
        return json.loads(rows[0][0]) if rows else None

    def state_put(self, sink: str, key: str, value: Any, now: float) -> None:
        text = json.dumps(value, allow_nan=False)
        self._tx(
            lambda db: db.execute(
                "INSERT INTO outbox_sink_state VALUES (?, ?, ?, ?) ON CONFLICT (sink, key) DO UPDATE SET "
                "value=excluded.value, updated_at=excluded.updated_at",
                (sink, key, text, now),
            )
        )

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                self._db.close()


class StoredSinkState:
    """One sink's view of the persistent state (``sinks.SinkState``)."""

    def __init__(self, store: OutboxStore, sink: str, clock: Clock) -> None:
        self._store, self._sink, self._clock = store, sink, clock

    def get(self, key: str) -> Any:
        return self._store.state_get(self._sink, key)

    def put(self, key: str, value: Any) -> None:
        self._store.state_put(self._sink, key, value, self._clock.now())
