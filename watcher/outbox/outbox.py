"""The durable outbox: every decision, rollout change and drift signal reaches every sink, eventually.

Order of events: the daemon appends a decision to the decision log, then calls ``enqueue_*``, which
writes one *delivery* row per accepting sink into SQLite (one transaction, no network: a median of
~0.6 ms for one decision to six sinks, mostly JSON encoding; p99 ~10 ms at WAL checkpoints) and
wakes that sink's worker. Each sink has one worker task that sends its deliveries
(``watcher.outbox.delivery`` has the pacing):

* deliveries of one *lane* (a rollout, or a drift signal's agent) go in enqueue order: a region must
  be opened before it is closed and an incident triggered before it is resolved; lanes do not wait
  for each other, and among the lanes' heads that are due, rollbacks go first, then pauses;
* a delivery renders to one or more requests (``Sink.render``), rendered again before every attempt so
  it sees state stored by earlier deliveries (a Grafana region id, an open PagerDuty incident);
  requests already acknowledged are recorded per delivery and never repeated by a retry;
* every request carries an idempotency key, ``sha256(item_id|sink|request kind)``: the same on every
  retry and after a restart, so receivers can deduplicate (delivery is at-least-once);
* transient failures (``SinkError(permanent=False)``, timeouts, connection errors) are retried with
  exponential backoff and jitter, or after the receiver's ``Retry-After`` (not counted as a
  failure), for the sink's ``retry_for_s`` (three days by default); permanent ones (HTTP 400...) and
  deliveries out of time end ``failed``: kept, counted in ``watcher_outbox_failed_deliveries``,
  listed by ``deliveries(status="failed")`` and re-driven by ``redrive`` (or dismissed);
* a sink's worker waits for its own backlog only: a slow or dead sink never delays another sink, and
  never the consumer (``enqueue_*`` is synchronous and does no I/O but SQLite).

Deliveries still pending when ``run`` stops stay in the file and are sent by the next ``Outbox`` on
it. Delivered rows are pruned beyond ``retain_finished``; failed ones are kept. One ``Outbox`` per
file at a time. ``replace_sinks`` swaps the sinks of a running outbox (a configuration reload)
keeping every pending delivery; those of a removed sink stay in the file, unsent, until a sink of
that name returns.

Modules: ``store`` (the SQLite queue), ``delivery`` (workers, lanes, retries, idempotency keys),
``metrics`` (``watcher_outbox_*``); this one owns the items, enqueueing and the sinks' lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from watcher.backoff import Backoff
from watcher.clock import Clock, SystemClock
from watcher.contract import Action, Decision, Item, ItemKind, Severity, rfc3339
from watcher.outbox.delivery import REDELIVERY, Deliverer, idempotency_key
from watcher.outbox.metrics import OutboxMetrics, Outcome
from watcher.outbox.store import DeliveryRow, DeliveryStatus, OutboxStore, StoredSinkState
from watcher.sinks import Sink
from watcher.storage import json_safe

if TYPE_CHECKING:
    from watcher.judges import DriftSignal

__all__ = [
    "CHANGE_SCHEMA",
    "DeliveryStatus",
    "Outbox",
    "Outcome",
    "SinkSwap",
    "change_item",
    "decision_item",
    "drift_item",
    "idempotency_key",
    "lane_of",
]

log = logging.getLogger(__name__)

CHANGE_SCHEMA = "watcher.rollout_change/v1"
CHANGE_KINDS = ("started", "updated", "ended")


# --- items ----------------------------------------------------------------------------------------


def decision_item(d: Decision) -> Item:
    severity = {Action.ROLLBACK: Severity.CRITICAL, Action.PAUSE: Severity.WARNING}.get(
        d.action, Severity.INFO
    )
    return Item(
        ItemKind.DECISION,
        d.decision_id,
        json_safe(d.to_dict()),
        d.rollout.agent_id,
        d.rollout.environment,
        severity,
        float(d.ts),
    )


def change_item(kind: str, rollout: dict[str, Any], ts: float, marker: dict[str, Any] | None = None) -> Item:
    """A ``watcher.rollout_change/v1`` record: the rollout (without its marker history) and the marker
    that changed it (None when watcher started or ended it by itself)."""
    if kind not in CHANGE_KINDS:
        raise ValueError(f"unknown rollout change kind {kind!r} (known: {', '.join(CHANGE_KINDS)})")
    ro = {k: v for k, v in rollout.items() if k != "markers"}
    event = (marker or {}).get("event_id") or ""
    key = f"{ro['rollout_id']}|{kind}|{ro.get('state')}|{event}|{float(ts):.3f}"
    change_id = "chg-" + hashlib.sha256(key.encode()).hexdigest()[:24]
    record = {
        "schema": CHANGE_SCHEMA,
        "change_id": change_id,
        "kind": kind,
        "ts": rfc3339(ts),
        "ts_unix": float(ts),
        "rollout": ro,
        "marker": marker,
    }
    severity = (
        Severity.WARNING
        if kind == "ended" and ro.get("state") in ("rolled_back", "aborted")
        else Severity.INFO
    )
    return Item(
        ItemKind.MARKER, change_id, json_safe(record), ro["agent_id"], ro["environment"], severity, float(ts)
    )


def drift_item(s: DriftSignal) -> Item:
    return Item(
        ItemKind.DRIFT,
        s.signal_id,
        json_safe(s.to_dict()),
        s.agent_id,
        s.environment,
        Severity.WARNING if s.worse else Severity.INFO,
        float(s.ts),
    )


def lane_of(item: Item) -> str:
    """The ordering key of an item: its rollout (decisions and rollout changes), else its agent."""
    rollout = item.record.get("rollout")
    if isinstance(rollout, dict) and rollout.get("rollout_id"):
        return f"rollout/{rollout['rollout_id']}"
    return f"{item.kind.value}/{item.agent_id}/{item.environment}"


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
        retry_for_s: float | None = None,
        retry: Backoff = REDELIVERY,
        retain_finished: int = 10_000,
    ) -> None:
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be unique, got {names}")
        self.path = str(path)
        self.sinks = list(sinks)
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._store = OutboxStore(self.path)
        self._states = {s.name: StoredSinkState(self._store, s.name, self._clock) for s in self.sinks}
        self._wake = {s.name: asyncio.Event() for s in self.sinks}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._metrics = OutboxMetrics(
            registry if registry is not None else CollectorRegistry(),
            self._store,
            self._clock,
            lambda: [s.name for s in self.sinks],
        )
        for s in self.sinks:
            self._metrics.register(s.name)
        self._delivery = Deliverer(
            self._store,
            self._states,
            self._metrics,
            self._clock,
            self._rng,
            retry,
            retry_for_s,
            retain_finished,
        )

    # -- reconfiguration (a configuration reload) -------------------------------------------------
    async def replace_sinks(self, sinks: Sequence[Sink]) -> SinkSwap:
        """Deliver to ``sinks`` from now on, keeping every pending delivery.

        Matched by name. A sink passed as the very object already in use keeps its worker. A new
        object under a known name (its settings changed) takes over that name's pending deliveries,
        in order, and its stored state (Grafana region ids, open incidents): the old worker is
        cancelled (a request it had in flight is sent again by the new one, with the same idempotency
        key, as after a restart) and the old sink closed; its failed deliveries are re-driven (the
        new settings may be the fix: a corrected URL or token). A new name gets only what is enqueued from
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
        for n in replaced:
            again = self._store.redrive(self._clock.now(), sink=n)
            if again:
                log.info("outbox: sink %s was reconfigured: %d failed deliveries re-driven", n, len(again))
        for n in (*replaced, *added):
            self._wake[n] = asyncio.Event()
            self._wake[n].set()  # a replaced sink's backlog is picked up at once
            self._states.setdefault(n, StoredSinkState(self._store, n, self._clock))
        self.sinks = list(sinks)
        retired = [old[n] for n in (*replaced, *gone)]
        stopping = [t for n in (*replaced, *gone) if (t := self._workers.pop(n, None)) is not None]
        for n in gone:
            self._wake.pop(n, None)
            self._states.pop(n, None)
            self._metrics.unregister(n)  # orphaned_deliveries counts them now
        for n in added:
            self._metrics.register(n)
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
                log.warning(
                    "outbox: sink %s was removed with %d pending deliveries; they stay in %s, unsent "
                    "(configure a sink named %s again to deliver them)",
                    n,
                    count,
                    self.path,
                    n,
                )
        return SinkSwap(added, replaced, kept, removed)

    def _start_worker(self, sink: Sink) -> None:
        def current() -> bool:
            return not self._stopping and self._workers.get(sink.name) is asyncio.current_task()

        work = self._delivery.work(sink, self._wake[sink.name], current)
        self._workers[sink.name] = asyncio.create_task(work, name=f"outbox-{sink.name}")

    # -- enqueue (synchronous, no network) -------------------------------------------------------
    def enqueue_decisions(self, decisions: Sequence[Decision]) -> int:
        return self.enqueue([decision_item(d) for d in decisions])

    def enqueue_rollout_change(
        self, kind: str, rollout: dict[str, Any], ts: float, marker: dict[str, Any] | None = None
    ) -> int:
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
                    rows.setdefault(sink.name, []).append(
                        (
                            sink.name,
                            item.kind.value,
                            item.item_id,
                            text,
                            now,
                            now,
                            lane_of(item),
                            item.severity.rank,
                        )
                    )
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

    # -- queries -----------------------------------------------------------------------------------
    def deliveries(
        self, *, sink: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Newest first, for ``GET /v1/deliveries``. ``status``: pending, delivered, failed or
        dismissed (else ValueError)."""
        wanted = DeliveryStatus(status).value if status is not None else None
        rows = self._store.recent(sink, wanted, max(1, min(int(limit), 1000)))
        return [self._view(r) for r in rows]

    def delivery(self, seq: int) -> dict[str, Any] | None:
        row = self._store.get(seq)
        return self._view(row) if row is not None else None

    def _view(self, r: DeliveryRow) -> dict[str, Any]:
        item = json.loads(r.item)
        pending = r.status == DeliveryStatus.PENDING.value
        budget = self._budget(r.sink)
        return {
            "id": r.seq,
            "seq": r.seq,
            "sink": r.sink,
            "kind": r.item_kind,
            "item_id": r.item_id,
            "agent_id": item.get("agent_id"),
            "environment": item.get("environment"),
            "severity": item.get("severity"),
            "lane": r.lane,
            "status": r.status,
            "attempts": r.attempts,
            "enqueued_at": r.enqueued_at,
            "next_attempt_at": r.next_at if pending else None,
            # pending: when it ends failed if every attempt until then fails (later if throttled)
            "gives_up_at": r.enqueued_at + r.throttled_s + budget if pending and budget is not None else None,
            "finished_at": r.finished_at,
            "requests_done": json.loads(r.done),
            "last_error": r.last_error,
        }

    def _budget(self, sink: str) -> float | None:
        if self._delivery.retry_for_s is not None:
            return self._delivery.retry_for_s
        for s in self.sinks:
            if s.name == sink:
                return float(s.retry_for_s)
        return None  # a removed sink's deliveries wait for it to come back

    def redrive(self, *, seq: int | None = None, sink: str | None = None) -> list[int]:
        """Failed deliveries (one by id, every one of a sink, or all) pending again with a fresh
        budget, in their lanes' order; returns their ids. Their workers are woken."""
        again = self._store.redrive(self._clock.now(), seq=seq, sink=sink)
        if again:
            log.info("outbox: %d failed deliveries re-driven (%s)", len(again), sink or seq or "all")
            self._notify([s.name for s in self.sinks if s.name in self._wake])
        return again

    def dismiss(self, seq: int, why: str) -> bool:
        """A failed delivery an operator will not send: marked ``dismissed`` (kept, with ``why``)."""
        return self._store.dismiss(seq, self._clock.now(), why)

    def close(self) -> None:
        self._store.close()
