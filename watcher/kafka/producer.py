"""Turns received over HTTP (OTLP/HTTP), written to the telemetry topic before they are acknowledged.

The topic is the durable record: what ``POST /v1/traces`` answered 200 to is in Kafka (acks=all),
so a restart loses nothing and every instance reads it in order with the rest, keyed by agent (one
agent's turns in one partition, as the daemon's partitioning needs). A write that fails raises
``SourceError``; the endpoint then answers 503 and the exporter retries (duplicates are dropped by
event id).

    TurnWriter (Protocol: start, write, stop)
    ├── KafkaTurnWriter   the first telemetry topic (or ``otlp.http_topic``)
    └── NoTurnWriter      no Kafka (a daemon on a file): every write raises
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from watcher.errors import SourceError

if TYPE_CHECKING:
    from watcher.config import KafkaSettings

__all__ = ["KafkaTurnWriter", "NoTurnWriter", "TurnWriter"]

log = logging.getLogger(__name__)


class TurnWriter(Protocol):
    async def start(self) -> None: ...

    async def write(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Every ``(key, value)`` acknowledged by the broker, or ``SourceError``."""
        ...

    async def stop(self) -> None: ...


class KafkaTurnWriter:
    def __init__(self, kafka: KafkaSettings, topic: str, *, timeout_s: float = 10.0) -> None:
        self._kafka = kafka
        self.topic = topic
        self._timeout_s = timeout_s
        self._producer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        kafka = self._kafka
        self._producer = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=f"{kafka.client_id}-otlp",
            acks="all",
            linger_ms=2,
            max_request_size=8 << 20,
            request_timeout_ms=kafka.request_timeout_ms,
            **kafka.client_options(),
        )
        try:
            await self._producer.start()
        except Exception as exc:  # the broker may be down at start-up: a write then answers 503
            log.warning("OTLP/HTTP producer not connected yet: %s", exc)

    async def write(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        if not records:
            return
        if self._producer is None:
            raise SourceError("the telemetry producer is not started")
        try:
            sends = [await self._producer.send(self.topic, value, key=key) for key, value in records]
            await asyncio.wait_for(asyncio.gather(*sends), timeout=self._timeout_s)
        except Exception as exc:  # unreachable broker, timeout, a record too large: the client retries
            raise SourceError(f"turns not written to {self.topic}: {type(exc).__name__}: {exc}") from exc

    async def stop(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()


class NoTurnWriter:
    """A daemon without Kafka has no topic to make received turns durable in."""

    async def start(self) -> None:
        return None

    async def write(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        raise SourceError("OTLP/HTTP needs Kafka: this daemon reads a file")

    async def stop(self) -> None:
        return None
