"""Delivering the outbox: each sink's worker, retries with backoff, idempotency keys.

``watcher.outbox`` describes the guarantees (per-sink order, at-least-once, requests already
acknowledged never repeated, permanent failures and deliveries out of attempts end ``failed``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import replace

from watcher.backoff import Backoff
from watcher.clock import Clock
from watcher.contract import Item
from watcher.errors import SinkError
from watcher.outbox.metrics import OutboxMetrics, Outcome
from watcher.outbox.store import DeliveryRow, DeliveryStatus, OutboxStore, StoredSinkState
from watcher.sinks import Sink

__all__ = ["REDELIVERY", "Deliverer", "idempotency_key"]

# the outbox's logger, as before the outbox was split in modules: log filters keep working
log = logging.getLogger("watcher.outbox")


# a sink that failed is tried again after 1 s, then less and less often, up to every 5 min; its own
# Retry-After wins, up to an hour
REDELIVERY = Backoff(initial_s=1.0, factor=2.0, max_s=300.0, jitter=0.2, max_hint_s=3600.0)


def idempotency_key(item_id: str, sink: str, request_kind: str) -> str:
    """Stable for one request of one item to one sink: the same on every retry and restart."""
    return "wo-" + hashlib.sha256(f"{item_id}|{sink}|{request_kind}".encode()).hexdigest()[:32]


class Deliverer:
    """Sends deliveries and records each outcome in the store and the metrics.

    ``states`` is the outbox's own mapping of sink name to stored state, which a reload changes in
    place. Every 256 finished deliveries, finished rows beyond ``retain_finished`` are pruned.
    """

    def __init__(
        self,
        store: OutboxStore,
        states: Mapping[str, StoredSinkState],
        metrics: OutboxMetrics,
        clock: Clock,
        rng: random.Random,
        retry: Backoff,
        max_attempts: int | None,
        retain_finished: int,
    ) -> None:
        self._store = store
        self._states = states
        self._metrics = metrics
        self._clock = clock
        self._rng = rng
        self._retry = retry
        self._max_attempts = max_attempts
        self._retain = retain_finished
        self._finished = 0

    async def work(self, sink: Sink, wake: asyncio.Event, current: Callable[[], bool]) -> None:
        """``sink``'s worker: runs while ``current()`` (this task is still the sink's worker and the
        outbox is not stopping); ``wake`` is set when something is enqueued for the sink."""
        while current():
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

    async def _attempt(self, sink: Sink, row: DeliveryRow) -> None:
        try:
            item = Item.from_json(row.item)
            requests = sink.render(item, self._states[sink.name])
        except Exception as exc:
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
                self._failed(
                    sink, row, f"timed out after {sink.timeout_s:g}s ({request.kind})", permanent=False
                )
                return
            except Exception as exc:
                self._failed(sink, row, f"{type(exc).__name__}: {exc}", permanent=False)
                return
            if request.remember and sent.state is not None:
                self._states[sink.name].put(request.remember, sent.state)
            done.append(request.kind)
            if len(done) < len(requests):
                self._store.update(row.seq, done=json.dumps(done))
        now = self._clock.now()
        self._store.update(
            row.seq,
            status=DeliveryStatus.DELIVERED.value,
            attempts=row.attempts + 1,
            finished_at=now,
            done=json.dumps(done),
            last_error=None,
        )
        self._metrics.deliveries.labels(sink.name, Outcome.DELIVERED.value).inc()
        self._metrics.latency.labels(sink.name).observe(max(0.0, now - row.enqueued_at))
        self._after_finish()

    def _failed(
        self, sink: Sink, row: DeliveryRow, error: str, *, permanent: bool, retry_after: float | None = None
    ) -> None:
        attempts = row.attempts + 1
        limit = self._max_attempts or sink.max_attempts
        now = self._clock.now()
        if permanent or attempts >= limit:
            why = error if permanent else f"gave up after {attempts} attempts: {error}"
            self._store.update(
                row.seq,
                status=DeliveryStatus.FAILED.value,
                attempts=attempts,
                finished_at=now,
                last_error=why,
            )
            self._metrics.deliveries.labels(sink.name, Outcome.FAILED_PERMANENT.value).inc()
            log.error("outbox: %s %s to sink %s failed: %s", row.item_kind, row.item_id, sink.name, why)
            self._after_finish()
            return
        delay = self._retry.delay(attempts, self._rng, retry_after)
        self._store.update(row.seq, attempts=attempts, next_at=now + delay, last_error=error)
        self._metrics.deliveries.labels(sink.name, Outcome.RETRIED.value).inc()
        log.info(
            "outbox: %s %s to sink %s: %s; retry %d in %.2fs",
            row.item_kind,
            row.item_id,
            sink.name,
            error,
            attempts + 1,
            delay,
        )

    def _after_finish(self) -> None:
        self._finished += 1
        if self._finished % 256 == 0:
            self._store.prune(self._retain)
