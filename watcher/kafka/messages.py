"""What every source hands the engine: ``Message`` (one raw message and where it came from),
``MessageBatch`` (one Kafka fetch, its messages built only when asked for), the ``Source`` and
``OffsetSource`` protocols, and ``FileSource``, the simplest source (a JSON Lines file).

Kept apart from the Kafka consumer (``watcher.kafka.source``) so that what a batch *is* can be read
without the consumer-group machinery around it.
"""

from __future__ import annotations

import asyncio
import bisect
import operator
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from watcher.errors import ConfigError, SourceError
from watcher.kafka.rebalance import NULL_LISTENER, PartitionListener

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord

__all__ = [
    "FileSource",
    "Message",
    "MessageBatch",
    "OffsetSource",
    "Origins",
    "Source",
    "messages_from_records",
    "next_offsets",
]


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


class Origins(Sequence[str]):
    """Where each message of a batch came from, formatted only for the few that are rejected. A slice
    is the origins of those messages (the daemon runs a batch through the engine in slices)."""

    __slots__ = ("_batch", "_start", "_len")

    def __init__(self, batch: Sequence[Message], start: int = 0, stop: int | None = None) -> None:
        self._batch = batch
        self._start = start
        self._len = max(0, (len(batch) if stop is None else stop) - start)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            start, stop, step = i.indices(self._len)
            if step != 1:
                return [self[j] for j in range(start, stop, step)]
            return Origins(self._batch, self._start + start, self._start + max(start, stop))
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(i)
        m = self._batch[self._start + i]
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
