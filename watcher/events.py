"""The event contract (docs EVENT_SCHEMA.md): decoding, validation, deduplication, dead letters.

The one import point for the contract; each concept lives in its own module and is re-exported here:

- ``watcher.event_schema``: the typed events (``Turn``, ``Deployment``, ``FlagSpec``), the closed
  vocabulary of ``RejectReason``, ``Rejected``, the encoders and ``dead_letter_record``;
- ``watcher.decode``: ``decode_batch`` / ``decode_deployment`` (a fast path validated in C, a slow
  path naming the precise reason) and their result, ``DecodedBatch``;
- ``watcher.dedup``: the ``Deduplicator`` window of recently seen event ids;
- ``watcher.turn_columns``: ``TurnColumns``, a batch's columns extracted once for every consumer.

Malformed input is a value (:class:`Rejected`), never an exception.

>>> dedup = Deduplicator()
>>> raw = (b'{"event_id":"e1","ts":"2026-11-27T08:00:00Z","agent_id":"bot","version":"v2",'
...        b'"conversation_id":"c1"}')
>>> batch = decode_batch([raw, raw, b'{"event_id":"e2"}'], dedup)
>>> batch.turns[0].ts, batch.turns[0].environment, batch.duplicates
(1795766400.0, 'prod', 1)
>>> batch.rejected[0].reason, batch.rejected[0].detail
(<RejectReason.MISSING_FIELD: 'missing_field'>, 'ts: object missing required field `ts`')
"""

from __future__ import annotations

from watcher.decode import DecodedBatch, decode_batch, decode_deployment
from watcher.dedup import Deduplicator
from watcher.event_schema import (
    SCHEMA_DEADLETTER,
    SCHEMA_DEPLOYMENT,
    SCHEMA_TURN,
    Action,
    Arm,
    Deployment,
    FlagSpec,
    Rejected,
    RejectReason,
    Strategy,
    Turn,
    dead_letter_record,
    encode_deployment,
    encode_turn,
)
from watcher.turn_columns import TurnColumns

__all__ = [
    "SCHEMA_DEADLETTER",
    "SCHEMA_DEPLOYMENT",
    "SCHEMA_TURN",
    "Action",
    "Arm",
    "DecodedBatch",
    "Deduplicator",
    "Deployment",
    "FlagSpec",
    "Rejected",
    "RejectReason",
    "Strategy",
    "Turn",
    "TurnColumns",
    "dead_letter_record",
    "decode_batch",
    "decode_deployment",
    "encode_deployment",
    "encode_turn",
]
