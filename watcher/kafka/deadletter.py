"""Dead letters: where rejected input messages go, with the reason and the original bytes.

The engine hands over the rejected messages of a batch; the caller commits the batch's offsets only
after ``publish`` has returned. So ``publish`` must not lose a record: the Kafka implementation
retries with backoff and returns only once every record is acknowledged by the broker (acks=all).
A record is ``watcher.contract.dead_letter_record(r, now)`` (schema ``watcher.deadletter/v1``).

    DeadLetters (Protocol: publish; every implementation also has ``async stop()``)
    ├── KafkaDeadLetters   a topic, key = origin ("topic/partition@offset"), value = the JSON record
    ├── FileDeadLetters    one JSON record per line (replay, local runs)
    └── NullDeadLetters    drops them (counted by the caller all the same)
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from watcher.backoff import Backoff, Retries
from watcher.clock import Clock, SystemClock
from watcher.errors import ConfigError, SinkError
from watcher.kafka.source import RECONNECT

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

    from watcher.config import KafkaSettings
    from watcher.contract import Rejected

__all__ = ["DeadLetters", "FileDeadLetters", "KafkaDeadLetters", "NullDeadLetters"]

log = logging.getLogger(__name__)

Encoder = Callable[["Rejected", float], bytes]

# Kafka's default message.max.bytes is ~1 MiB. A TOO_LARGE reject can carry a raw message bigger than
# that; its dead letter keeps the first part of the raw bytes (and says so) instead of failing forever.
DEFAULT_MAX_RAW_BYTES = 256 * 1024


def _default_encoder() -> Encoder:
    from watcher.contract import dead_letter_record

    return dead_letter_record


def _truncated(r: Rejected, max_raw: int) -> Rejected:
    if len(r.raw) <= max_raw:
        return r
    detail = f"{r.detail} (dead letter keeps the first {max_raw} of {len(r.raw)} raw bytes)"
    return dataclasses.replace(r, raw=r.raw[:max_raw], detail=detail)


class DeadLetters(Protocol):
    async def publish(self, records: Sequence[Rejected]) -> None:
        """Deliver every record, or raise; never drop one silently."""
        ...


class NullDeadLetters:
    async def publish(self, records: Sequence[Rejected]) -> None:
        return None

    async def stop(self) -> None:
        return None


class FileDeadLetters:
    """Appends one JSON record per line to ``path`` (created with its directory if missing)."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Clock | None = None,
        encode: Encoder | None = None,
        max_raw_bytes: int = DEFAULT_MAX_RAW_BYTES,
    ) -> None:
        self.path = Path(path)
        self._clock = clock or SystemClock()
        self._encode = encode
        self._max_raw = max_raw_bytes

    async def publish(self, records: Sequence[Rejected]) -> None:
        if not records:
            return
        encode = self._encode or _default_encoder()
        now = self._clock.now()
        data = b"".join(encode(_truncated(r, self._max_raw), now) + b"\n" for r in records)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                f.write(data)
        except OSError as exc:
            raise SinkError(f"cannot write dead letters to {self.path}: {exc}") from exc

    async def stop(self) -> None:
        return None


class KafkaDeadLetters:
    """Publishes to ``topic`` with acks=all. Not idempotent on purpose (idempotence needs
    InitProducerId, which some Kafka-compatible brokers lack): a retry after a lost acknowledgement
    can write a record twice, and a duplicate dead letter is harmless, a lost one is not.

    The producer connects on the first ``publish``, so a broker that is down at start-up only
    delays dead letters. ``stop()`` makes a ``publish`` that is still retrying raise ``SinkError``
    (the caller then does not commit, and the messages are re-read after the restart).
    """

    def __init__(
        self,
        bootstrap_servers: str | KafkaSettings,
        topic: str | None = None,
        *,
        client_options: Mapping[str, Any] | None = None,
        clock: Clock | None = None,
        encode: Encoder | None = None,
        max_raw_bytes: int = DEFAULT_MAX_RAW_BYTES,
        backoff: Backoff = RECONNECT,
        producer_factory: Callable[..., AIOKafkaProducer] | None = None,
    ) -> None:
        options = dict(client_options or {})
        if not isinstance(bootstrap_servers, str):  # the ``settings.kafka`` slice
            kafka = bootstrap_servers
            bootstrap_servers, topic = kafka.bootstrap_servers, topic or kafka.dead_letter_topic
            options = {
                "client_id": f"{kafka.client_id}-deadletters",
                "request_timeout_ms": kafka.request_timeout_ms,
                **kafka.client_options(),
                **options,
            }
        if not topic:
            raise ConfigError("kafka.dead_letter_topic", "must not be empty")
        clash = {"acks", "enable_idempotence", "bootstrap_servers", "transactional_id"} & set(options)
        if clash:
            raise ConfigError(f"kafka.{sorted(clash)[0]}", "is set by watcher itself for dead letters")
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self._options = options
        self._clock = clock or SystemClock()
        self._encode = encode
        self._max_raw = max_raw_bytes
        self._backoff = Retries(backoff)
        self._factory = producer_factory
        self._producer: AIOKafkaProducer | None = None
        self._closed = False
        self._wake = asyncio.Event()
        self.published = 0  # records acknowledged since start, for the caller's counters and tests

    async def publish(self, records: Sequence[Rejected]) -> None:
        if not records:
            return
        encode = self._encode or _default_encoder()
        now = self._clock.now()  # one timestamp per publish: a retried record keeps its ts
        pending = [(r.origin.encode("utf-8"), encode(_truncated(r, self._max_raw), now)) for r in records]
        self._backoff.reset()
        while pending:
            if self._closed:
                raise SinkError(f"dead letters: {len(pending)} records not delivered (shutting down)")
            pending = await self._send(pending)
            if pending:
                await self._sleep(self._backoff.next())
        self.published += len(records)

    async def stop(self) -> None:
        self._closed = True
        self._wake.set()
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer)

    async def _send(self, pending: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """Send everything once; return what was not acknowledged."""
        producer = self._producer or await self._connect()
        if producer is None:
            return pending
        futures: list[asyncio.Future[Any] | None] = []
        for key, value in pending:
            try:
                futures.append(await producer.send(self.topic, value, key=key))
            except Exception as exc:  # metadata timeout while the broker is away, buffer errors...
                log.warning("dead letter not sent to %s (%r); retrying", self.topic, exc)
                futures.append(None)
        results = await asyncio.gather(*(f for f in futures if f is not None), return_exceptions=True)
        outcome = iter(results)
        failed: list[tuple[bytes, bytes]] = []
        first_error: BaseException | None = None
        for item, future in zip(pending, futures, strict=True):
            result = next(outcome) if future is not None else None
            if future is None or isinstance(result, BaseException):
                failed.append(item)
                if first_error is None and isinstance(result, BaseException):
                    first_error = result
        if failed:
            log.warning(
                "%d of %d dead letters not acknowledged by %s (%r); retrying",
                len(failed),
                len(pending),
                self.bootstrap_servers,
                first_error,
            )
            # A producer that failed may hold a stale connection or metadata: start afresh.
            if self._producer is producer:
                self._producer = None
            await _stop_quietly(producer)
        return failed

    async def _connect(self) -> AIOKafkaProducer | None:
        from aiokafka import AIOKafkaProducer

        factory = self._factory or AIOKafkaProducer
        producer = factory(
            bootstrap_servers=self.bootstrap_servers, acks="all", enable_idempotence=False, **self._options
        )
        try:
            await producer.start()
        except asyncio.CancelledError:
            await _stop_quietly(producer)
            raise
        except Exception as exc:
            log.warning(
                "dead letters: cannot connect to Kafka at %s (%s); retrying", self.bootstrap_servers, exc
            )
            await _stop_quietly(producer)
            return None
        self._producer = producer
        return producer

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await producer.stop()
    except Exception as exc:
        log.debug("closing the dead-letter producer: %r", exc)
