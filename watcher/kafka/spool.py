"""Records waiting for Kafka: a durable spool and the task that forwards it.

When the broker will not take a record watcher must not lose (a dead letter, a marker posted over
HTTP), the record is appended to a ``Spool`` (durable: ``watcher.storage.SqliteSpool``, on local disk
with the other state files) and the caller goes on as if it were written: consumption is not held by
a topic that refuses writes, and a marker is acknowledged once it is safe. A ``SpoolForwarder`` per
stream ("deadletter", "marker") sends the spooled records to Kafka in order and removes each once the
broker has acknowledged it, retrying with backoff (1 s to 60 s) for as long as it takes, across
restarts too: the spool is a file.

    Spool (Protocol: append, head, remove, stats)
    ├── watcher.storage.SqliteSpool   one SQLite file (WAL, synchronous=FULL)
    └── MemorySpool                   for tests: lost with the process
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from watcher.backoff import Backoff, Retries
from watcher.clock import Clock, SystemClock
from watcher.kafka.producer import OutRecord, RecordProducer

__all__ = ["FORWARD_RETRY", "MemorySpool", "Spool", "SpoolForwarder", "SpoolStats", "Spooled"]

log = logging.getLogger(__name__)

# spooled records are sent again after 1 s, then less and less often, up to every minute
FORWARD_RETRY = Backoff(initial_s=1.0, max_s=60.0)


class Spooled(NamedTuple):
    seq: int
    record: OutRecord
    spooled_at: float


@dataclass(frozen=True, slots=True)
class SpoolStats:
    records: int = 0
    bytes: int = 0
    oldest_at: float | None = None  # when the oldest waiting record was spooled


class Spool(Protocol):
    def append(self, stream: str, records: Sequence[OutRecord], now: float) -> list[int]: ...

    def head(self, stream: str, limit: int) -> list[Spooled]: ...

    def remove(self, seqs: Sequence[int]) -> None: ...

    def stats(self, stream: str) -> SpoolStats: ...


class MemorySpool:
    """A spool in memory (tests): the same contract as the SQLite one, without durability."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[str, Spooled]] = {}
        self._seq = 0

    def append(self, stream: str, records: Sequence[OutRecord], now: float) -> list[int]:
        seqs = []
        for r in records:
            self._seq += 1
            self.rows[self._seq] = (stream, Spooled(self._seq, r, now))
            seqs.append(self._seq)
        return seqs

    def head(self, stream: str, limit: int) -> list[Spooled]:
        return [s for st, s in sorted(self.rows.values(), key=lambda x: x[1].seq) if st == stream][:limit]

    def remove(self, seqs: Sequence[int]) -> None:
        for seq in seqs:
            self.rows.pop(seq, None)

    def stats(self, stream: str) -> SpoolStats:
        mine = [s for st, s in self.rows.values() if st == stream]
        if not mine:
            return SpoolStats()
        size = sum(len(s.record.value) + len(s.record.key or b"") for s in mine)
        return SpoolStats(len(mine), size, min(s.spooled_at for s in mine))


class SpoolForwarder:
    """Sends one stream of the spool to Kafka, oldest first, until ``stop()``; ``wake()`` after an
    append. ``drained`` is set whenever records were removed (writers waiting for room wait on it)."""

    def __init__(
        self,
        spool: Spool,
        stream: str,
        producer: RecordProducer,
        *,
        clock: Clock | None = None,
        backoff: Backoff = FORWARD_RETRY,
        batch: int = 500,
    ) -> None:
        self.spool = spool
        self.stream = stream
        self.producer = producer
        self._clock = clock or SystemClock()
        self._retries = Retries(backoff)
        self._batch = batch
        self._wake = asyncio.Event()
        self.drained = asyncio.Event()
        self._stopping = False
        self.forwarded = 0  # records acknowledged since start
        self.failing_since: float | None = None  # first failure of the current streak

    def wake(self) -> None:
        self._wake.set()

    async def wait_for(self, seq: int, timeout_s: float) -> bool:
        """Whether the record ``seq`` (of this stream) was acknowledged and removed within
        ``timeout_s``; False leaves it spooled (it is forwarded later all the same)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while True:
                    head = self.spool.head(self.stream, 1)
                    if not head or head[0].seq > seq:
                        return True
                    self.drained.clear()
                    await self.drained.wait()
        return False

    async def run(self) -> None:
        while not self._stopping:
            head = self.spool.head(self.stream, self._batch)
            if not head:
                self._wake.clear()
                await self._wake.wait()
                continue
            failed = await self.producer.send([s.record for s in head])
            left = {id(r) for r in failed}
            done = [s.seq for s in head if id(s.record) not in left]
            if done:
                self.spool.remove(done)
                self.forwarded += len(done)
                self.drained.set()
            if failed:
                if self.failing_since is None:
                    self.failing_since = self._clock.now()
                await self._sleep(self._retries.next())
            else:
                if self.failing_since is not None:
                    log.info("%s: the broker takes them again; the spool is draining", self.producer.what)
                self.failing_since = None
                self._retries.reset()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self.drained.set()

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not self._stopping:
                    await self._wake.wait()
                    self._wake.clear()  # an append during a backoff does not cut it short
