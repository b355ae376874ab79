"""Dead letters: where rejected input messages go, with the reason and all of the original bytes.

The engine hands over the rejected messages of a batch; the caller commits the batch's offsets only
after ``publish`` has returned. So ``publish`` returns only once every record is safe: acknowledged
by the broker (acks=all), or, with a spool, written to the spool file (``watcher.kafka.spool``), from
which a forwarder sends it on as soon as the topic takes it. A record is
``watcher.contract.dead_letter_record`` (schema ``watcher.deadletter/v1``); a message larger than
``chunk_bytes`` (256 KiB: Kafka's records are limited to ~1 MiB) travels in several records with
``part``/``parts`` and the whole message's SHA-256, so no byte is ever cut.

With a spool, a topic that refuses writes (an ACL, an invalid name, a broker that drops them) never
holds the pipeline: a batch waits at most ``direct_timeout_s`` for the broker, then its dead letters
go to the spool, and while the spool holds any, later ones go straight there. The spool is bounded
(``max_spool_bytes``): when it is full, ``publish`` waits for room (the consumer stops, nothing is
lost), and ``stop()`` ends that wait with ``SinkError`` (the batch is not committed; it is read
again after the restart). ``health()`` says why the daemon is not ready while dead letters wait.

    DeadLetters (Protocol: start, publish, stop, health)
    ├── KafkaDeadLetters   a topic, key = origin ("topic/partition@offset"), value = the JSON record
    ├── FileDeadLetters    one JSON record per line (replay, local runs)
    └── NullDeadLetters    drops them (counted by the caller all the same)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from watcher.backoff import Backoff, Retries
from watcher.clock import Clock, SystemClock
from watcher.contract import Rejected, dead_letter_record
from watcher.errors import ConfigError, SinkError
from watcher.kafka.producer import OutRecord, RecordProducer
from watcher.kafka.source import RECONNECT
from watcher.kafka.spool import Spool, SpoolForwarder

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

    from watcher.config import KafkaSettings

__all__ = ["DEFAULT_CHUNK_BYTES", "DeadLetters", "FileDeadLetters", "KafkaDeadLetters", "NullDeadLetters"]

log = logging.getLogger(__name__)

STREAM = "deadletter"  # the dead letters' stream in the spool
# the raw bytes per dead-letter record: base64 and the JSON around them stay well under Kafka's default
# 1 MiB record limit
DEFAULT_CHUNK_BYTES = 256 * 1024
# dead letters spooled for longer than this make the daemon not ready (a hiccup does not)
NOT_READY_AFTER_S = 30.0


def dead_letter_records(r: Rejected, now: float, chunk_bytes: int) -> list[bytes]:
    """The records of one rejection: one, or one per ``chunk_bytes`` of a larger message."""
    if len(r.raw) <= chunk_bytes:
        return [dead_letter_record(r, now)]
    digest = hashlib.sha256(r.raw).hexdigest()
    parts = -(-len(r.raw) // chunk_bytes)
    return [
        dead_letter_record(
            dataclasses.replace(r, raw=r.raw[i * chunk_bytes : (i + 1) * chunk_bytes]),
            now,
            part=i,
            parts=parts,
            raw_bytes=len(r.raw),
            raw_sha256=digest,
        )
        for i in range(parts)
    ]


class DeadLetters(Protocol):
    async def start(self) -> None: ...

    async def publish(self, records: Sequence[Rejected]) -> None:
        """Make every record safe (delivered or spooled), or raise; never drop one silently."""
        ...

    async def stop(self) -> None: ...

    def health(self) -> str | None:
        """Why dead letters are not being delivered (None: they are)."""
        ...


class NullDeadLetters:
    async def start(self) -> None:
        return None

    async def publish(self, records: Sequence[Rejected]) -> None:
        return None

    async def stop(self) -> None:
        return None

    def health(self) -> str | None:
        return None


class FileDeadLetters(NullDeadLetters):
    """Appends one JSON record per line to ``path`` (created with its directory if missing)."""

    def __init__(self, path: str | Path, *, clock: Clock | None = None) -> None:
        self.path = Path(path)
        self._clock = clock or SystemClock()

    async def publish(self, records: Sequence[Rejected]) -> None:
        if not records:
            return
        now = self._clock.now()
        data = b"".join(dead_letter_record(r, now) + b"\n" for r in records)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                f.write(data)
        except OSError as exc:
            raise SinkError(f"cannot write dead letters to {self.path}: {exc}") from exc


class KafkaDeadLetters:
    """Publishes to ``topic`` with acks=all (``RecordProducer``: a duplicate dead letter after a lost
    acknowledgement is harmless, a lost one is not).

    Without a ``spool``, ``publish`` retries with ``backoff`` until every record is acknowledged
    (``stop()`` makes it raise ``SinkError``). With one, see the module docstring; ``start()`` runs
    the forwarder, which sends what the spool holds from an earlier run first.
    """

    def __init__(
        self,
        bootstrap_servers: str | KafkaSettings,
        topic: str | None = None,
        *,
        client_options: Mapping[str, Any] | None = None,
        clock: Clock | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        backoff: Backoff = RECONNECT,
        producer_factory: Callable[..., AIOKafkaProducer] | None = None,
        spool: Spool | None = None,
        max_spool_bytes: int = 0,
        direct_timeout_s: float = 5.0,
        not_ready_after_s: float = NOT_READY_AFTER_S,
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
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.producer = RecordProducer(
            bootstrap_servers, what="dead letters", client_options=options, producer_factory=producer_factory
        )
        self._clock = clock or SystemClock()
        self._chunk = chunk_bytes
        self._backoff = Retries(backoff)
        self._closed = False
        self._wake = asyncio.Event()
        self.published = 0  # records acknowledged by the broker since start (directly or forwarded)
        self.spooled = 0  # records written to the spool since start
        self._spool = spool
        self._max_spool = max_spool_bytes
        self._direct_timeout = direct_timeout_s
        self._not_ready_after = not_ready_after_s
        # a producer of its own: a failed send rebuilds its client, which must not cut a direct send short
        forwarding = RecordProducer(
            bootstrap_servers, what="dead letters", client_options=options, producer_factory=producer_factory
        )
        self.forwarder = (
            SpoolForwarder(spool, STREAM, forwarding, clock=self._clock) if spool is not None else None
        )
        self._forwarding: asyncio.Task[None] | None = None
        self.waiting_for_room = False  # the spool is full: the consumer waits

    async def start(self) -> None:
        if self.forwarder is not None and self._forwarding is None:
            self._forwarding = asyncio.create_task(self.forwarder.run(), name="dead-letter-forwarder")

    async def publish(self, records: Sequence[Rejected]) -> None:
        if not records:
            return
        now = self._clock.now()  # one timestamp per publish: a retried record keeps its ts
        pending = [
            OutRecord(self.topic, r.origin.encode("utf-8"), value)
            for r in records
            for value in dead_letter_records(r, now, self._chunk)
        ]
        if self._spool is None:
            await self._deliver(pending)
            return
        if not self._spool.stats(STREAM).records:  # nothing waits: try the broker, for a while
            sent = len(pending)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._direct_timeout):
                    pending = await self.producer.send(pending)
            self.published += sent - len(pending)
            if not pending:
                return
            log.error(
                "dead-letter topic %s did not take %d records (%s): spooled, forwarded when it does",
                self.topic,
                len(pending),
                self.producer.last_error or f"no acknowledgement within {self._direct_timeout:g}s",
            )
        await self._spool_in(pending)

    async def _deliver(self, pending: list[OutRecord]) -> None:
        self._backoff.reset()
        total = len(pending)
        while pending:
            if self._closed:
                raise SinkError(f"dead letters: {len(pending)} records not delivered (shutting down)")
            pending = await self.producer.send(pending)
            if pending:
                await self._sleep(self._backoff.next())
        self.published += total

    async def _spool_in(self, records: list[OutRecord]) -> None:
        """Into the spool, once it has room for them (it is bounded: the consumer waits meanwhile)."""
        assert self._spool is not None and self.forwarder is not None
        size = sum(len(r.value) + len(r.key or b"") for r in records)
        while self._max_spool and self._spool.stats(STREAM).bytes + size > self._max_spool:
            if self._closed:
                raise SinkError(
                    f"dead letters: {len(records)} records not spooled (spool full, shutting down)"
                )
            if not self.waiting_for_room:
                log.error(
                    "dead-letter spool full (%d bytes): consumption waits until the topic %s takes records",
                    self._max_spool,
                    self.topic,
                )
            self.waiting_for_room = True
            self.forwarder.drained.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.forwarder.drained.wait()
        self.waiting_for_room = False
        self._spool.append(STREAM, records, self._clock.now())
        self.spooled += len(records)
        self.forwarder.wake()

    def health(self) -> str | None:
        if self._spool is None or self.forwarder is None:
            return None
        if self.waiting_for_room:
            return (
                f"the dead-letter spool is full ({self._max_spool} bytes): consumption waits for {self.topic}"
            )
        stats = self._spool.stats(STREAM)
        if stats.oldest_at is None or self._clock.now() - stats.oldest_at < self._not_ready_after:
            return None
        return (
            f"{stats.records} dead letters wait in the spool for topic {self.topic} "
            f"({self.forwarder.producer.last_error or self.producer.last_error or 'not acknowledged'})"
        )

    async def stop(self) -> None:
        self._closed = True
        self._wake.set()
        if self.forwarder is not None:
            self.forwarder.stop()
        if self._forwarding is not None:
            self._forwarding.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._forwarding
            assert self.forwarder is not None
            await self.forwarder.producer.stop()
        await self.producer.stop()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
