"""Writing records watcher must not lose: an acks=all producer that reports what was not acknowledged.

``RecordProducer.send(records)`` sends every record once and returns those the broker did not
acknowledge (a broker away, a topic that refuses writes: an ACL, an invalid name, a record too
large). It never raises for a broker fault and never retries by itself: the caller decides whether
to try again, wait, or keep the records in a ``Spool`` (``watcher.kafka.spool``). The producer
connects on first use, so a broker that is down at start-up only delays the first send, and it is
rebuilt after a failed send (a failed client may hold stale metadata or a dead connection).

Not idempotent on purpose (idempotence needs InitProducerId, which some Kafka-compatible brokers
lack): a retry after a lost acknowledgement can write a record twice. Every record watcher writes
this way carries its own id (the dead letter's origin, the marker's event id), so readers drop
duplicates; a lost record could not be recovered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from watcher.errors import ConfigError
from watcher.kafka.reachability import ConnectionReport

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

__all__ = ["OutRecord", "RecordProducer"]

log = logging.getLogger(__name__)

_FORCED = {"acks", "enable_idempotence", "bootstrap_servers", "transactional_id"}


class OutRecord(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes


class RecordProducer:
    """``what`` names the records in logs ("dead letters", "markers"); ``client_options`` go to
    ``AIOKafkaProducer`` as they are (client_id, request_timeout_ms, security settings)."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        what: str,
        client_options: Mapping[str, Any] | None = None,
        producer_factory: Callable[..., AIOKafkaProducer] | None = None,
    ) -> None:
        options = dict(client_options or {})
        clash = _FORCED & set(options)
        if clash:
            raise ConfigError(f"kafka.{sorted(clash)[0]}", f"is set by watcher itself for {what}")
        self.bootstrap_servers = bootstrap_servers
        self.what = what
        self._options = options
        self._factory = producer_factory
        # a broker away: one warning, then a reminder a minute, not one per send the callers retry
        self._report = ConnectionReport(bootstrap_servers, log, what=f"Kafka ({what})")
        self._producer: AIOKafkaProducer | None = None
        self.last_error: str | None = None  # why the last send left records unacknowledged

    async def send(self, records: Sequence[OutRecord]) -> list[OutRecord]:
        """Send each record once; return those not acknowledged (all of them without a broker)."""
        if not records:
            return []
        producer = self._producer or await self._connect()
        if producer is None:
            return list(records)
        futures: list[asyncio.Future[Any] | None] = []
        first_error: BaseException | None = None
        for r in records:
            try:
                futures.append(await producer.send(r.topic, r.value, key=r.key))
            except Exception as exc:  # metadata timeout, an invalid topic, a record too large...
                first_error = first_error or exc
                futures.append(None)
        results = await asyncio.gather(*(f for f in futures if f is not None), return_exceptions=True)
        outcome = iter(results)
        failed: list[OutRecord] = []
        for record, future in zip(records, futures, strict=True):
            result = next(outcome) if future is not None else None
            if future is None or isinstance(result, BaseException):
                failed.append(record)
                if first_error is None and isinstance(result, BaseException):
                    first_error = result
        if not failed:
            self.last_error = None
            return []
        self.last_error = _describe(first_error)
        log.warning(
            "%d of %d %s not acknowledged by %s (%s)",
            len(failed),
            len(records),
            self.what,
            self.bootstrap_servers,
            self.last_error,
        )
        if self._producer is producer:
            self._producer = None
        await _stop_quietly(producer)
        return failed

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer)

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
            self.last_error = f"cannot connect to Kafka at {self.bootstrap_servers}: {_describe(exc)}"
            self._report.failed(exc)
            await _stop_quietly(producer)
            return None
        self._report.connected()
        self._producer = producer
        return producer


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no acknowledgement"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text and type(exc).__name__ not in text else text or repr(exc)


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    """Close a producer, for at most 2 s: a broker that does not answer must not hold the caller."""
    try:
        await asyncio.wait_for(producer.stop(), 2.0)
    except (TimeoutError, Exception) as exc:
        log.debug("closing a producer: %r", exc)
