"""Checkpoints in a compacted Kafka topic: the store instances on several hosts share.

Like Kafka Streams' changelogs: the broker every instance already reaches keeps the latest checkpoint
of each scope (``partition-<p>``), and the next owner of a partition reads it back. A checkpoint
document is several MB (mostly JSON that compresses ~10x) while a Kafka record is limited to about
1 MB, so a checkpoint is written as records under fixed keys:

* ``<scope>#<write>#<i>``: the zlib-compressed document, cut into chunks of ``chunk_bytes``, under
  a write id of its own (random);
* ``<scope>``: a manifest ``{"v": 2, "write", "chunks", "bytes", "sha256", "written_at"}``, written
  last, after every chunk is acknowledged by the broker (``acks=all``);
* then tombstones for the chunks of the manifest it replaced (compaction removes them).

A write never touches the chunks of any other write: a writer that dies half-way leaves the
previous manifest pointing at intact chunks, and two writers of one scope (an instance paused past
its session timeout that wakes up and checkpoints a partition that has moved on: a "zombie") cannot
corrupt each other's checkpoint; whichever manifest lands last is a whole, consistent checkpoint of
that partition's stream. (Version 1 manifests, with two alternating slots, are still read.)
Compaction keeps the latest record per key, which is all a reader needs. The reader keeps a view of the
latest record
per key and only reads what was appended since its last look, up to a sync record it appends first. The
SHA-256 of the document guards
against a manifest from a newer writer meeting chunks from an older one.

aiokafka is asynchronous and ``CheckpointStore`` is not (the SQLite store writes synchronously as
well): the store runs its own event loop in a thread and ``save``/``load`` wait for it, so a save
pauses the daemon's loop as a SQLite write does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
import zlib
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from watcher.errors import CheckpointError, CheckpointLost, CheckpointUnavailable
from watcher.storage.checkpoint import SCOPE_ALL, Checkpoint, decode, encode

__all__ = ["KafkaCheckpointStore", "MANIFEST_VERSION"]

log = logging.getLogger(__name__)

MANIFEST_VERSION = 2
DEFAULT_CHUNK_BYTES = 512 * 1024  # well under Kafka's default 1 MB record limit
_SYNC_KEY = b"__sync__"  # a reader's "read up to here" mark (compaction keeps only the last one)

T = TypeVar("T")


class KafkaCheckpointStore:
    """``CheckpointStore`` over a compacted topic (created with one partition if missing; only its
    partition 0 is used, so a topic created otherwise still works)."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        client_options: Mapping[str, Any] | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        timeout_s: float = 60.0,
    ) -> None:
        if chunk_bytes <= 0:
            raise CheckpointError(f"chunk_bytes must be positive, got {chunk_bytes}")
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.chunk_bytes = chunk_bytes
        self.timeout_s = timeout_s
        self._options = dict(client_options or {})
        self._view: dict[str, bytes] = {}  # key -> latest value read from the topic
        self._position = 0  # the next offset of the topic's one partition to read into the view
        self._producer: Any = None
        self._consumer: Any = None
        self._ready = False
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="checkpoint-kafka", daemon=True)
        self._thread.start()

    # -- CheckpointStore --------------------------------------------------------------------------
    def load(self, scope: str = SCOPE_ALL) -> Checkpoint | None:
        with self._lock:
            self._run(self._catch_up())
            manifest = self._view.get(scope)
            if manifest is None:
                return None
            try:
                return decode(self._assemble(scope, manifest))
            except CheckpointUnavailable:
                raise
            except CheckpointError as exc:  # written, but not readable: never read as "none yet"
                raise CheckpointLost(scope, [str(exc)], where=f"topic {self.topic}") from exc

    def save(self, cp: Checkpoint, scope: str = SCOPE_ALL) -> int:
        document = encode(cp)
        with self._lock:
            self._run(self._write(scope, document, cp.written_at))
        return len(document)

    def close(self) -> None:
        with self._lock:
            for client in (self._producer, self._consumer):
                if client is None:
                    continue
                try:
                    self._run(client.stop())
                except Exception as exc:
                    log.debug("closing a checkpoint client: %r", exc)
            self._producer = self._consumer = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    # -- internals ----------------------------------------------------------------------------------
    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self.timeout_s)
        except CheckpointError:
            raise
        except Exception as exc:  # the broker is down, a timeout, a rejected record...
            future.cancel()
            raise CheckpointUnavailable(f"checkpoint topic {self.topic!r}: {exc!r}") from exc

    async def _ensure(self) -> None:
        if self._ready:
            return
        from aiokafka import AIOKafkaProducer

        from watcher.kafka import TopicSpec, create_topics

        await create_topics(
            self.bootstrap_servers,
            [
                TopicSpec(
                    self.topic,
                    1,
                    configs={
                        "cleanup.policy": "compact",
                        "max.message.bytes": str(self.chunk_bytes + 64 * 1024),
                    },
                )
            ],
            client_options=self._options,
        )
        from aiokafka import AIOKafkaConsumer, TopicPartition

        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            acks="all",
            max_request_size=self.chunk_bytes + 64 * 1024,
            **self._options,
        )
        await producer.start()
        fetch = 4 * self.chunk_bytes + 1024 * 1024
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_bytes=fetch,
            max_partition_fetch_bytes=fetch,
            **self._options,
        )
        await consumer.start()
        consumer.assign([TopicPartition(self.topic, 0)])
        self._producer, self._consumer = producer, consumer
        self._ready = True

    async def _write(self, scope: str, document: bytes, written_at: float) -> None:
        await self._ensure()
        # The manifest this write replaces, as this instance knows it (it loaded the scope when the
        # partition was assigned and has written it since): its chunks are tombstoned afterwards.
        try:
            previous = self._manifest(scope, self._view[scope]) if self._view.get(scope) else None
        except CheckpointError:
            previous = None
        write = os.urandom(8).hex()
        packed = zlib.compress(document, 1)
        chunks = [packed[i : i + self.chunk_bytes] for i in range(0, len(packed), self.chunk_bytes)] or [b""]
        sends = [
            await self._producer.send(self.topic, chunk, partition=0, key=f"{scope}#{write}#{i}".encode())
            for i, chunk in enumerate(chunks)
        ]
        await asyncio.gather(*sends)  # every chunk acknowledged before the manifest points at them
        manifest = {
            "v": MANIFEST_VERSION,
            "write": write,
            "chunks": len(chunks),
            "bytes": len(document),
            "sha256": hashlib.sha256(document).hexdigest(),
            "written_at": written_at,
        }
        raw = json.dumps(manifest).encode()
        await self._producer.send_and_wait(self.topic, raw, partition=0, key=scope.encode())
        self._view.update({f"{scope}#{write}#{i}": chunk for i, chunk in enumerate(chunks)})
        self._view[scope] = raw
        if previous is not None:  # the replaced checkpoint's chunks: compaction drops them
            old = _chunk_prefix(scope, previous)
            tombstones = [
                await self._producer.send(self.topic, None, partition=0, key=f"{old}{i}".encode())
                for i in range(int(previous["chunks"]))
            ]
            await asyncio.gather(*tombstones)
            for i in range(int(previous["chunks"])):
                self._view.pop(f"{old}{i}", None)

    async def _catch_up(self) -> None:
        """Read what was appended since the last look into the view, up to now.

        "Now" is a sync record this reader appends first: once the view has read past it, it has
        every record any writer had appended before. (A fetch's high watermark can be stale by one
        long-poll, and some Kafka-compatible brokers report ``end_offsets`` wrongly.)"""
        await self._ensure()
        from aiokafka import TopicPartition

        tp = TopicPartition(self.topic, 0)
        sync = await self._producer.send_and_wait(self.topic, b"", partition=0, key=_SYNC_KEY)
        consumer = self._consumer
        consumer.seek(tp, self._position)
        while self._position <= sync.offset:
            data = await consumer.getmany(tp, timeout_ms=500, max_records=1000)
            for record in data.get(tp, []):
                if record.key is not None and record.key != _SYNC_KEY:
                    key = record.key.decode()
                    if record.value is None:  # a tombstone
                        self._view.pop(key, None)
                    else:
                        self._view[key] = record.value
                self._position = record.offset + 1

    def _manifest(self, scope: str, raw: bytes | None) -> dict[str, Any]:
        try:
            manifest = json.loads(raw or b"")
            if not isinstance(manifest, dict) or manifest.get("v") not in (1, MANIFEST_VERSION):
                raise ValueError(f"unsupported manifest {manifest!r:.80}")
            _chunk_prefix(scope, manifest), int(manifest["chunks"]), str(manifest["sha256"])
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(f"checkpoint manifest of {scope!r} is malformed: {exc}") from exc
        return manifest

    def _assemble(self, scope: str, raw: bytes) -> bytes:
        manifest = self._manifest(scope, raw)
        prefix, count = _chunk_prefix(scope, manifest), int(manifest["chunks"])
        parts = []
        for i in range(count):
            chunk = self._view.get(f"{prefix}{i}")
            if chunk is None:
                raise CheckpointError(f"checkpoint of {scope!r}: chunk {i} of {count} is missing")
            parts.append(chunk)
        try:
            document = zlib.decompress(b"".join(parts))
        except zlib.error as exc:
            raise CheckpointError(f"checkpoint of {scope!r} does not decompress: {exc}") from exc
        if hashlib.sha256(document).hexdigest() != manifest["sha256"]:
            raise CheckpointError(f"checkpoint of {scope!r}: its chunks do not match its manifest")
        return document


def _chunk_prefix(scope: str, manifest: Mapping[str, Any]) -> str:
    """The keys of a manifest's chunks, up to the chunk number: its write id (v2) or slot (v1)."""
    if manifest.get("v") == 1:
        return f"{scope}#{int(manifest['slot'])}#"
    write = manifest["write"]
    if not isinstance(write, str) or not write or "#" in write:
        raise ValueError(f"bad write id {write!r:.40}")
    return f"{scope}#{write}#"
