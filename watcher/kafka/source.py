"""Sources of raw telemetry: a Kafka consumer group, or a JSON Lines file (replay, demos).

Both hand the engine *batches* (sequences of ``Message``; Kafka's a lazy ``MessageBatch``), never single
messages: per-message Python work
is the cost to avoid on the hot path. Offsets are committed explicitly, after the engine has
updated (and checkpointed) the state a batch fed, so a crash re-reads rather than loses.

A Kafka broker that is down or unreachable is an expected condition, not an error: the source logs
it, reports ``ready == False`` and retries with backoff until the broker is back, at start-up too.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import operator
from collections.abc import (
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from watcher.backoff import Backoff, Retries
from watcher.clock import Clock, SystemClock
from watcher.errors import ConfigError, SourceError
from watcher.kafka.fast_fetch import FetchPath, tune_fetcher
from watcher.kafka.rebalance import NULL_LISTENER, PartitionListener

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

# a position beyond the log's end on this many polls in a row (not a stale high watermark) is acted on
PAST_END_POLLS = 3

__all__ = [
    "RECONNECT",
    "FileSource",
    "KafkaSource",
    "Message",
    "MessageBatch",
    "OffsetSource",
    "Origins",
    "Source",
    "messages_from_records",
    "next_offsets",
]

log = logging.getLogger(__name__)

# a broker that is down or unreachable is asked again after 0.5 s, then less and less often, up to 30 s
RECONNECT = Backoff(initial_s=0.5, max_s=30.0)


@dataclass(frozen=True, slots=True)
class Message:
    """One raw message and where it came from (``offset`` is the line number for a file)."""

    value: bytes
    topic: str
    partition: int
    offset: int


class _MessageBuilder:
    """Builds real ``Message`` objects at a third of the cost of the frozen dataclass ``__init__``.

    A frozen dataclass sets each field through ``object.__setattr__`` (~580 ns per message, a third
    of what the Kafka client itself spends per record). This class has the identical slot layout,
    assigns the slots directly and then switches ``__class__`` to ``Message`` (~230 ns): the caller
    gets an ordinary, immutable, equal-comparing ``Message``.
    """

    __slots__ = ("value", "topic", "partition", "offset")

    def __init__(self, value: bytes, topic: str, partition: int, offset: int) -> None:
        self.value = value
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.__class__ = Message  # type: ignore[assignment]


def messages_from_records(
    records: Sequence[ConsumerRecord[Any, Any]], topic: str, partition: int
) -> list[Message]:
    """The records of one partition (as ``getmany`` groups them) as ``Message`` objects."""
    build = _MessageBuilder
    return [build(r.value, topic, partition, r.offset) for r in records]  # type: ignore[misc]


_VALUE = operator.attrgetter("value")
_OFFSET = operator.attrgetter("offset")


class MessageBatch(Sequence[Message]):
    """One ``getmany`` as a sequence of ``Message``, built only when an item is asked for.

    The engine needs the values (``values``, one list built in C) and ``commit`` needs the last
    offset per partition (``last_offsets()``, per partition, not per message); a ``Message`` per
    record (~0.4 µs) is made only for the items read one by one (the origins of rejected messages,
    or a caller iterating the batch, which still works as before).
    """

    __slots__ = ("values", "_parts", "_starts", "_messages")

    def __init__(self) -> None:
        self.values: list[bytes] = []
        self._parts: list[tuple[str, int, Sequence[Any]]] = []  # (topic, partition, records)
        self._starts: list[int] = []  # index in ``values`` of each part's first record
        self._messages: list[Message] | None = None

    @classmethod
    def of(cls, messages: Iterable[Message]) -> MessageBatch:
        """A batch of these messages (consecutive ones of one partition form one part)."""
        batch = cls()
        run: list[Message] = []
        for m in messages:
            if run and (run[-1].topic, run[-1].partition) != (m.topic, m.partition):
                batch.add(run[0].topic, run[0].partition, run)
                run = []
            run.append(m)
        if run:
            batch.add(run[0].topic, run[0].partition, run)
        return batch

    def by_partition(
        self, since: Callable[[str, int], int | None] = lambda _t, _p: None
    ) -> dict[int, MessageBatch]:
        """The batch split per partition *number* (partition p of every topic together), each part
        without its records below ``since(topic, partition)``: per part, not per message (a part's
        records are in offset order)."""
        out: dict[int, MessageBatch] = {}
        for topic, partition, records in self._parts:
            start = since(topic, partition)
            if start is not None and records[0].offset < start:
                records = records[bisect.bisect_left(records, start, key=_OFFSET) :]
            out.setdefault(partition, MessageBatch()).add(topic, partition, records)
        return {p: part for p, part in out.items() if part}

    def add(self, topic: str, partition: int, records: Sequence[Any]) -> None:
        if records:
            self._starts.append(len(self.values))
            self._parts.append((topic, partition, records))
            self.values += map(_VALUE, records)
            self._messages = None

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self.values)))]
        if i < 0:
            i += len(self.values)
        if not 0 <= i < len(self.values):
            raise IndexError("batch index out of range")
        if self._messages is not None:
            return self._messages[i]
        k = bisect.bisect_right(self._starts, i) - 1
        topic, partition, records = self._parts[k]
        return Message(self.values[i], topic, partition, records[i - self._starts[k]].offset)

    def __iter__(self) -> Iterator[Message]:
        return iter(self.messages())

    def messages(self) -> list[Message]:
        """Every message of the batch (built once, then kept: a caller may iterate twice)."""
        if self._messages is None:
            self._messages = []
            for topic, partition, records in self._parts:
                self._messages += messages_from_records(records, topic, partition)
        return self._messages

    def counts_by_topic(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for topic, _, records in self._parts:
            counts[topic] = counts.get(topic, 0) + len(records)
        return counts

    def last_offsets(self) -> dict[tuple[str, int], int]:
        """The highest offset per (topic, partition) in the batch."""
        out: dict[tuple[str, int], int] = {}
        for topic, partition, records in self._parts:
            key = (topic, partition)
            out[key] = max(out.get(key, -1), records[-1].offset)  # a partition's records are in order
        return out


@runtime_checkable
class Source(Protocol):
    async def start(self, listener: PartitionListener = NULL_LISTENER) -> None:
        """Arm the source; ``listener`` hears of rebalances (a source whose partitions never move
        ignores it)."""
        ...

    async def stop(self) -> None: ...

    def batches(self) -> AsyncIterator[Sequence[Message]]: ...

    async def commit(self, batch: Sequence[Message]) -> bool: ...

    @property
    def ready(self) -> bool: ...

    def lag(self) -> dict[tuple[str, int], int]: ...


@runtime_checkable
class OffsetSource(Source, Protocol):
    """A source that can pair state with offsets: it commits any given offsets (those a checkpoint
    covers) and resumes held partitions at given offsets. Checkpoints need one."""

    async def commit_offsets(self, offsets: Mapping[tuple[str, int], int]) -> bool: ...

    def resume_partitions(
        self, partitions: Collection[int], resume_from: Callable[[str, int], int | None]
    ) -> None: ...


_FORCED = {"enable_auto_commit", "group_id", "auto_offset_reset", "bootstrap_servers"}


class Origins(Sequence[str]):
    """Where each message of a batch came from, formatted only for the few that are rejected."""

    __slots__ = ("_batch",)

    def __init__(self, batch: Sequence[Message]) -> None:
        self._batch = batch

    def __len__(self) -> int:
        return len(self._batch)

    def __getitem__(self, i: Any) -> Any:
        m = self._batch[i]
        return f"{m.topic}/{m.partition}@{m.offset}"


def next_offsets(batch: Sequence[Message]) -> dict[tuple[str, int], int]:
    """Per partition of ``batch``, the offset of the first message after it."""
    if isinstance(batch, MessageBatch):
        return {key: o + 1 for key, o in batch.last_offsets().items()}
    out: dict[tuple[str, int], int] = {}
    for m in batch:
        key = (m.topic, m.partition)
        if out.get(key, -1) <= m.offset:
            out[key] = m.offset + 1
    return out


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
            log.warning("cannot connect to Kafka at %s (%s); retrying", self.bootstrap_servers, exc)
            await self._close(consumer)
            return None
        finally:
            self._joining = None
        if self._stopping:  # stop() ran while we were connecting
            await self._close(consumer)
            return None
        self._backoff.reset()
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


class FileSource:
    """Batches of the lines of a JSON Lines file: topic ``"file"``, partition 0, offset = line
    number (1-based, as a person counts them), value = the line without its line break. Blank lines
    are skipped. The iterator ends at the end of the file."""

    topic = "file"

    def __init__(self, path: str | Path, batch_size: int = 2000) -> None:
        if batch_size < 1:
            raise ConfigError("replay.batch_size", "must be at least 1")
        self.path = Path(path)
        self.batch_size = batch_size
        self.committed: int = 0  # highest line number committed
        self._started = False

    async def start(self, listener: PartitionListener = NULL_LISTENER) -> None:
        if not self.path.is_file():
            raise SourceError(f"cannot read {self.path}: not a file")
        self._started = True

    async def stop(self) -> None:
        self._started = False

    async def batches(self) -> AsyncIterator[list[Message]]:
        build = _MessageBuilder
        topic = self.topic
        batch: list[Message] = []
        try:
            with open(self.path, "rb") as f:
                for lineno, line in enumerate(f, 1):
                    value = line.rstrip(b"\r\n")
                    if not value.strip():
                        continue
                    batch.append(build(value, topic, 0, lineno))  # type: ignore[arg-type]
                    if len(batch) >= self.batch_size:
                        yield batch
                        batch = []
                        await asyncio.sleep(0)  # let the HTTP API and signals run during a replay
        except OSError as exc:
            raise SourceError(f"cannot read {self.path}: {exc}") from exc
        if batch:
            yield batch

    async def commit(self, batch: Sequence[Message]) -> bool:
        if batch:
            self.committed = max(self.committed, max(m.offset for m in batch))
        return True

    @property
    def ready(self) -> bool:
        return self._started

    def lag(self) -> dict[tuple[str, int], int]:
        return {}
