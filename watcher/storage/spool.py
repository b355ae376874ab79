"""The spool file: records the broker would not take yet, kept until it does (``watcher.kafka.spool``).

One SQLite file (WAL, ``synchronous=FULL``: a record is on disk before the offsets of the batch that
made it are committed, even across a power loss), one row per record, in streams ("deadletter",
"marker") each forwarded in order. Rows are written only while Kafka refuses them, so the fsync per
append costs nothing in normal operation, and the file is created only when a first record needs
it. ``SpoolCollector`` exposes its size at scrape time.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from watcher.errors import CheckpointError
from watcher.kafka import OutRecord, Spooled, SpoolStats
from watcher.storage.sqlite import open_store

__all__ = ["SpoolCollector", "SqliteSpool"]

_DDL = (
    "CREATE TABLE IF NOT EXISTS spool_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS spool (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        stream TEXT NOT NULL,
        topic TEXT NOT NULL,
        key BLOB,
        value BLOB NOT NULL,
        size INTEGER NOT NULL,
        spooled_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS spool_stream ON spool (stream, seq)",
)


class SqliteSpool:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if os.path.exists(self.path):  # records of an earlier run wait in it
            self._open()

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = open_store(
                self.path, _DDL, meta_table="spool_meta", schema_version=1, what="spool", synchronous="FULL"
            )
        return self._db

    def _run(self, fn: Callable[[sqlite3.Connection], Any], *, write: bool, empty: Any = None) -> Any:
        with self._lock:
            if self._db is None and not write and not os.path.exists(self.path):
                return empty  # no file yet: nothing was ever spooled
            db = self._open()
            try:
                if not write:
                    return fn(db)
                db.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(db)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                return out
            except sqlite3.Error as exc:
                raise CheckpointError(f"spool {self.path}: {exc}") from exc

    def append(self, stream: str, records: Sequence[OutRecord], now: float) -> list[int]:
        def run(db: sqlite3.Connection) -> list[int]:
            seqs = []
            for r in records:
                cur = db.execute(
                    "INSERT INTO spool (stream, topic, key, value, size, spooled_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (stream, r.topic, r.key, r.value, len(r.value) + len(r.key or b""), now),
                )
                seqs.append(int(cur.lastrowid or 0))
            return seqs

        out: list[int] = self._run(run, write=True)
        return out

    def head(self, stream: str, limit: int) -> list[Spooled]:
        rows = self._run(
            lambda db: db.execute(
                "SELECT seq, topic, key, value, spooled_at FROM spool WHERE stream=? ORDER BY seq LIMIT ?",
                (stream, limit),
            ).fetchall(),
            write=False,
            empty=[],
        )
        return [
            Spooled(int(seq), OutRecord(topic, bytes(key) if key is not None else None, bytes(value)), at)
            for seq, topic, key, value, at in rows
        ]

    def remove(self, seqs: Sequence[int]) -> None:
        if seqs:
            self._run(
                lambda db: db.executemany("DELETE FROM spool WHERE seq=?", [(s,) for s in seqs]), write=True
            )

    def stats(self, stream: str) -> SpoolStats:
        n, size, oldest = self._run(
            lambda db: db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(spooled_at) FROM spool WHERE stream=?",
                (stream,),
            ).fetchone(),
            write=False,
            empty=(0, 0, None),
        )
        return SpoolStats(int(n), int(size), oldest)

    def close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
            if db is not None:
                try:
                    db.close()
                except sqlite3.Error:
                    pass


class SpoolCollector:
    """``watcher_spool_records{stream}``, ``watcher_spool_bytes{stream}``,
    ``watcher_spool_oldest_age_seconds{stream}`` and ``watcher_spool_limit_bytes{stream}``, read from
    the spool at scrape time (true after a restart too). ``limits``: stream -> bytes (0: no limit)."""

    def __init__(self, spool: Any, limits: dict[str, int], now: Callable[[], float]) -> None:
        self._spool, self._limits, self._now = spool, limits, now

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        families = self._families()
        records, size, age, limit = families
        now = self._now()
        for stream, cap in sorted(self._limits.items()):
            stats = self._spool.stats(stream)
            records.add_metric([stream], float(stats.records))
            size.add_metric([stream], float(stats.bytes))
            age.add_metric([stream], 0.0 if stats.oldest_at is None else max(0.0, now - stats.oldest_at))
            limit.add_metric([stream], float(cap))
        return families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                "watcher_spool_records",
                "Records waiting in the spool for Kafka (the broker refused or did not answer)",
                labels=["stream"],
            ),
            GaugeMetricFamily(
                "watcher_spool_bytes", "Bytes waiting in the spool for Kafka", labels=["stream"]
            ),
            GaugeMetricFamily(
                "watcher_spool_oldest_age_seconds",
                "Age of the oldest record waiting in the spool (0 when none)",
                labels=["stream"],
            ),
            GaugeMetricFamily(
                "watcher_spool_limit_bytes",
                "Most bytes a stream may hold in the spool; beyond it the consumer waits (0: no limit)",
                labels=["stream"],
            ),
        ]
