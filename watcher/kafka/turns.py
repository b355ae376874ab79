"""Turns received over HTTP (OTLP/HTTP), written to the telemetry topic before they are acknowledged.

The topic is the durable record: what ``POST /v1/traces`` answered 200 to is in Kafka (acks=all,
``RecordProducer``), so a restart loses nothing and every instance reads it in order with the rest,
keyed by agent (one agent's turns in one partition, as the daemon's partitioning needs). Turns the
broker did not acknowledge raise ``SourceError``: the endpoint answers 503 and the exporter sends the
request again (turns written twice are dropped by their event id).

    TurnWriter (Protocol: write, stop)
    ├── KafkaTurnWriter   the first telemetry topic (or ``otlp.http_topic``)
    └── NoTurnWriter      no Kafka (a daemon on a file): every write raises
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from watcher.errors import SourceError
from watcher.kafka.producer import OutRecord, RecordProducer

if TYPE_CHECKING:
    from watcher.config import KafkaSettings

__all__ = ["KafkaTurnWriter", "NoTurnWriter", "TurnWriter"]


class TurnWriter(Protocol):
    async def write(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Every ``(key, value)`` acknowledged by the broker, or ``SourceError``."""
        ...

    async def stop(self) -> None: ...


class KafkaTurnWriter:
    def __init__(self, producer: RecordProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    @classmethod
    def for_kafka(cls, kafka: KafkaSettings, topic: str) -> KafkaTurnWriter:
        options = {
            "client_id": f"{kafka.client_id}-otlp",
            "request_timeout_ms": kafka.request_timeout_ms,
            "max_request_size": 8 << 20,  # a request's turns go in one batch
            **kafka.client_options(),
        }
        return cls(RecordProducer(kafka.bootstrap_servers, what="OTLP turns", client_options=options), topic)

    async def write(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        failed = await self.producer.send([OutRecord(self.topic, key, value) for key, value in records])
        if failed:
            why = self.producer.last_error
            raise SourceError(f"{len(failed)} of {len(records)} turns not written to {self.topic}: {why}")

    async def stop(self) -> None:
        await self.producer.stop()


class NoTurnWriter:
    """A daemon without Kafka has no topic to make received turns durable in."""

    async def write(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        raise SourceError("OTLP/HTTP needs Kafka: this daemon reads a file")

    async def stop(self) -> None:
        return None
