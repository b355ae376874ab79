"""The Kafka source: a consumer-group member handing the engine batches (``MessageBatch``, see
``watcher.kafka.messages``), never single messages: per-message Python work is the cost to avoid on
the hot path. Offsets are committed explicitly, after the engine has updated (and checkpointed) the
state a batch fed, so a crash re-reads rather than loses.

A Kafka broker that is down or unreachable is an expected condition, not an error: the source logs
it, reports ``ready == False`` and retries with backoff until the broker is back, at start-up too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from watcher.backoff import Backoff, Retries
from watcher.clock import Clock, SystemClock
from watcher.errors import ConfigError
from watcher.kafka.fast_fetch import FetchPath, tune_fetcher
from watcher.kafka.messages import Message, MessageBatch
from watcher.kafka.reachability import ConnectionReport
from watcher.kafka.rebalance import NULL_LISTENER, PartitionListener

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, TopicPartition

# a position beyond the log's end on this many polls in a row (not a stale high watermark) is acted on
PAST_END_POLLS = 3

__all__ = ["RECONNECT", "KafkaSource"]

log = logging.getLogger(__name__)

# a broker that is down or unreachable is asked again after 0.5 s, then less and less often, up to 30 s
RECONNECT = Backoff(initial_s=0.5, max_s=30.0)

_FORCED = {"enable_auto_commit", "group_id", "auto_offset_reset", "bootstrap_servers"}


class KafkaSource:
    """A consumer-group member over ``topics``; offsets are committed only by ``commit(batch)``.

    ``client_options`` go to ``AIOKafkaConsumer`` as they are (security_protocol, sasl_*,
    ssl_context, client_id, request_timeout_ms, session_timeout_ms, ...). ``ready`` means: partitions
    are assigned and every one of them got a fetch response (or yielded records) within
    ``stale_after`` seconds. Use ``async for batch in source.batches()``; the iterator ends after
    ``stop()``.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topics: Sequence[str],
        group_id: str,
        *,
        auto_offset_reset: str = "earliest",
        past_end: str = "earliest",
        max_records: int = 2000,
        poll_timeout_ms: int = 500,
        client_options: Mapping[str, Any] | None = None,
        stale_after: float = 15.0,
        backoff: Backoff = RECONNECT,
        clock: Clock | None = None,
        consumer_factory: Callable[..., AIOKafkaConsumer] | None = None,
    ) -> None:
        if not topics:
            raise ConfigError("kafka.telemetry_topics", "needs at least one topic")
        if auto_offset_reset not in ("earliest", "latest"):
            raise ConfigError("kafka.auto_offset_reset", f"must be earliest or latest: {auto_offset_reset!r}")
        if past_end not in ("earliest", "latest"):
            raise ConfigError("kafka.past_end", f"must be earliest or latest: {past_end!r}")
        clash = _FORCED & set(client_options or {})
        if clash:
            field = f"kafka.{sorted(clash)[0]}"
            raise ConfigError(field, "is set by watcher itself (offsets are committed explicitly)")
        self.bootstrap_servers = bootstrap_servers
        self.topics = tuple(topics)
        self.group_id = group_id
        self.auto_offset_reset = auto_offset_reset
        self.past_end = past_end
        self._past_end_polls: dict[TopicPartition, int] = {}
        self.max_records = max_records
        self.poll_timeout_ms = poll_timeout_ms
        self._options = dict(client_options or {})
        self._stale_after_ms = stale_after * 1000.0
        self._backoff = Retries(backoff)
        self._clock = clock or SystemClock()
        self._report = ConnectionReport(bootstrap_servers, log, clock=self._clock)
        self._factory = consumer_factory
        self._consumer: AIOKafkaConsumer | None = None
        self._joining: AIOKafkaConsumer | None = None  # the consumer being started
        self._stopping = False
        self._wake = asyncio.Event()
        self._last_data_ms: dict[TopicPartition, float] = {}
        self._lag: dict[tuple[str, int], int] = {}
        # the owner of the consumed state, told of rebalances (given to ``start``)
        self.listener: PartitionListener = NULL_LISTENER
        # How the current consumer's fetched records reach the batches (watcher.kafka.fast_fetch): BULK
        # unless the client is not the aiokafka this was written against, or is set up otherwise.
        self.fetch_path: FetchPath | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self, listener: PartitionListener = NULL_LISTENER) -> None:
        """Arm the source; ``listener`` hears of every rebalance (``watcher.kafka.rebalance``).
        Connecting happens in ``batches()``, so a broker that is down (or frozen, where a connect
        would hang for ``request_timeout_ms``) never blocks start-up."""
        self.listener = listener
        self._stopping = False
        self._wake.clear()

    async def stop(self) -> None:
        """Leave the group cleanly (the partitions move to another member at once)."""
        self._stopping = True
        self._wake.set()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await self._close(consumer)
        self._lag = {}

    # -- the stream -------------------------------------------------------------------------------
    async def batches(self) -> AsyncIterator[MessageBatch]:
        from aiokafka.errors import ConsumerStoppedError

        try:
            while not self._stopping:
                consumer = self._consumer or await self._connect()
                if consumer is None:
                    await self._sleep(self._backoff.next())
                    continue
                try:
                    data = await consumer.getmany(
                        timeout_ms=self.poll_timeout_ms, max_records=self.max_records
                    )
                    await self._refresh_lag(consumer)
                except ConsumerStoppedError:
                    if self._stopping:
                        return
                    await self._drop(consumer, "consumer stopped unexpectedly", None)
                    continue
                except Exception as exc:  # never crash on the broker: log, reconnect with backoff
                    await self._drop(consumer, "consuming failed", exc)
                    continue
                if not data:
                    continue
                self._backoff.reset()
                now_ms = self._clock.now() * 1000.0
                batch = MessageBatch()
                for tp, records in data.items():
                    self._last_data_ms[tp] = now_ms
                    batch.add(tp.topic, tp.partition, records)
                if batch:
                    yield batch
        finally:
            if self._stopping and self._consumer is not None:
                consumer, self._consumer = self._consumer, None
                await self._close(consumer)

    async def commit(self, batch: Sequence[Message]) -> bool:
        """Commit, per partition in ``batch``, the offset after its highest message.

        Returns False (and logs) if the commit could not be made: the group rebalanced (the new
        owner re-reads those messages) or the consumer is reconnecting. aiokafka itself retries
        retriable errors, so during an outage this waits until the broker is back.
        """
        if not batch:
            return True
        highest: dict[tuple[str, int], int]
        if isinstance(batch, MessageBatch):
            highest = batch.last_offsets()
        else:
            highest = {}
            get = highest.get
            for m in batch:
                key = (m.topic, m.partition)
                if get(key, -1) < m.offset:
                    highest[key] = m.offset
        return await self.commit_offsets({key: o + 1 for key, o in highest.items()})

    async def commit_offsets(
        self, offsets: Mapping[tuple[str, int], int], *, consumer: AIOKafkaConsumer | None = None
    ) -> bool:
        """Commit these *next* offsets (topic, partition) -> offset; False (and logged) if not made.

        With checkpoints the daemon commits the offsets of the checkpoint it has just written, which
        may cover several batches. ``consumer``: the one being rebalanced (default: the current one)."""
        if not offsets:
            return True
        consumer = consumer or self._consumer
        if consumer is None:
            log.warning("commit of %d partitions skipped: not connected to Kafka", len(offsets))
            return False
        from aiokafka import TopicPartition
        from aiokafka.errors import KafkaError

        commit = {TopicPartition(t, p): o for (t, p), o in offsets.items()}
        try:
            await consumer.commit(commit)
        except KafkaError as exc:
            log.warning("offset commit failed (%s): these messages may be read again", exc)
            return False
        except Exception as exc:  # e.g. the consumer was closed under us by stop()
            log.warning("offset commit failed (%r)", exc)
            return False
        return True

    # -- health -----------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        consumer = self._consumer
        if consumer is None or self._stopping:
            return False
        assigned = consumer.assignment()
        if not assigned:
            return False
        now_ms = self._clock.now() * 1000.0
        for tp in assigned:
            polled = consumer.last_poll_timestamp(tp) or 0
            seen = max(polled, self._last_data_ms.get(tp, 0.0))
            if now_ms - seen > self._stale_after_ms:
                return False
        return True

    def pause_partitions(self, partitions: Collection[int]) -> None:
        """Stop fetching the assigned partitions with these numbers (their state is not ready)."""
        consumer = self._consumer or self._joining
        if consumer is not None:
            consumer.pause(*[tp for tp in consumer.assignment() if tp.partition in partitions])

    def resume_partitions(
        self, partitions: Collection[int], resume_from: Callable[[str, int], int | None]
    ) -> None:
        """Fetch them again, each from ``resume_from``'s offset (None: its committed offset)."""
        consumer = self._consumer or self._joining
        if consumer is None:
            return
        tps = [tp for tp in consumer.assignment() if tp.partition in partitions]
        for tp in tps:
            offset = resume_from(tp.topic, tp.partition)
            if offset is not None:
                consumer.seek(tp, offset)
        consumer.resume(*tps)

    def partition_count(self, topic: str) -> int | None:
        """How many partitions ``topic`` has, from the cluster metadata (None while unknown)."""
        # during the first assignment (inside ``consumer.start()``) only the joining consumer knows
        consumer = self._consumer or self._joining
        parts = consumer.partitions_for_topic(topic) if consumer is not None else None
        return len(parts) if parts else None

    def lag(self) -> dict[tuple[str, int], int]:
        """Messages per assigned partition between the high watermark and the position (what has
        not been handed out yet), as of the last poll. The high watermark comes from fetch
        responses (``end_offsets()`` is unreliable on some Kafka-compatible brokers)."""
        return dict(self._lag)

    # -- internals --------------------------------------------------------------------------------
    async def _connect(self) -> AIOKafkaConsumer | None:
        from aiokafka import AIOKafkaConsumer

        factory = self._factory or AIOKafkaConsumer
        consumer = factory(
            *self.topics,
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset=self.auto_offset_reset,
            **self._options,
        )
        consumer.subscribe(list(self.topics), listener=_RebalanceListener(consumer, self))
        self._joining = consumer
        try:
            await consumer.start()
        except asyncio.CancelledError:
            await self._close(consumer)
            raise
        except Exception as exc:
            self._report.failed(exc)
            await self._close(consumer)
            return None
        finally:
            self._joining = None
        if self._stopping:  # stop() ran while we were connecting
            await self._close(consumer)
            return None
        self._backoff.reset()
        self._report.connected()
        tuning = tune_fetcher(consumer)
        self.fetch_path = tuning.path
        log.debug("fetched records: %s path (%s)", tuning.path.value, tuning.reason)
        log.info(
            "consuming %s as group %r from %s", ",".join(self.topics), self.group_id, self.bootstrap_servers
        )
        self._consumer = consumer
        return consumer

    async def _drop(self, consumer: AIOKafkaConsumer, what: str, exc: BaseException | None) -> None:
        log.warning(
            "%s (%r); reconnecting to %s", what, exc, self.bootstrap_servers, exc_info=exc is not None
        )
        if self._consumer is consumer:
            self._consumer = None
        self._lag = {}
        await self._close(consumer)
        await self._sleep(self._backoff.next())

    async def _close(self, consumer: AIOKafkaConsumer) -> None:
        # aiokafka sends LeaveGroup only for generations > 0 (Apache Kafka starts at 1); Tansu
        # numbers a group's first generation 0, so without this the next member would wait a whole
        # session timeout for the partitions. LeaveGroup itself carries no generation.
        coordinator = getattr(consumer, "_coordinator", None)
        if getattr(coordinator, "generation", None) == 0 and getattr(coordinator, "member_id", ""):
            coordinator.generation = 1  # type: ignore[union-attr]
        try:
            await consumer.stop()
        except Exception as exc:  # leaving the group is best effort when the broker is gone
            log.debug("closing the consumer: %r", exc)

    async def _refresh_lag(self, consumer: AIOKafkaConsumer) -> None:
        lag: dict[tuple[str, int], int] = {}
        paused = consumer.paused()
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            # The position is valid once a fetch answered for tp, so this does not wait.
            position = await consumer.position(tp)
            lag[(tp.topic, tp.partition)] = max(0, high - position)
            if position > high and tp not in paused:
                self._past_end_polls[tp] = self._past_end_polls.get(tp, 0) + 1
                if self._past_end_polls[tp] >= PAST_END_POLLS:
                    await self._move_past_end(consumer, tp, position, high)
            else:
                self._past_end_polls.pop(tp, None)
        self._lag = lag

    async def _move_past_end(self, consumer: AIOKafkaConsumer, tp: TopicPartition, at: int, end: int) -> None:
        """A position beyond the log's end: the broker came back empty or truncated (a broker whose
        storage was lost or restored from an older copy, a topic deleted and created again). Waiting
        there would count nothing until the log grew past the old offset: the partition moves to the
        start of its log (``past_end: earliest``) or its end (``latest``), and the owner of the state
        is told, so that the state covers the log from there."""
        self._past_end_polls.pop(tp, None)
        if self.past_end == "earliest":
            await consumer.seek_to_beginning(tp)
        else:
            await consumer.seek_to_end(tp)
        moved = await consumer.position(tp)
        log.error(
            "%s/%d: position %d is beyond the end of the log (%d): the broker's log was emptied or "
            "truncated; reading it again from offset %d (kafka.past_end: %s)",
            tp.topic,
            tp.partition,
            at,
            end,
            moved,
            self.past_end,
        )
        self.listener.moved(tp.topic, tp.partition, at, moved)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass


class _RebalanceListener:
    """aiokafka's ``ConsumerRebalanceListener`` over the source's ``PartitionListener``: the listener
    answers (offsets to commit, partitions to hold, offsets to resume at), this acts on the consumer
    being rebalanced. aiokafka calls ``on_partitions_assigned`` before the first fetch, so a partition
    with a position is never reset to its committed offset. A failing listener is logged by aiokafka
    and the rebalance goes on: the partitions then resume from their committed offsets, which a
    checkpoint always covers."""

    def __init__(self, consumer: AIOKafkaConsumer, source: KafkaSource) -> None:
        from aiokafka.abc import ConsumerRebalanceListener

        ConsumerRebalanceListener.register(type(self))
        self._consumer = consumer
        self._source = source

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if not revoked:
            return
        offsets = await self._source.listener.revoked({(tp.topic, tp.partition) for tp in revoked})
        if offsets:  # checkpointed while this member still owns them: commit before they go
            await self._source.commit_offsets(offsets, consumer=self._consumer)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        listener = self._source.listener
        if assigned:
            counts = {t: self._source.partition_count(t) for t in self._source.topics}
            held = set(await listener.assigned({(tp.topic, tp.partition) for tp in assigned}, counts))
            if held:  # no state to apply their events to yet
                self._consumer.pause(*[tp for tp in assigned if tp.partition in held])
        for tp in sorted(assigned):
            offset = listener.resume_offset(tp.topic, tp.partition)
            if offset is not None:
                self._consumer.seek(tp, offset)
                log.info("resuming %s/%d at offset %d (checkpointed state)", tp.topic, tp.partition, offset)
