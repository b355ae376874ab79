"""Kafka sink: decision records on the decisions topic, rollout changes on the markers topic.

Records are the JSON records as they are (``watcher.decision/v1``, ``watcher.rollout_change/v1``,
``watcher.drift/v1``), keyed by ``agent_id`` so one agent's records stay in order in one partition,
with an ``idempotency-key`` header. The producer uses ``acks=all`` and is *not* idempotent: Tansu (the
embedded broker) rejects ``InitProducerId``, and consumers deduplicate on ``decision_id`` anyway (a
retried send after a lost acknowledgement can write a record twice: at-least-once).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from watcher.config import Topic, parse_bootstrap_servers
from watcher.contract import Item, ItemKind
from watcher.errors import SinkError
from watcher.sinks.base import (
    NULL_STATE,
    FilteredSink,
    Request,
    Sent,
    SinkContext,
    SinkSettings,
    SinkState,
    SinkType,
)
from watcher.sinks.webhook import encode_body

if TYPE_CHECKING:
    from watcher.config import KafkaSettings

__all__ = ["KAFKA", "KafkaSink", "KafkaSinkSettings"]


def _default_producer(**options: Any) -> Any:
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(**options)


class KafkaSinkSettings(SinkSettings, tag="kafka", frozen=True, kw_only=True):
    """``type: kafka``: the records on topics of the daemon's cluster (or ``bootstrap_servers``)."""

    bootstrap_servers: str | None = None  # None: the daemon's kafka.bootstrap_servers and security
    topic: Topic = "watcher.decisions"
    markers_topic: Topic = "watcher.rollout-changes"
    drift_topic: Topic | None = None  # None: drift signals go to `topic` (their `schema` tells them apart)

    DEFAULT_KINDS: ClassVar[tuple[ItemKind, ...]] = (ItemKind.DECISION, ItemKind.MARKER, ItemKind.DRIFT)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bootstrap_servers is not None:
            parse_bootstrap_servers(self.bootstrap_servers, f"sinks[{self.name}].bootstrap_servers")


class KafkaSink(FilteredSink[KafkaSinkSettings]):
    def __init__(
        self,
        settings: KafkaSinkSettings,
        *,
        producer_factory: Callable[..., Any] | None = None,
        kafka: KafkaSettings | None = None,
    ) -> None:
        super().__init__(settings)
        self._factory = producer_factory or _default_producer
        self._kafka = kafka
        self._producer: Any = None

    def options(self) -> dict[str, Any]:
        servers = self.settings.bootstrap_servers or (self._kafka.bootstrap_servers if self._kafka else None)
        if not servers:
            raise SinkError(f"sink {self.name}: no bootstrap_servers configured", permanent=True)
        options: dict[str, Any] = {
            "bootstrap_servers": servers,
            "client_id": f"watcher-sink-{self.name}",
            "acks": "all",
            "enable_idempotence": False,
            "request_timeout_ms": int(self.timeout_s * 1000),
        }
        if self._kafka is not None and not self.settings.bootstrap_servers:
            options.update(self._kafka.client_options())
        return options

    def render(self, item: Item, state: SinkState = NULL_STATE) -> list[Request]:
        if item.kind is ItemKind.DECISION:
            topic = self.settings.topic
        elif item.kind is ItemKind.MARKER:
            topic = self.settings.markers_topic
        else:
            topic = self.settings.drift_topic or self.settings.topic
        return [Request(kind="record", url=topic, body=item.record, key=item.agent_id)]

    async def _started(self) -> Any:
        if self._producer is None:
            producer = self._factory(**self.options())
            try:
                await producer.start()
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise SinkError(f"kafka producer not connected: {type(exc).__name__}: {exc}") from None
            self._producer = producer
        return self._producer

    async def send(self, request: Request) -> Sent:
        from aiokafka.errors import KafkaError, MessageSizeTooLargeError

        producer = await self._started()
        headers = [("idempotency-key", request.idempotency_key.encode())] if request.idempotency_key else []
        try:
            meta = await producer.send_and_wait(
                request.url,
                encode_body(request.body),
                key=request.key.encode() if request.key else None,
                headers=headers,
            )
        except MessageSizeTooLargeError as exc:
            raise SinkError(f"record too large for {request.url}: {exc}", permanent=True) from None
        except KafkaError as exc:
            raise SinkError(f"{type(exc).__name__}: {exc}") from None
        return Sent(detail=f"{meta.topic}/{meta.partition}@{meta.offset}")

    async def aclose(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
        self._producer = None


def _build(settings: KafkaSinkSettings, ctx: SinkContext) -> KafkaSink:
    return KafkaSink(settings, producer_factory=ctx.producer_factory, kafka=ctx.kafka)


KAFKA = SinkType(KafkaSinkSettings, _build)
