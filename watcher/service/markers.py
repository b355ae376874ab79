"""Deployment markers received over HTTP (``POST /v1/deployments``, the Flagger hooks), made durable
before they are applied and written to the deployments topic.

``publish(marker)`` appends the marker to the spool (``watcher.kafka.spool``, stream "marker": a
local file, synchronous=FULL) and returns once it is there, so the HTTP answer (202 with the
marker's id) means the marker cannot be lost; a forwarder writes it to the deployments topic as soon
as the broker takes it (at once, normally: ``publish`` waits up to ``confirm_s`` for that and says
whether it happened), across a broker outage and across restarts. Every instance and every restart
then sees the marker in order with the others; the copy read back from the topic is not applied
again (the engine knows the marker's event id).

``NullMarkerPublisher`` is for a daemon without a deployments topic (file sources, tests): markers
are applied, not written anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from watcher.clock import Clock, SystemClock
from watcher.config import KafkaSettings
from watcher.contract import Deployment, encode_deployment
from watcher.kafka import OutRecord, RecordProducer, Spool, SpoolForwarder

__all__ = ["MarkerPublisher", "Markers", "NullMarkerPublisher"]

log = logging.getLogger(__name__)

STREAM = "marker"  # the markers' stream in the spool
NOT_READY_AFTER_S = 30.0  # markers waiting for the deployments topic longer than this: not ready


class Markers(Protocol):
    async def start(self) -> None: ...

    async def publish(self, marker: Deployment) -> bool:
        """Durable on return (or raises); True when the deployments topic has it too."""
        ...

    async def stop(self) -> None: ...

    def health(self) -> str | None: ...


class MarkerPublisher:
    def __init__(
        self, kafka: KafkaSettings, spool: Spool, *, clock: Clock | None = None, confirm_s: float = 2.0
    ) -> None:
        self._topics = kafka.deployments_topics
        self._spool = spool
        self._clock = clock or SystemClock()
        self._confirm_s = confirm_s
        producer = RecordProducer(
            kafka.bootstrap_servers,
            what="markers",
            client_options={
                "client_id": f"{kafka.client_id}-markers",
                "request_timeout_ms": kafka.request_timeout_ms,
                **kafka.client_options(),
            },
        )
        self.forwarder = SpoolForwarder(spool, STREAM, producer, clock=self._clock)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # markers spooled by an earlier run (the broker was away when it stopped) go first
        self._task = asyncio.create_task(self.forwarder.run(), name="marker-forwarder")

    async def publish(self, marker: Deployment) -> bool:
        if not self._topics:
            return False
        record = OutRecord(self._topics[0], marker.agent_id.encode(), encode_deployment(marker))
        (seq,) = self._spool.append(STREAM, [record], self._clock.now())  # durable: a CheckpointError if not
        self.forwarder.wake()
        if await self.forwarder.wait_for(seq, self._confirm_s):
            return True
        log.warning(
            "marker %s is safe in the spool; the deployments topic %s has not taken it yet (%s)",
            marker.event_id,
            self._topics[0],
            self.forwarder.producer.last_error or "no acknowledgement yet",
        )
        return False

    def health(self) -> str | None:
        stats = self._spool.stats(STREAM)
        if stats.oldest_at is None or self._clock.now() - stats.oldest_at < NOT_READY_AFTER_S:
            return None
        return (
            f"{stats.records} markers wait in the spool for the deployments topic "
            f"({self.forwarder.producer.last_error or 'not acknowledged'})"
        )

    async def stop(self) -> None:
        self.forwarder.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.forwarder.producer.stop()


class NullMarkerPublisher:
    async def start(self) -> None:
        return None

    async def publish(self, marker: Deployment) -> bool:
        return False

    async def stop(self) -> None:
        return None

    def health(self) -> str | None:
        return None
