"""Checkpoints: the engine's state together with the Kafka offsets it covers.

A checkpoint is the engine's state in named *parts* (``watcher.engine.parts``: the rollouts and
policies, one part per agent's series, one per judge, the dedup window, ...), each encoded with
msgspec's MessagePack (arrays as raw bytes), and the offsets it covers, per partition. The daemon
writes one at most every ``checkpoint.interval_s`` and *always before it commits offsets to Kafka*; it
commits exactly the offsets of the checkpoint it has just written. On start it restores the engine
from the checkpoint and seeks each assigned partition to the checkpoint's offset, so the batches
processed after the last checkpoint are read again into the state they had not reached yet: every
event counts exactly once in the state (docs/guarantees.md).

Why not the committed offsets alone: a crash between the checkpoint and the commit leaves Kafka's
offsets behind the state; seeking to the checkpoint's own offsets makes the pair atomic.

**Incremental.** A checkpoint carries the parts changed since the store's previous checkpoint of the
same scope and names the others (``kept``): the store keeps those as they were and drops the parts
the state no longer has. The SQLite store writes the offsets, the changed parts and the deletions in
one transaction (WAL), so a reader sees the previous checkpoint or the new one, never half of one,
whatever moment the process is killed at. With thousands of agents a checkpoint writes the agents
that had traffic since the last one, not all of them (``watcher.storage.checkpointer`` also keeps
the event loop free while it happens).

Safe by construction: MessagePack through msgspec, versioned, nothing unpickled or evaluated. A
checkpoint of watcher before #13 (one JSON document, ``{"v": 1, "engine": {...}}``) is still read.

Rows are keyed by a ``scope``: ``"all"`` when one instance keeps one state (``checkpoint.scope:
instance``), ``"partition-<p>"`` per partition task when several instances share a consumer group
(``checkpoint.scope: partition``, ``watcher.engine.tasks``) and a store (docs/guarantees.md, "Scale-out").
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from watcher.errors import CheckpointError

__all__ = [
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "CheckpointStore",
    "MemoryCheckpointStore",
    "NullCheckpointStore",
    "Offsets",
    "SCOPE_ALL",
    "decode",
    "decode_part",
    "encode",
    "encode_part",
    "read_manifest",
]

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 2  # v1: one JSON document (still read)
SCOPE_ALL = "all"  # the one row of a single instance
_MAGIC = b"WCP\x02"  # a v2 document or manifest starts with these bytes (a v1 document with "{")

Offsets = dict[tuple[str, int], int]  # (topic, partition) -> next offset to read

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The engine's state parts and, per partition, the offset of the first message it has not seen.

    ``engine`` maps part names to their state (``Engine.to_state()``); a checkpoint of only the
    parts that changed names the others in ``kept`` (the store holds them from its previous save of
    the scope). A checkpoint restored from a v1 document has its whole state under the v1 keys.
    """

    engine: dict[str, Any]
    offsets: Offsets = field(default_factory=dict)
    written_at: float = 0.0
    owner: str = ""  # the consumer group whose offsets these are: another group's checkpoint is not used
    kept: frozenset[str] = frozenset()
    # set by a store that fell back to an older copy: why the newer checkpoint was not used
    skipped: tuple[str, ...] = ()


def encode_part(state: Any) -> bytes:
    """One part's bytes; raises ``CheckpointError`` on a value MessagePack cannot hold."""
    try:
        return _encoder.encode(state)
    except (TypeError, ValueError, OverflowError) as exc:  # a type leaked from a component
        raise CheckpointError(f"the engine state cannot be encoded: {exc}") from exc


def decode_part(data: bytes) -> Any:
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise CheckpointError(f"a checkpoint part is not valid MessagePack: {exc}") from exc


def _manifest(cp: Checkpoint, parts: list[str]) -> bytes:
    return _MAGIC + encode_part(
        {
            "v": CHECKPOINT_VERSION,
            "owner": cp.owner,
            "written_at": cp.written_at,
            "offsets": [[t, p, int(o)] for (t, p), o in sorted(cp.offsets.items())],
            "parts": parts,
        }
    )


def read_manifest(data: bytes) -> tuple[Checkpoint, list[str]]:
    """A stored manifest's checkpoint (offsets, owner, time; no parts) and the names of its parts."""
    if not data.startswith(_MAGIC):
        raise CheckpointError("not a watcher checkpoint")
    doc = decode_part(data[len(_MAGIC) :])
    if not isinstance(doc, dict) or doc.get("v") != CHECKPOINT_VERSION:
        version = doc.get("v") if isinstance(doc, dict) else type(doc).__name__
        raise CheckpointError(
            f"unsupported checkpoint version {version!r} (this watcher reads v{CHECKPOINT_VERSION} and v1)"
        )
    try:
        offsets: Offsets = {}
        for topic, partition, offset in doc["offsets"]:
            if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                raise ValueError(f"offset of {topic}/{partition} is {offset!r}")
            offsets[(str(topic), int(partition))] = offset
        parts = [str(p) for p in doc["parts"]]
        cp = Checkpoint({}, offsets, float(doc.get("written_at") or 0.0), str(doc.get("owner") or ""))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"malformed checkpoint: {exc}") from exc
    return cp, parts


def encode(cp: Checkpoint) -> bytes:
    """A whole checkpoint as one document (the manifest, then each part's length and bytes)."""
    if cp.kept:
        raise CheckpointError("a checkpoint of changed parts only cannot be encoded alone")
    names = sorted(cp.engine)
    out = [_manifest(cp, names)]
    blobs = [encode_part(cp.engine[n]) for n in names]
    out.append(encode_part(blobs))
    header = len(out[0]).to_bytes(8, "little")
    return header + b"".join(out)


def decode(data: bytes | str) -> Checkpoint:
    """The inverse of ``encode``, and v1 documents (JSON); raises ``CheckpointError`` on another
    version or a malformed document."""
    if isinstance(data, str):
        data = data.encode()
    if data[:1] == b"{":
        return _decode_v1(data)
    try:
        size = int.from_bytes(data[:8], "little")
        cp, names = read_manifest(data[8 : 8 + size])
        blobs = decode_part(data[8 + size :])
        if not isinstance(blobs, list) or len(blobs) != len(names):
            raise CheckpointError("malformed checkpoint: parts do not match the manifest")
    except (IndexError, ValueError) as exc:
        raise CheckpointError(f"malformed checkpoint: {exc}") from exc
    return _with_parts(cp, {n: decode_part(b) for n, b in zip(names, blobs)})


def _with_parts(cp: Checkpoint, parts: dict[str, Any]) -> Checkpoint:
    return Checkpoint(parts, cp.offsets, cp.written_at, cp.owner)


def _decode_v1(data: bytes) -> Checkpoint:
    """A checkpoint written before #13: ``{"v": 1, "engine": {...}, "offsets": {topic: {p: o}}}``."""
    try:
        doc = json.loads(data)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("v") != 1:
        version = doc.get("v") if isinstance(doc, dict) else type(doc).__name__
        raise CheckpointError(
            f"unsupported checkpoint version {version!r} (this watcher reads v{CHECKPOINT_VERSION} and v1)"
        )
    try:
        offsets: Offsets = {}
        for topic, parts in doc["offsets"].items():
            for partition, offset in parts.items():
                if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                    raise ValueError(f"offset of {topic}/{partition} is {offset!r}")
                offsets[(str(topic), int(partition))] = offset
        engine = doc["engine"]
        if not isinstance(engine, dict):
            raise ValueError("engine state is not an object")
        written_at = float(doc.get("written_at") or 0.0)
        owner = str(doc.get("owner") or "")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"malformed checkpoint: {exc}") from exc
    return Checkpoint(engine, offsets, written_at, owner)


class CheckpointStore(Protocol):
    """Where checkpoints live: the latest one per scope survives, older ones are replaced.

    ``save`` of a checkpoint with ``kept`` parts keeps those parts from the scope's previous
    checkpoint (a ``CheckpointError`` if the store does not hold one of them: the caller then saves
    every part) and drops the parts named neither in ``engine`` nor in ``kept``.

    ``load`` returns None only when no checkpoint was written for the scope (as far as the store can
    tell); one that was written but cannot be read raises ``CheckpointLost`` (never None: the daemon
    must not start fresh and overwrite it), an unreachable store ``CheckpointUnavailable``.
    """

    def load(self, scope: str = SCOPE_ALL) -> Checkpoint | None: ...

    def save(self, cp: Checkpoint, scope: str = SCOPE_ALL) -> int: ...  # returns the bytes written

    def close(self) -> None: ...


class NullCheckpointStore:
    """Checkpoints disabled: nothing is kept, every start is a fresh one."""

    def load(self, scope: str = SCOPE_ALL) -> Checkpoint | None:
        return None

    def save(self, cp: Checkpoint, scope: str = SCOPE_ALL) -> int:
        return 0

    def close(self) -> None:
        return None


class MemoryCheckpointStore:
    """For tests: the encoded parts are kept, so a restore exercises the real decoding."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[bytes, dict[str, bytes]]] = {}  # scope -> (manifest, part -> bytes)
        self.saves = 0

    def load(self, scope: str = SCOPE_ALL) -> Checkpoint | None:
        row = self.rows.get(scope)
        if row is None:
            return None
        cp, names = read_manifest(row[0])
        return _with_parts(cp, {n: decode_part(row[1][n]) for n in names})

    def save(self, cp: Checkpoint, scope: str = SCOPE_ALL) -> int:
        previous = self.rows.get(scope, (b"", {}))[1]
        missing = cp.kept - previous.keys()
        if missing:
            raise CheckpointError(f"checkpoint {scope}: kept parts not in the store: {sorted(missing)[:3]}")
        parts = {n: previous[n] for n in cp.kept}
        fresh = {n: encode_part(v) for n, v in cp.engine.items()}
        parts.update(fresh)
        manifest = _manifest(cp, sorted(parts))
        self.rows[scope] = (manifest, parts)
        self.saves += 1
        return len(manifest) + sum(map(len, fresh.values()))

    def close(self) -> None:
        return None
