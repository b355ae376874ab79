"""Checkpoints in a compacted Kafka topic: the store instances on several hosts share.

Like Kafka Streams' changelogs: the broker every instance already reaches keeps the latest checkpoint
of each scope (``partition-<p>``), and the next owner of a partition reads it back. A checkpoint
document is several MB (mostly JSON that compresses ~10x) while a Kafka record is limited to about
1 MB, so a checkpoint is written as records under fixed keys:

* ``<scope>#<write>#<i>``: each part of the state that changed (``watcher.engine.parts``), zlib-
  compressed and cut into chunks of ``chunk_bytes``, under a write id of its own (random);
* ``<scope>``: a manifest ``{"v": 3, "offsets", "owner", "written_at", "parts": {part: {"write",
  "chunks", "bytes", "sha256"}}}``, written last, after every chunk is acknowledged by the broker
  (``acks=all``); a part that did not change keeps the entry (and the chunks) of the manifest before;
* then tombstones for the chunks of the parts it replaced or dropped (compaction removes them).

So a checkpoint of thousands of agents sends the agents that had traffic since the last one, not
the whole state. A write never touches the chunks of any other write: a writer that dies half-way leaves the
previous manifest pointing at intact chunks, and two writers of one scope (an instance paused past
its session timeout that wakes up and checkpoints a partition that has moved on: a "zombie") cannot
corrupt each other's checkpoint; whichever manifest lands last is a whole, consistent checkpoint of
that partition's stream. (Version 1 manifests, with two alternating slots, are still read.)
Compaction keeps the latest record per key, which is all a reader needs. The reader keeps a view of the
latest record
per key and only reads what was appended since its last look, up to a sync record it appends first. The
SHA-256 of each part guards
against a manifest from a newer writer meeting chunks from an older one. (Manifests of version 2, a
whole JSON document, are still read.)

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
from watcher.storage.checkpoint import SCOPE_ALL, Checkpoint, decode, decode_part, encode_part

__all__ = ["KafkaCheckpointStore", "MANIFEST_VERSION"]

log = logging.getLogger(__name__)

MANIFEST_VERSION = 3
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
        """The scope's checkpoint; ``CheckpointLost`` when its manifest is there but it cannot be read
        (chunks missing or not matching their SHA-256): never read as "no checkpoint yet"."""
        try:
            return self._load(scope)
        except CheckpointUnavailable:
            raise
        except CheckpointError as exc:
            raise CheckpointLost(scope, [str(exc)], where=f"topic {self.topic}") from exc

    def _load(self, scope: str) -> Checkpoint | None:
        with self._lock:
            self._run(self._catch_up())
            raw = self._view.get(scope)
            if raw is None:
                return None
            manifest = self._manifest(scope, raw)
            if manifest["v"] != MANIFEST_VERSION:  # v1, v2: one document
                return decode(
                    self._assemble(scope, manifest["write" if manifest["v"] == 2 else "slot"], manifest)
                )
            parts = {
                name: decode_part(self._assemble(scope, name, entry))
                for name, entry in manifest["parts"].items()
            }
        offsets = {(str(t), int(p)): int(o) for t, p, o in manifest["offsets"]}
        return Checkpoint(parts, offsets, float(manifest["written_at"]), str(manifest["owner"]))

    def save(self, cp: Checkpoint, scope: str = SCOPE_ALL) -> int:
        fresh = {name: encode_part(state) for name, state in cp.engine.items()}
        with self._lock:
            return self._run(self._write(scope, cp, fresh))

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

    async def _write(self, scope: str, cp: Checkpoint, fresh: dict[str, bytes]) -> int:
        await self._ensure()
        # The manifest this write replaces, as this instance knows it (it loaded the scope when the
        # partition was assigned and has written it since): kept parts keep its entries, the chunks of
        # the parts replaced or gone are tombstoned afterwards.
        try:
            previous = self._manifest(scope, self._view[scope]) if self._view.get(scope) else None
        except CheckpointError:
            previous = None
        before: dict[str, Any] = previous["parts"] if previous is not None and previous["v"] == 3 else {}
        missing = cp.kept - before.keys()
        if missing:
            raise CheckpointError(f"checkpoint {scope}: kept parts not in the topic: {sorted(missing)[:3]}")
        entries = {name: before[name] for name in cp.kept}
        sends, chunks_of = [], {}
        for name, document in fresh.items():
            write = os.urandom(8).hex()
            packed = zlib.compress(document, 1)
            chunks = [packed[i : i + self.chunk_bytes] for i in range(0, len(packed), self.chunk_bytes)] or [
                b""
            ]
            for i, chunk in enumerate(chunks):
                key = f"{scope}#{write}#{i}"
                sends.append(await self._producer.send(self.topic, chunk, partition=0, key=key.encode()))
                chunks_of[key] = chunk
            entries[name] = {
                "write": write,
                "chunks": len(chunks),
                "bytes": len(document),
                "sha256": hashlib.sha256(document).hexdigest(),
            }
        await asyncio.gather(*sends)  # every chunk acknowledged before the manifest points at them
        manifest = {
            "v": MANIFEST_VERSION,
            "written_at": cp.written_at,
            "owner": cp.owner,
            "offsets": [[t, p, int(o)] for (t, p), o in sorted(cp.offsets.items())],
            "parts": entries,
        }
        raw = json.dumps(manifest).encode()
        await self._producer.send_and_wait(self.topic, raw, partition=0, key=scope.encode())
        self._view.update(chunks_of)
        self._view[scope] = raw
        # the chunks no manifest points at any more: compaction drops them
        stale = [
            f"{scope}#{e['write']}#{i}"
            for name, e in before.items()
            if entries.get(name) is not e
            for i in range(int(e["chunks"]))
        ]
        if previous is not None and previous["v"] != MANIFEST_VERSION:
            old = _chunk_prefix(scope, previous)
            stale += [f"{old}{i}" for i in range(int(previous["chunks"]))]
        if stale:
            await asyncio.gather(
                *[await self._producer.send(self.topic, None, partition=0, key=k.encode()) for k in stale]
            )
            for k in stale:
                self._view.pop(k, None)
        return len(raw) + sum(map(len, fresh.values()))

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
            if not isinstance(manifest, dict) or manifest.get("v") not in (1, 2, MANIFEST_VERSION):
                raise ValueError(f"unsupported manifest {manifest!r:.80}")
            if manifest["v"] == MANIFEST_VERSION:
                for entry in manifest["parts"].values():
                    _chunk_prefix(scope, entry), int(entry["chunks"]), str(entry["sha256"])
                manifest["offsets"], manifest["written_at"], manifest["owner"]
            else:
                _chunk_prefix(scope, manifest), int(manifest["chunks"]), str(manifest["sha256"])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint manifest of {scope!r} is malformed: {exc}") from exc
        return manifest

    def _assemble(self, scope: str, what: Any, entry: Mapping[str, Any]) -> bytes:
        """The document (v1, v2) or the part (v3) an entry of a manifest describes."""
        prefix, count = _chunk_prefix(scope, entry), int(entry["chunks"])
        chunks = []
        for i in range(count):
            chunk = self._view.get(f"{prefix}{i}")
            if chunk is None:
                raise CheckpointError(f"checkpoint of {scope!r}: chunk {i} of {count} of {what} is missing")
            chunks.append(chunk)
        try:
            document = zlib.decompress(b"".join(chunks))
        except zlib.error as exc:
            raise CheckpointError(f"checkpoint of {scope!r} does not decompress: {exc}") from exc
        if hashlib.sha256(document).hexdigest() != entry["sha256"]:
            raise CheckpointError(f"checkpoint of {scope!r}: the chunks of {what} do not match its manifest")
        return document


def _chunk_prefix(scope: str, manifest: Mapping[str, Any]) -> str:
    """The keys of a manifest's chunks, up to the chunk number: its write id (v2, and each part's in
    v3) or slot (v1)."""
    if manifest.get("v") == 1:
        return f"{scope}#{int(manifest['slot'])}#"
    write = manifest["write"]
    if not isinstance(write, str) or not write or "#" in write:
        raise ValueError(f"bad write id {write!r:.40}")
    return f"{scope}#{write}#"
