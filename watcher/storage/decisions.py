"""The decision log: an append-only audit trail of decisions and drift signals.

Every decision (``watcher.decision/v1``, see docs/decisions.md) is written here *before* any signal
is sent, so the log is the record of what watcher said and why. It is append-only: a record is
never updated or deleted through this interface, and appending a ``decision_id`` that is already
there is a no-op that returns ``False`` (replays and restarts re-emit the same stable ids).

Two implementations share one contract:

* ``SqliteDecisionLog(path)`` — the production default (embedded, WAL mode, one short transaction
  per batch so the asyncio loop is never held for long);
* ``MemoryDecisionLog()`` — the null/in-memory log for replay and tests.

Both store the JSON form of a record (non-finite numbers become ``null``: JSON has none) and return
that same JSON-decoded dict, so what a reader gets does not depend on the backend.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from watcher.contract import Decision
from watcher.errors import CheckpointError
from watcher.storage.sqlite import open_store

_LOG_SCHEMA_VERSION = 1
# the log's rows as plain dicts (an alias: in classes with a ``list`` method, ``list[...]`` is that method)
Rows = list[dict[str, Any]]


class DriftRecord(Protocol):
    """What the log needs from a drift signal (``watcher.judges.drift.DriftSignal`` fits)."""

    @property
    def signal_id(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


class DecisionLog(Protocol):
    """Append-only audit trail of decisions and drift signals."""

    def append(self, decision: Decision) -> bool: ...

    def append_many(self, decisions: Sequence[Decision]) -> int: ...

    def list(
        self,
        *,
        rollout_id: str | None = None,
        agent_id: str | None = None,
        environment: str | None = None,
        action: str | None = None,
        since: float | None = None,
        limit: int = 100,
        ascending: bool = False,
    ) -> Rows: ...

    def latest(self, rollout_id: str) -> dict[str, Any] | None: ...

    def append_drift(self, signal: DriftRecord) -> bool: ...

    def list_drift(
        self,
        *,
        agent_id: str | None = None,
        environment: str | None = None,
        version: str | None = None,
        metric: str | None = None,
        since: float | None = None,
        limit: int = 100,
        ascending: bool = False,
    ) -> Rows: ...

    def close(self) -> None: ...


def json_safe(value: Any) -> Any:
    """The value with non-finite floats replaced by ``None`` (an e-value can overflow to inf)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _encode(record: dict[str, Any]) -> str:
    return json.dumps(json_safe(record), sort_keys=True, separators=(",", ":"), allow_nan=False)


def _decision_row(decision: Decision) -> tuple[Any, ...]:
    record = decision.to_dict()
    r = decision.rollout
    return (
        decision.decision_id,
        float(decision.ts),
        r.rollout_id,
        r.agent_id,
        r.environment,
        decision.action.value,
        decision.cause.value,
        _encode(record),
    )


def _drift_row(signal: DriftRecord) -> tuple[Any, ...]:
    record = signal.to_dict()
    return (
        signal.signal_id,
        float(record["ts_unix"]),
        str(record["agent_id"]),
        str(record["environment"]),
        str(record["version"]),
        str(record["metric"]),
        str(record["detector"]),
        _encode(record),
    )


# --- SQLite -------------------------------------------------------------------------------------

_DDL = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS decisions (
        decision_id TEXT PRIMARY KEY,
        ts REAL NOT NULL,
        rollout_id TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        environment TEXT NOT NULL,
        action TEXT NOT NULL,
        cause TEXT NOT NULL,
        record TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS decisions_rollout ON decisions (rollout_id, ts)",
    "CREATE INDEX IF NOT EXISTS decisions_agent ON decisions (agent_id, environment, ts)",
    "CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts)",
    """CREATE TABLE IF NOT EXISTS drift_signals (
        signal_id TEXT PRIMARY KEY,
        ts REAL NOT NULL,
        agent_id TEXT NOT NULL,
        environment TEXT NOT NULL,
        version TEXT NOT NULL,
        metric TEXT NOT NULL,
        detector TEXT NOT NULL,
        record TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS drift_agent ON drift_signals (agent_id, environment, version, ts)",
    # Append-only is enforced by the database too, so a stray UPDATE/DELETE cannot rewrite history.
    """CREATE TRIGGER IF NOT EXISTS decisions_no_update BEFORE UPDATE ON decisions
        BEGIN SELECT RAISE(ABORT, 'decision log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS decisions_no_delete BEFORE DELETE ON decisions
        BEGIN SELECT RAISE(ABORT, 'decision log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS drift_no_update BEFORE UPDATE ON drift_signals
        BEGIN SELECT RAISE(ABORT, 'decision log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS drift_no_delete BEFORE DELETE ON drift_signals
        BEGIN SELECT RAISE(ABORT, 'decision log is append-only'); END""",
)


class _Queries:
    """The read side both logs share; each names its stores "decisions" and "drift_signals"."""

    def list(
        self,
        *,
        rollout_id: str | None = None,
        agent_id: str | None = None,
        environment: str | None = None,
        action: str | None = None,
        since: float | None = None,
        limit: int = 100,
        ascending: bool = False,
    ) -> Rows:
        filters = {
            "rollout_id": rollout_id,
            "agent_id": agent_id,
            "environment": environment,
            "action": action,
        }
        return self._select("decisions", filters, since, limit, ascending)

    def latest(self, rollout_id: str) -> dict[str, Any] | None:
        rows = self.list(rollout_id=rollout_id, limit=1)
        return rows[0] if rows else None

    def list_drift(
        self,
        *,
        agent_id: str | None = None,
        environment: str | None = None,
        version: str | None = None,
        metric: str | None = None,
        since: float | None = None,
        limit: int = 100,
        ascending: bool = False,
    ) -> Rows:
        filters = {"agent_id": agent_id, "environment": environment, "version": version, "metric": metric}
        return self._select("drift_signals", filters, since, limit, ascending)

    def _select(
        self, store: str, filters: dict[str, str | None], since: float | None, limit: int, ascending: bool
    ) -> Rows:
        raise NotImplementedError


class SqliteDecisionLog(_Queries):
    """SQLite-backed decision log (WAL mode).

    Called from the asyncio loop: each call is one short transaction (``append_many`` writes a
    whole batch in one), and a lock makes the object safe to share with an executor thread.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._db = open_store(
            self.path, _DDL, meta_table="meta", schema_version=_LOG_SCHEMA_VERSION, what="decision log"
        )

    # -- writes --

    def append(self, decision: Decision) -> bool:
        return self.append_many([decision]) == 1

    def append_many(self, decisions: Sequence[Decision]) -> int:
        """Append a batch in one transaction; returns how many were new (existing ids are kept as is)."""
        return self._insert("decisions", "decision_id", [_decision_row(d) for d in decisions])

    def append_drift(self, signal: DriftRecord) -> bool:
        return self.append_drift_many([signal]) == 1

    def append_drift_many(self, signals: Sequence[DriftRecord]) -> int:
        return self._insert("drift_signals", "signal_id", [_drift_row(s) for s in signals])

    def _insert(self, table: str, key: str, rows: list[tuple[Any, ...]]) -> int:
        if not rows:
            return 0
        # ON CONFLICT on the id only (not OR IGNORE, which would also skip NOT NULL violations).
        sql = f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT({key}) DO NOTHING"
        with self._lock:
            try:
                before = self._db.total_changes
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(sql, rows)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return self._db.total_changes - before
            except sqlite3.Error as exc:
                raise CheckpointError(f"cannot write decision log {self.path}: {exc}") from exc

    # -- reads --

    def _select(
        self, table: str, filters: dict[str, str | None], since: float | None, limit: int, ascending: bool
    ) -> Rows:
        clauses = [f"{col} = ?" for col, v in filters.items() if v is not None]
        params: list[Any] = [v for v in filters.values() if v is not None]
        if since is not None:
            clauses.append("ts >= ?")
            params.append(float(since))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "ASC" if ascending else "DESC"
        # Column names come from the fixed dicts above, never from the caller: no injection.
        sql = f"SELECT record FROM {table} {where} ORDER BY ts {order}, rowid {order} LIMIT ?"
        params.append(max(0, int(limit)))
        with self._lock:
            try:
                rows = self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise CheckpointError(f"cannot read decision log {self.path}: {exc}") from exc
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SqliteDecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- memory -------------------------------------------------------------------------------------


class MemoryDecisionLog(_Queries):
    """The in-memory log (replay, tests): the same contract and the same returned dicts as SQLite."""

    def __init__(self) -> None:
        self._decisions: dict[str, tuple[float, int, dict[str, str], str]] = {}
        self._drift: dict[str, tuple[float, int, dict[str, str], str]] = {}
        self._seq = 0

    def append(self, decision: Decision) -> bool:
        return self.append_many([decision]) == 1

    def append_many(self, decisions: Sequence[Decision]) -> int:
        rows = [_decision_row(d) for d in decisions]
        cols = ("rollout_id", "agent_id", "environment", "action")
        return self._insert(self._decisions, ((r[0], r[1], dict(zip(cols, r[2:6])), r[7]) for r in rows))

    def append_drift(self, signal: DriftRecord) -> bool:
        return self.append_drift_many([signal]) == 1

    def append_drift_many(self, signals: Sequence[DriftRecord]) -> int:
        rows = [_drift_row(s) for s in signals]
        cols = ("agent_id", "environment", "version", "metric")
        return self._insert(self._drift, ((r[0], r[1], dict(zip(cols, r[2:6])), r[7]) for r in rows))

    def _insert(
        self,
        table: dict[str, tuple[float, int, dict[str, str], str]],
        rows: Iterable[tuple[str, float, dict[str, str], str]],
    ) -> int:
        added = 0
        for key, ts, cols, record in rows:
            if key in table:
                continue
            self._seq += 1
            table[key] = (ts, self._seq, cols, record)
            added += 1
        return added

    def _select(
        self, store: str, filters: dict[str, str | None], since: float | None, limit: int, ascending: bool
    ) -> Rows:
        table = self._decisions if store == "decisions" else self._drift
        wanted = {k: v for k, v in filters.items() if v is not None}
        hits = [
            (ts, seq, record)
            for ts, seq, cols, record in table.values()
            if (since is None or ts >= since) and all(cols[k] == v for k, v in wanted.items())
        ]
        hits.sort(key=lambda h: (h[0], h[1]), reverse=not ascending)
        return [json.loads(h[2]) for h in hits[: max(0, int(limit))]]

    def close(self) -> None:
        pass


__all__ = [
    "DecisionLog",
    "DriftRecord",
    "MemoryDecisionLog",
    "SqliteDecisionLog",
    "json_safe",
]
