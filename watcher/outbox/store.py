"""The outbox's durable queue: one SQLite (WAL) file of deliveries and of the sinks' stored state.

A *delivery* is one item for one sink: ``pending`` until sent, ``failed`` when given up (kept until
an operator re-drives or dismisses it), ``delivered`` (``DeliveryStatus``), with its attempts, the
time of the next one, the requests already acknowledged (``done``) and the last error. Unique per
(sink, item kind, item id): enqueueing an item again is a no-op. Each delivery has a *lane* (its
rollout: deliveries of one lane are sent in order) and a *priority* (its severity: a rollback before
a rollout change). The sinks' state (a Grafana region id, an open PagerDuty incident) lives in the
same file, so it survives a restart together with the deliveries that depend on it.
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

# 2: lanes, priorities, plain failures and throttled time (version-1 files are upgraded in place)
_SCHEMA_VERSION = 2


class DeliveryStatus(str, Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # a permanent error, or retried for the whole budget: kept, re-drivable
    DISMISSED = "dismissed"  # a failed delivery an operator decided not to send


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
        lane TEXT NOT NULL DEFAULT '',
        priority INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0,
        throttled_s REAL NOT NULL DEFAULT 0,
        UNIQUE (sink, item_kind, item_id)
    )""",
    "CREATE INDEX IF NOT EXISTS outbox_pending ON outbox_deliveries (sink, status, seq)",
    """CREATE TABLE IF NOT EXISTS outbox_sink_state (
        sink TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, updated_at REAL NOT NULL,
        PRIMARY KEY (sink, key)
    )""",
)
# columns added by schema 2, with the values a version-1 row gets (one lane per sink: its old order)
_ADDED = (
    ("lane", "TEXT NOT NULL DEFAULT ''"),
    ("priority", "INTEGER NOT NULL DEFAULT 0"),
    ("failures", "INTEGER NOT NULL DEFAULT 0"),
    ("throttled_s", "REAL NOT NULL DEFAULT 0"),
)
_COLUMNS = (
    "seq, sink, item_kind, item_id, item, status, attempts, enqueued_at, next_at, finished_at, done, "
    "last_error, lane, priority, failures, throttled_s"
)


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
    lane: str = ""  # deliveries of one lane (a rollout) are sent in order
    priority: int = 0  # among the lanes' heads that are due, the highest goes first
    failures: int = 0  # plain transient failures: the backoff's exponent (Retry-After answers are not)
    throttled_s: float = 0.0  # time waited because the receiver asked (Retry-After): not in the budget


class OutboxStore:
    """SQLite (WAL) behind a lock; every method is one short transaction."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.closed = False
        self._db = open_store(
            path, _DDL, meta_table="outbox_meta", schema_version=_SCHEMA_VERSION, what="outbox"
        )
        self._upgrade()

    def _upgrade(self) -> None:
        """A version-1 file gets the columns of version 2 (its pending rows keep their order)."""
        try:
            have = {r[1] for r in self._db.execute("PRAGMA table_info(outbox_deliveries)")}
            missing = [(name, decl) for name, decl in _ADDED if name not in have]
            if missing:
                self._db.execute("BEGIN IMMEDIATE")
                for name, decl in missing:
                    self._db.execute(f"ALTER TABLE outbox_deliveries ADD COLUMN {name} {decl}")
                self._db.execute(
                    "UPDATE outbox_meta SET value=? WHERE key='schema_version'", (str(_SCHEMA_VERSION),)
                )
                self._db.execute("COMMIT")
            self._db.execute(
                "CREATE INDEX IF NOT EXISTS outbox_lanes ON outbox_deliveries (sink, status, lane, seq)"
            )
        except sqlite3.Error as exc:
            raise CheckpointError(f"outbox {self.path}: cannot upgrade the schema: {exc}") from exc

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
        """Rows of (sink, item kind, item id, item, enqueued at, next at, lane, priority)."""
        sql = (
            "INSERT INTO outbox_deliveries (sink, item_kind, item_id, item, status, enqueued_at, next_at, "
            "lane, priority) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?) "
            "ON CONFLICT (sink, item_kind, item_id) DO NOTHING"
        )

        def run(db: sqlite3.Connection) -> dict[str, int]:
            added: dict[str, int] = {}
            for sink, rows in rows_by_sink.items():
                before = db.total_changes
                db.executemany(sql, rows)
                added[sink] = db.total_changes - before
            return added

        return self._tx(run)

    def heads(self, sink: str) -> list[DeliveryRow]:
        """The first pending delivery of each of ``sink``'s lanes (only these may be sent now)."""
        rows = self.read(
            f"SELECT {_COLUMNS} FROM outbox_deliveries WHERE seq IN (SELECT MIN(seq) FROM "
            "outbox_deliveries WHERE sink=? AND status='pending' GROUP BY lane)",
            (sink,),
        )
        return [DeliveryRow(*r) for r in rows]

    def get(self, seq: int) -> DeliveryRow | None:
        rows = self.read(f"SELECT {_COLUMNS} FROM outbox_deliveries WHERE seq=?", (seq,))
        return DeliveryRow(*rows[0]) if rows else None

    def make_due(self, sink: str, now: float) -> int:
        """Every pending delivery of ``sink`` due now (its receiver answered again)."""
        return self._tx(
            lambda db: (
                db.execute(
                    "UPDATE outbox_deliveries SET next_at=? WHERE sink=? AND status='pending' AND next_at>?",
                    (now, sink, now),
                ).rowcount
            )
        )

    def redrive(self, now: float, *, seq: int | None = None, sink: str | None = None) -> list[int]:
        """Failed deliveries (one, or every one of a sink, or all) pending again, with a fresh budget
        and their lane order kept; returns their sequence numbers."""
        where: list[str] = ["status='failed'"]
        args: list[Any] = []
        if seq is not None:
            where.append("seq=?")
            args.append(seq)
        if sink is not None:
            where.append("sink=?")
            args.append(sink)
        cond = " AND ".join(where)

        def run(db: sqlite3.Connection) -> list[int]:
            seqs = [int(r[0]) for r in db.execute(f"SELECT seq FROM outbox_deliveries WHERE {cond}", args)]
            db.execute(
                "UPDATE outbox_deliveries SET status='pending', next_at=?, enqueued_at=?, failures=0, "
                f"throttled_s=0, finished_at=NULL WHERE {cond}",
                (now, now, *args),
            )
            return seqs

        return self._tx(run)

    def dismiss(self, seq: int, now: float, why: str) -> bool:
        """A failed delivery an operator will not send: kept (``dismissed``), no longer alerting."""
        return bool(
            self._tx(
                lambda db: (
                    db.execute(
                        "UPDATE outbox_deliveries SET status='dismissed', finished_at=?, last_error=? "
                        "WHERE seq=? AND status='failed'",
                        (now, why, seq),
                    ).rowcount
                )
            )
        )

    def update(self, seq: int, **fields: Any) -> None:
        names = ", ".join(f"{k}=?" for k in fields)
        self._tx(
            lambda db: db.execute(
                f"UPDATE outbox_deliveries SET {names} WHERE seq=?", (*fields.values(), seq)
            )
        )

    def prune(self, retain: int) -> None:
        """Delivered and dismissed rows beyond the newest ``retain``; failed ones stay until an
        operator re-drives or dismisses them (they are what nobody received)."""
        self._tx(
            lambda db: db.execute(
                "DELETE FROM outbox_deliveries WHERE status IN ('delivered', 'dismissed') AND seq <= "
                "(SELECT seq FROM outbox_deliveries WHERE status IN ('delivered', 'dismissed') "
                "ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (retain,),
            )
        )

    def failed_by_sink(self) -> dict[tuple[str, int], int]:
        """Failed deliveries per (sink, priority)."""
        rows = self.read(
            "SELECT sink, priority, COUNT(*) FROM outbox_deliveries WHERE status='failed' "
            "GROUP BY sink, priority"
        )
        return {(str(s), int(p)): int(n) for s, p, n in rows}

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
