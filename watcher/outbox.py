"""The durable outbox: every decision, rollout change and drift signal reaches every sink, eventually.

Order of events: the daemon appends a decision to the decision log, then calls ``enqueue_*``, which
writes one *delivery* row per accepting sink into SQLite (one transaction, no network: a median of
~0.6 ms for one decision to six sinks, mostly JSON encoding; p99 ~10 ms at WAL checkpoints) and
wakes that sink's worker. Each sink has one worker task that sends its deliveries in enqueue order:

* a delivery renders to one or more requests (``Sink.render``), rendered again before every attempt so
  it sees state stored by earlier deliveries (a Grafana region id, an open PagerDuty incident);
  requests already acknowledged are recorded per delivery and never repeated by a retry;
* every request carries an idempotency key, ``sha256(item_id|sink|request kind)``: the same on every
  retry and after a restart, so receivers can deduplicate (delivery is at-least-once);
* transient failures (``SinkError(permanent=False)``, timeouts, connection errors) are retried with
  exponential backoff and jitter, or after the receiver's ``Retry-After``; permanent ones (HTTP 400...)
  and deliveries out of attempts end ``failed``, logged, counted and visible in ``deliveries()``;
* a sink's worker waits for its own backlog only: a slow or dead sink never delays another sink, and
  never the consumer (``enqueue_*`` is synchronous and does no I/O but SQLite).

Strict per-sink order is deliberate: a region must be opened before it is closed and an incident
triggered before it is resolved. A delivery that keeps failing holds its sink back for at most
``max_attempts`` attempts; 429s and outages affect the whole receiver anyway.

Deliveries still pending when ``run`` stops stay in the file and are sent by the next ``Outbox`` on
it. Finished rows are pruned beyond ``retain_finished``. One ``Outbox`` per file at a time.
``replace_sinks`` swaps the sinks of a running outbox (a configuration reload) keeping every pending
delivery; those of a removed sink stay in the file, unsent, until a sink of that name returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from watcher.clock import Clock, SystemClock
from watcher.decisions import json_safe
from watcher.errors import CheckpointError, SinkError
from watcher.sinks import Item, ItemKind, Severity, Sink
from watcher.sqlite_store import open_store
from watcher.verdicts import Action, Decision, rfc3339

if TYPE_CHECKING:
    from watcher.drift import DriftSignal

__all__ = [
    "CHANGE_SCHEMA",
    "DeliveryStatus",
    "Outbox",
    "Outcome",
    "RetryPolicy",
    "SinkSwap",
    "change_item",
    "decision_item",
    "drift_item",
    "idempotency_key",
]

log = logging.getLogger(__name__)

CHANGE_SCHEMA = "watcher.rollout_change/v1"
CHANGE_KINDS = ("started", "updated", "ended")
_SCHEMA_VERSION = 1
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class DeliveryStatus(str, Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # permanent error, or out of attempts


class Outcome(str, Enum):
    """Label values of ``watcher_outbox_deliveries_total``."""

    DELIVERED = "delivered"
    FAILED_PERMANENT = "failed_permanent"
    RETRIED = "retried"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff between attempts: ``base_s * factor**(n-1)`` capped at ``max_s``, minus up to
    ``jitter`` of it at random (instances recovering together do not retry in step). A receiver's
    ``Retry-After`` wins over the backoff, capped at ``max_retry_after_s``."""

    base_s: float = 1.0
    factor: float = 2.0
    max_s: float = 300.0
    jitter: float = 0.2
    max_retry_after_s: float = 3600.0

    def delay(self, attempts: int, rng: random.Random, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(0.0, retry_after), self.max_retry_after_s)
        d = min(self.max_s, self.base_s * self.factor ** max(0, attempts - 1))
        return d * (1.0 - self.jitter * rng.random())


def idempotency_key(item_id: str, sink: str, request_kind: str) -> str:
    """Stable for one request of one item to one sink: the same on every retry and restart."""
    return "wo-" + hashlib.sha256(f"{item_id}|{sink}|{request_kind}".encode()).hexdigest()[:32]


# --- items ----------------------------------------------------------------------------------------

def decision_item(d: Decision) -> Item:
    severity = {Action.ROLLBACK: Severity.CRITICAL, Action.PAUSE: Severity.WARNING}.get(d.action, Severity.INFO)
    return Item(ItemKind.DECISION, d.decision_id, json_safe(d.to_dict()), d.rollout.agent_id,
                d.rollout.environment, severity, float(d.ts))


def change_item(kind: str, rollout: dict[str, Any], ts: float, marker: dict[str, Any] | None = None) -> Item:
    """A ``watcher.rollout_change/v1`` record: the rollout (without its marker history) and the marker
    that changed it (None when watcher started or ended it by itself)."""
    if kind not in CHANGE_KINDS:
        raise ValueError(f"unknown rollout change kind {kind!r} (known: {', '.join(CHANGE_KINDS)})")
    ro = {k: v for k, v in rollout.items() if k != "markers"}
    event = (marker or {}).get("event_id") or ""
    key = f"{ro['rollout_id']}|{kind}|{ro.get('state')}|{event}|{float(ts):.3f}"
    change_id = "chg-" + hashlib.sha256(key.encode()).hexdigest()[:24]
    record = {"schema": CHANGE_SCHEMA, "change_id": change_id, "kind": kind, "ts": rfc3339(ts),
              "ts_unix": float(ts), "rollout": ro, "marker": marker}
    severity = Severity.WARNING if kind == "ended" and ro.get("state") in ("rolled_back", "aborted") else Severity.INFO
    return Item(ItemKind.MARKER, change_id, json_safe(record), ro["agent_id"], ro["environment"], severity,
                float(ts))


def drift_item(s: DriftSignal) -> Item:
    return Item(ItemKind.DRIFT, s.signal_id, json_safe(s.to_dict()), s.agent_id, s.environment,
                Severity.WARNING if s.worse else Severity.INFO, float(s.ts))


# --- the store ------------------------------------------------------------------------------------

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
_COLUMNS = "seq, sink, item_kind, item_id, item, status, attempts, enqueued_at, next_at, finished_at, done, last_error"


@dataclass(frozen=True, slots=True)
class _Row:
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


class _Store:
    """SQLite (WAL) behind a lock; every method is one short transaction."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.closed = False
        self._db = open_store(path, _DDL, meta_table="outbox_meta", schema_version=_SCHEMA_VERSION, what="outbox")

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
        sql = ("INSERT INTO outbox_deliveries (sink, item_kind, item_id, item, status, enqueued_at, next_at) "
               "VALUES (?, ?, ?, ?, 'pending', ?, ?) ON CONFLICT (sink, item_kind, item_id) DO NOTHING")

        def run(db: sqlite3.Connection) -> dict[str, int]:
            added: dict[str, int] = {}
            for sink, rows in rows_by_sink.items():
                before = db.total_changes
                db.executemany(sql, rows)
                added[sink] = db.total_changes - before
            return added

        return self._tx(run)  # type: ignore[no-any-return]

    def head(self, sink: str) -> _Row | None:
        rows = self.read(f"SELECT {_COLUMNS} FROM outbox_deliveries WHERE sink=? AND status='pending' "
                          "ORDER BY seq LIMIT 1", (sink,))
        return _Row(*rows[0]) if rows else None

    def update(self, seq: int, **fields: Any) -> None:
        names = ", ".join(f"{k}=?" for k in fields)
        self._tx(lambda db: db.execute(f"UPDATE outbox_deliveries SET {names} WHERE seq=?", (*fields.values(), seq)))

    def prune(self, retain: int) -> None:
        self._tx(lambda db: db.execute(
            "DELETE FROM outbox_deliveries WHERE status != 'pending' AND seq <= (SELECT seq FROM "
            "outbox_deliveries WHERE status != 'pending' ORDER BY seq DESC LIMIT 1 OFFSET ?)", (retain,)))

    def pending_by_sink(self) -> dict[str, int]:
        rows = self.read("SELECT sink, COUNT(*) FROM outbox_deliveries WHERE status='pending' GROUP BY sink")
        return {str(name): int(n) for name, n in rows}

    def pending_stats(self, sink: str) -> tuple[int, float | None]:
        rows = self.read("SELECT COUNT(*), MIN(enqueued_at) FROM outbox_deliveries WHERE sink=? AND status='pending'",
                          (sink,))
        return (int(rows[0][0]), rows[0][1]) if rows else (0, None)

    def state_get(self, sink: str, key: str) -> Any:
        rows = self.read("SELECT value FROM outbox_sink_state WHERE sink=? AND key=?", (sink, key))
        return json.loads(rows[0][0]) if rows else None

    def state_put(self, sink: str, key: str, value: Any, now: float) -> None:
        text = json.dumps(value, allow_nan=False)
        self._tx(lambda db: db.execute(
            "INSERT INTO outbox_sink_state VALUES (?, ?, ?, ?) ON CONFLICT (sink, key) DO UPDATE SET "
            "value=excluded.value, updated_at=excluded.updated_at", (sink, key, text, now)))

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                self._db.close()


class _SinkState:
    """One sink's view of the persistent state (``sinks.SinkState``)."""

    def __init__(self, store: _Store, sink: str, clock: Clock) -> None:
        self._store, self._sink, self._clock = store, sink, clock

    def get(self, key: str) -> Any:
        return self._store.state_get(self._sink, key)

    def put(self, key: str, value: Any) -> None:
        self._store.state_put(self._sink, key, value, self._clock.now())


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.backlog = Gauge("watcher_outbox_backlog", "Deliveries pending per sink", ["sink"], registry=registry)
        self.deliveries = Counter("watcher_outbox_deliveries", "Delivery attempts by outcome",
                                  ["sink", "outcome"], registry=registry)
        self.latency = Histogram("watcher_outbox_delivery_latency_seconds", "Enqueue to delivered",
                                 ["sink"], buckets=LATENCY_BUCKETS, registry=registry)
        self.oldest = Gauge("watcher_outbox_oldest_pending_age_seconds",
                            "Age of the oldest pending delivery per sink (0 when none)", ["sink"], registry=registry)
        self.orphaned = Gauge("watcher_outbox_orphaned_deliveries",
                              "Pending deliveries of sinks no longer configured (kept, not sent)", registry=registry)


@dataclass(frozen=True, slots=True)
class SinkSwap:
    """What ``Outbox.replace_sinks`` did, by sink name."""

    added: tuple[str, ...] = ()  # new sinks: they get what is enqueued from now on
    replaced: tuple[str, ...] = ()  # same name, new settings: their pending deliveries go to the new one
    kept: tuple[str, ...] = ()  # the same sink object: its worker was not touched
    removed: dict[str, int] = field(default_factory=dict)  # name -> pending deliveries left in the store


# --- the outbox -----------------------------------------------------------------------------------

class Outbox:
    def __init__(
        self,
        path: str | Path,
        sinks: Sequence[Sink],
        *,
        registry: CollectorRegistry | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        max_attempts: int | None = None,
        retry: RetryPolicy | None = None,
        retain_finished: int = 10_000,
    ) -> None:
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be unique, got {names}")
        self.path = str(path)
        self.sinks = list(sinks)
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._max_attempts = max_attempts
        self._retry = retry or RetryPolicy()
        self._retain = retain_finished
        self._store = _Store(self.path)
        self._states = {s.name: _SinkState(self._store, s.name, self._clock) for s in self.sinks}
        self._wake = {s.name: asyncio.Event() for s in self.sinks}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._finished = 0
        self._metrics = _Metrics(registry if registry is not None else CollectorRegistry())
        for s in self.sinks:
            self._register(s.name)
        self._metrics.orphaned.set_function(self._orphaned)

    def _register(self, name: str) -> None:
        # computed at scrape time from the store: true after a restart, no bookkeeping to drift
        self._metrics.backlog.labels(name).set_function(self._backlog_fn(name))
        self._metrics.oldest.labels(name).set_function(self._oldest_fn(name))
        for outcome in Outcome:
            self._metrics.deliveries.labels(name, outcome.value)

    def _orphaned(self) -> float:
        names = {s.name for s in self.sinks}
        return float(sum(n for sink, n in self._store.pending_by_sink().items() if sink not in names))

    # -- reconfiguration (a configuration reload) -------------------------------------------------
    async def replace_sinks(self, sinks: Sequence[Sink]) -> SinkSwap:
        """Deliver to ``sinks`` from now on, keeping every pending delivery.

        Matched by name. A sink passed as the very object already in use keeps its worker. A new
        object under a known name (its settings changed) takes over that name's pending deliveries,
        in order, and its stored state (Grafana region ids, open incidents): the old worker is
        cancelled (a request it had in flight is sent again by the new one, with the same idempotency
        key, as after a restart) and the old sink closed. A new name gets only what is enqueued from
        now on. A name that disappears keeps its pending deliveries in the store, unsent and counted in
        ``watcher_outbox_orphaned_deliveries`` (and listed by ``deliveries(sink=...)``): bringing the
        sink back under the same name delivers them. Raises ValueError (and changes nothing) on
        duplicate names.
        """
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be unique, got {names}")
        old = {s.name: s for s in self.sinks}
        new = {s.name: s for s in sinks}
        kept = tuple(n for n in names if n in old and old[n] is new[n])
        replaced = tuple(n for n in names if n in old and old[n] is not new[n])
        added = tuple(n for n in names if n not in old)
        gone = [n for n in old if n not in new]
        pending = self._store.pending_by_sink()
        # the new set in one step (no await in between): an enqueue sees the old set or the new one
        for n in (*replaced, *added):
            self._wake[n] = asyncio.Event()
            self._wake[n].set()  # a replaced sink's backlog is picked up at once
            self._states.setdefault(n, _SinkState(self._store, n, self._clock))
        self.sinks = list(sinks)
        retired = [old[n] for n in (*replaced, *gone)]
        stopping = [t for n in (*replaced, *gone) if (t := self._workers.pop(n, None)) is not None]
        for n in gone:
            self._wake.pop(n, None)
            self._states.pop(n, None)
            for gauge in (self._metrics.backlog, self._metrics.oldest):  # orphaned_deliveries counts them now
                with contextlib.suppress(KeyError):
                    gauge.remove(n)
        for n in added:
            self._register(n)
        if self._loop is not None and not self._stopping:
            for n in (*replaced, *added):
                self._start_worker(new[n])
        for t in stopping:
            t.cancel()
        await asyncio.gather(*stopping, return_exceptions=True)
        for s in retired:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.aclose(), 2.0)
        removed = {n: pending.get(n, 0) for n in gone}
        for n, count in removed.items():
            if count:
                log.warning("outbox: sink %s was removed with %d pending deliveries; they stay in %s, unsent "
                            "(configure a sink named %s again to deliver them)", n, count, self.path, n)
        return SinkSwap(added, replaced, kept, removed)

    def _start_worker(self, sink: Sink) -> None:
        self._workers[sink.name] = asyncio.create_task(self._worker(sink), name=f"outbox-{sink.name}")

    # -- enqueue (synchronous, no network) -------------------------------------------------------
    def enqueue_decisions(self, decisions: Sequence[Decision]) -> int:
        return self.enqueue([decision_item(d) for d in decisions])

    def enqueue_rollout_change(self, kind: str, rollout: dict[str, Any], ts: float,
                               marker: dict[str, Any] | None = None) -> int:
        return self.enqueue([change_item(kind, rollout, ts, marker)])

    def enqueue_drift(self, signals: Sequence[DriftSignal]) -> int:
        return self.enqueue([drift_item(s) for s in signals])

    def enqueue(self, items: Sequence[Item]) -> int:
        """One delivery per (item, accepting sink) in one transaction; returns how many are new (an
        item already queued or delivered to a sink is not queued again: replays are no-ops)."""
        if not items:
            return 0
        now = self._clock.now()
        rows: dict[str, list[tuple[Any, ...]]] = {}
        for item in items:
            text: str | None = None
            for sink in self.sinks:
                if sink.accepts(item):
                    text = text or item.to_json()
                    rows.setdefault(sink.name, []).append((sink.name, item.kind.value, item.item_id, text, now, now))
        if not rows:
            return 0
        added = self._store.insert(rows)
        self._notify([name for name, n in added.items() if n])
        return sum(added.values())

    def _notify(self, names: list[str]) -> None:
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for name in names:
            if loop is not None and running is not loop:
                loop.call_soon_threadsafe(self._wake[name].set)
            else:
                self._wake[name].set()

    # -- delivery ------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set, then return at once; what is pending stays in the store."""
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        for s in self.sinks:
            self._start_worker(s)
        try:
            await stop.wait()
        finally:
            self._stopping = True
            workers = list(self._workers.values())
            self._workers.clear()
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            for s in self.sinks:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(s.aclose(), 2.0)
            self._loop = None

    async def _worker(self, sink: Sink) -> None:
        wake = self._wake[sink.name]
        while not self._stopping and self._workers.get(sink.name) is asyncio.current_task():
            try:
                row = self._store.head(sink.name)
                if row is None:
                    wake.clear()  # no await since head(): an enqueue cannot have slipped in between
                    await wake.wait()
                    continue
                delay = row.next_at - self._clock.now()
                if delay > 0:
                    # in slices: a wall-clock step (NTP) must not strand a retry for hours
                    await asyncio.sleep(min(delay, 5.0))
                    continue
                await self._attempt(sink, row)
            except asyncio.CancelledError:
                raise
            except Exception:  # the store or a sink bug: keep the worker alive, try again soon
                log.exception("outbox worker for sink %s failed; retrying in 1 s", sink.name)
                await asyncio.sleep(1.0)

    async def _attempt(self, sink: Sink, row: _Row) -> None:
        try:
            item = Item.from_json(row.item)
            requests = sink.render(item, self._states[sink.name])
        except Exception as exc:  # noqa: BLE001 - a record a sink cannot render will not render next time either
            self._failed(sink, row, f"cannot render: {type(exc).__name__}: {exc}", permanent=True)
            return
        done: list[str] = json.loads(row.done)
        for request in requests:
            if request.kind in done:
                continue
            request = replace(request, idempotency_key=idempotency_key(item.item_id, sink.name, request.kind))
            try:
                # asyncio.timeout, not wait_for: wait_for can swallow a cancellation that races with the
                # inner call finishing (Python 3.11), and the worker would outlive ``run``
                async with asyncio.timeout(sink.timeout_s):
                    sent = await sink.send(request)
            except SinkError as exc:
                self._failed(sink, row, str(exc), permanent=exc.permanent, retry_after=exc.retry_after)
                return
            except TimeoutError:
                self._failed(sink, row, f"timed out after {sink.timeout_s:g}s ({request.kind})", permanent=False)
                return
            except Exception as exc:  # noqa: BLE001 - a sink's own bug or an unwrapped client error: retry
                self._failed(sink, row, f"{type(exc).__name__}: {exc}", permanent=False)
                return
            if request.remember and sent.state is not None:
                self._states[sink.name].put(request.remember, sent.state)
            done.append(request.kind)
            if len(done) < len(requests):
                self._store.update(row.seq, done=json.dumps(done))
        now = self._clock.now()
        self._store.update(row.seq, status=DeliveryStatus.DELIVERED.value, attempts=row.attempts + 1,
                           finished_at=now, done=json.dumps(done), last_error=None)
        self._metrics.deliveries.labels(sink.name, Outcome.DELIVERED.value).inc()
        self._metrics.latency.labels(sink.name).observe(max(0.0, now - row.enqueued_at))
        self._after_finish()

    def _failed(self, sink: Sink, row: _Row, error: str, *, permanent: bool, retry_after: float | None = None) -> None:
        attempts = row.attempts + 1
        limit = self._max_attempts or sink.max_attempts
        now = self._clock.now()
        if permanent or attempts >= limit:
            why = error if permanent else f"gave up after {attempts} attempts: {error}"
            self._store.update(row.seq, status=DeliveryStatus.FAILED.value, attempts=attempts, finished_at=now,
                               last_error=why)
            self._metrics.deliveries.labels(sink.name, Outcome.FAILED_PERMANENT.value).inc()
            log.error("outbox: %s %s to sink %s failed: %s", row.item_kind, row.item_id, sink.name, why)
            self._after_finish()
            return
        delay = self._retry.delay(attempts, self._rng, retry_after)
        self._store.update(row.seq, attempts=attempts, next_at=now + delay, last_error=error)
        self._metrics.deliveries.labels(sink.name, Outcome.RETRIED.value).inc()
        log.info("outbox: %s %s to sink %s: %s; retry %d in %.2fs", row.item_kind, row.item_id, sink.name, error,
                 attempts + 1, delay)

    def _after_finish(self) -> None:
        self._finished += 1
        if self._finished % 256 == 0:
            self._store.prune(self._retain)

    def _backlog_fn(self, sink: str) -> Callable[[], float]:
        return lambda: float(self._store.pending_stats(sink)[0])

    def _oldest_fn(self, sink: str) -> Callable[[], float]:
        def age() -> float:
            oldest = self._store.pending_stats(sink)[1]
            return 0.0 if oldest is None else max(0.0, self._clock.now() - oldest)

        return age

    # -- queries -----------------------------------------------------------------------------------
    def deliveries(self, *, sink: str | None = None, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first, for ``GET /v1/deliveries``. ``status``: pending, delivered or failed (else ValueError)."""
        where, args = [], []
        if sink is not None:
            where.append("sink=?")
            args.append(sink)
        if status is not None:
            where.append("status=?")
            args.append(DeliveryStatus(status).value)
        sql = f"SELECT {_COLUMNS} FROM outbox_deliveries"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        rows = [_Row(*r) for r in self._store.read(sql, (*args, max(1, min(int(limit), 1000))))]
        out = []
        for r in rows:
            item = json.loads(r.item)
            out.append({
                "seq": r.seq, "sink": r.sink, "kind": r.item_kind, "item_id": r.item_id,
                "agent_id": item.get("agent_id"), "environment": item.get("environment"),
                "severity": item.get("severity"), "status": r.status, "attempts": r.attempts,
                "enqueued_at": r.enqueued_at,
                "next_attempt_at": r.next_at if r.status == DeliveryStatus.PENDING.value else None,
                "finished_at": r.finished_at, "requests_done": json.loads(r.done), "last_error": r.last_error,
            })
        return out

    def close(self) -> None:
        self._store.close()

