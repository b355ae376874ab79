"""Deployment markers received over HTTP, written to the deployments topic.

Every instance and every restart then sees them in order with the others: the topic is the durable
record, and duplicates are ignored by event id. ``NullMarkerPublisher`` is for a daemon without
Kafka (file sources, tests): markers are applied, not republished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from watcher.config import KafkaSettings
from watcher.contract import Deployment, encode_deployment

__all__ = ["MarkerPublisher", "Markers", "NullMarkerPublisher"]

log = logging.getLogger(__name__)


class Markers(Protocol):
    async def start(self) -> None: ...

    async def publish(self, marker: Deployment) -> None: ...

    async def stop(self) -> None: ...


class MarkerPublisher:
    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self._producer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        kafka = self._kafka
        self._producer = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=f"{kafka.client_id}-markers",
            acks="all",
            request_timeout_ms=kafka.request_timeout_ms,
            **kafka.client_options(),
        )
        try:
            await self._producer.start()
        except Exception as exc:  # the broker may be down at start-up: retried on first use
            # (the source says once, with a hint, that the broker does not answer)
            log.debug("marker producer not connected yet: %r", exc)

    async def publish(self, marker: Deployment) -> None:
        topics = self._kafka.deployments_topics
        if self._producer is None or not topics:
            return
        await asyncio.wait_for(
            self._producer.send_and_wait(topics[0], encode_deployment(marker), key=marker.agent_id.encode()),
            timeout=10,
        )

    async def stop(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()


class NullMarkerPublisher:
    async def start(self) -> None:
        return None

    async def publish(self, marker: Deployment) -> None:
        return None

    async def stop(self) -> None:
        return None
