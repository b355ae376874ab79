"""Delivering the outbox: each sink's worker, lanes and priorities, retries for a time, idempotency keys.

``watcher.outbox`` describes the guarantees. How one sink's worker chooses and paces its attempts:

* **Lanes.** A delivery belongs to a lane (its rollout; a drift signal's agent): deliveries of one
  lane are sent in enqueue order (a Grafana region opened before it is closed, an incident triggered
  before it is resolved), lanes are independent. Among the lanes' first deliveries that are due, the
  one of highest priority goes first (a rollback, then a pause, then the rest), then the oldest.
* **Two clocks of backoff.** The *receiver* is paced as a whole: after a transient failure no request
  goes to the sink before ``Backoff.delay(consecutive failures)`` (``REDELIVERY``: capped at 60 s),
  or before the receiver's ``Retry-After``: a dead receiver is probed, not hammered, however many
  lanes wait. The *delivery* that failed also waits its own backoff, so one delivery the receiver
  keeps refusing (a 500 for that payload only) does not hold the other lanes back. The first success
  after failures makes every pending delivery of the sink due at once: when a receiver comes back,
  what waited is sent at once, rollbacks first, instead of each delivery sleeping out its own backoff.
* **Retry-After is not a failure.** A 429/503 with ``Retry-After`` sets the wait and is not counted in
  the backoff's exponent, and the time waited is not counted in the retry budget.
* **A budget of time, not of attempts.** A delivery that keeps failing transiently is retried until
  it has been pending for ``retry_for_s`` (the sink's; three days by default) not counting throttled
  time; then it ends ``failed``. Failed deliveries are kept, counted in
  ``watcher_outbox_failed_deliveries`` (alerting), listed by ``GET /v1/deliveries?state=failed`` and
  can be re-driven (``POST /v1/deliveries/{id}/retry``). A permanent error (HTTP 400...) fails at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from watcher.backoff import Backoff
from watcher.clock import Clock
from watcher.contract import Item
from watcher.errors import SinkError
from watcher.outbox.metrics import OutboxMetrics, Outcome
from watcher.outbox.store import DeliveryRow, DeliveryStatus, OutboxStore, StoredSinkState
from watcher.sinks import Sink

__all__ = ["REDELIVERY", "Deliverer", "idempotency_key", "pick"]

# the outbox's logger, as before the outbox was split in modules: log filters keep working
log = logging.getLogger("watcher.outbox")

_SLICE_S = 5.0  # sleeps in slices: a wall-clock step (NTP) must not strand a retry for hours


# a receiver that failed is tried again after 1 s, then less and less often, up to every minute (the
# longest a receiver that came back waits for its backlog); its own Retry-After wins, up to an hour
REDELIVERY = Backoff(initial_s=1.0, factor=2.0, max_s=60.0, jitter=0.2, max_hint_s=3600.0)


def idempotency_key(item_id: str, sink: str, request_kind: str) -> str:
    """Stable for one request of one item to one sink: the same on every retry and restart."""
    return "wo-" + hashlib.sha256(f"{item_id}|{sink}|{request_kind}".encode()).hexdigest()[:32]


def pick(heads: list[DeliveryRow], now: float) -> DeliveryRow | float | None:
    """The delivery to send now among the lanes' heads (highest priority, then oldest), else the time
    the first one falls due, else None (nothing pending)."""
    if not heads:
        return None
    due = [h for h in heads if h.next_at <= now]
    if not due:
        return min(h.next_at for h in heads)
    return min(due, key=lambda h: (-h.priority, h.seq))


@dataclass(slots=True)
class _Receiver:
    """One sink's receiver as a whole: consecutive plain failures, no request before ``until``, and
    whether it looked down (two failures in a row, or a Retry-After) since its last success."""

    failures: int = 0
    until: float = 0.0
    down: bool = False


class Deliverer:
    """Sends deliveries and records each outcome in the store and the metrics.

    ``states`` is the outbox's own mapping of sink name to stored state, which a reload changes in
    place. ``retry_for_s``, when given, replaces every sink's own budget. Every 256 finished
    deliveries, delivered rows beyond ``retain_finished`` are pruned.
    """

    def __init__(
        self,
        store: OutboxStore,
        states: Mapping[str, StoredSinkState],
        metrics: OutboxMetrics,
        clock: Clock,
        rng: random.Random,
        retry: Backoff,
        retry_for_s: float | None,
        retain_finished: int,
    ) -> None:
        self._store = store
        self._states = states
        self._metrics = metrics
        self._clock = clock
        self._rng = rng
        self._retry = retry
        self.retry_for_s = retry_for_s
        self._retain = retain_finished
        self._finished = 0

    async def work(self, sink: Sink, wake: asyncio.Event, current: Callable[[], bool]) -> None:
        """``sink``'s worker: runs while ``current()`` (this task is still the sink's worker and the
        outbox is not stopping); ``wake`` is set when something is enqueued for the sink."""
        receiver = _Receiver()
        while current():
            try:
                now = self._clock.now()
                if receiver.until > now:
                    await asyncio.sleep(min(receiver.until - now, _SLICE_S))
                    continue
                chosen = pick(self._store.heads(sink.name), now)
                if not isinstance(chosen, DeliveryRow):
                    # no await since heads(): an enqueue cannot have slipped in between
                    wake.clear()
                    wait = _SLICE_S if chosen is None else min(max(0.0, chosen - now), _SLICE_S)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(None if chosen is None else wait):
                            await wake.wait()
                    continue
                await self._attempt(sink, chosen, receiver)
            except asyncio.CancelledError:
                raise
            except Exception:  # the store or a sink bug: keep the worker alive, try again soon
                log.exception("outbox worker for sink %s failed; retrying in 1 s", sink.name)
                await asyncio.sleep(1.0)

    async def _attempt(self, sink: Sink, row: DeliveryRow, receiver: _Receiver) -> None:
        try:
            item = Item.from_json(row.item)
            requests = sink.render(item, self._states[sink.name])
        except Exception as exc:
            self._failed(sink, row, receiver, f"cannot render: {type(exc).__name__}: {exc}", permanent=True)
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
                self._failed(
                    sink, row, receiver, str(exc), permanent=exc.permanent, retry_after=exc.retry_after
                )
                return
            except TimeoutError:
                why = f"timed out after {sink.timeout_s:g}s ({request.kind})"
                self._failed(sink, row, receiver, why, permanent=False)
                return
            except Exception as exc:
                self._failed(sink, row, receiver, f"{type(exc).__name__}: {exc}", permanent=False)
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
        if receiver.down:
            # the receiver answers again: what waited for it goes now, not after each one's backoff
            # (not after a single failure: one delivery the receiver refuses must not be retried
            # after every success of the others)
            n = self._store.make_due(sink.name, now)
            if n:
                log.info("outbox: sink %s answers again; %d pending deliveries due now", sink.name, n)
        receiver.failures, receiver.until, receiver.down = 0, 0.0, False
        self._after_finish()

    def _failed(
        self,
        sink: Sink,
        row: DeliveryRow,
        receiver: _Receiver,
        error: str,
        *,
        permanent: bool,
        retry_after: float | None = None,
    ) -> None:
        attempts = row.attempts + 1
        now = self._clock.now()
        budget = self.retry_for_s if self.retry_for_s is not None else sink.retry_for_s
        spent = now - row.enqueued_at - row.throttled_s
        if permanent or spent >= budget:
            why = error if permanent else f"gave up after {_duration(spent)} and {attempts} attempts: {error}"
            self._store.update(
                row.seq,
                status=DeliveryStatus.FAILED.value,
                attempts=attempts,
                finished_at=now,
                last_error=why,
            )
            self._metrics.deliveries.labels(sink.name, Outcome.FAILED_PERMANENT.value).inc()
            log.error(
                "outbox: %s %s to sink %s failed (kept; re-drive with POST /v1/deliveries/%d/retry): %s",
                row.item_kind,
                row.item_id,
                sink.name,
                row.seq,
                why,
            )
            self._after_finish()
            return
        if retry_after is not None:
            # the receiver asked for a pause: honoured for the whole receiver, not a failure
            delay = self._retry.delay(0, self._rng, hint=retry_after)
            receiver.until = max(receiver.until, now + delay)
            receiver.down = True
            self._store.update(
                row.seq,
                attempts=attempts,
                next_at=now + delay,
                throttled_s=row.throttled_s + delay,
                last_error=error,
            )
            self._metrics.deliveries.labels(sink.name, Outcome.THROTTLED.value).inc()
        else:
            receiver.failures += 1
            receiver.down = receiver.down or receiver.failures >= 2
            receiver.until = now + self._retry.delay(receiver.failures, self._rng)
            delay = self._retry.delay(row.failures + 1, self._rng)
            self._store.update(
                row.seq, attempts=attempts, failures=row.failures + 1, next_at=now + delay, last_error=error
            )
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


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.2f} s"
