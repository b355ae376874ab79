"""The event contract (docs EVENT_SCHEMA.md): the typed events, the reject reasons, the encoders.

The contract's rules are ``Meta`` constraints on msgspec Structs, so a valid event is decoded and
validated in C in one pass (``watcher.contract.decode``). Encoding writes the ``schema`` tag from the Struct's
tag, and a rejected message becomes a dead-letter record (``watcher.deadletter/v1``).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
from msgspec import Meta, Struct

__all__ = [
    "DEAD_LETTER_TEXT_CHARS",
    "SCHEMA_DEADLETTER",
    "SCHEMA_DEPLOYMENT",
    "SCHEMA_TURN",
    "MarkerAction",
    "Arm",
    "Deployment",
    "FlagSpec",
    "GateOutcome",
    "Rejected",
    "RejectReason",
    "StrategyName",
    "Turn",
    "dead_letter_record",
    "encode_deployment",
    "encode_turn",
]

SCHEMA_TURN = "watcher.turn/v1"
SCHEMA_DEPLOYMENT = "watcher.deployment/v1"
SCHEMA_DEADLETTER = "watcher.deadletter/v1"

DEAD_LETTER_TEXT_CHARS = 4096


class RejectReason(str, Enum):
    """Why an input message was rejected; the value is the Prometheus ``reason`` label."""

    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    TOO_LARGE = "too_large"
    UNKNOWN_SCHEMA = "unknown_schema"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    OUT_OF_RANGE = "out_of_range"
    BAD_TIMESTAMP = "bad_timestamp"
    NOT_FINITE = "not_finite"
    INVALID_VALUE = "invalid_value"
    TOO_LATE = "too_late"  # reserved for the engine (event time behind its window)
    TOO_EARLY = "too_early"  # reserved for the engine (event time far ahead of the clock and the stream)
    BAD_OTLP = "bad_otlp"  # an OTLP trace request that cannot be read (watcher.contract.otlp)


# ---- field types: the contract's rules as msgspec constraints (checked in C) -----------------------
# Numeric ts is bounded to datetime's own range so every accepted ts converts to a datetime
# (logs, decision records) without OverflowError; RFC 3339 strings cannot leave that range anyway.
_TS_MIN = -62135596800.0  # 0001-01-01T00:00:00Z
_TS_MAX = 253402300800.0  # 10000-01-01T00:00:00Z (exclusive)
_Ts = Annotated[float, Meta(ge=_TS_MIN, lt=_TS_MAX)] | Annotated[datetime, Meta(tz=True)]
_Id128 = Annotated[str, Meta(min_length=1, max_length=128)]
_Id256 = Annotated[str, Meta(min_length=1, max_length=256)]
# int64 bound: the state module stores counts in numpy int64 columns; a bigger int would overflow.
_Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]
# msgspec never yields inf/nan from JSON (it rejects 1e999 as "Number out of range"), so ge=0 suffices.
_NonNeg = Annotated[float, Meta(ge=0.0)]
_Unit = Annotated[float, Meta(ge=0.0, le=1.0)]
_Segment = Annotated[dict[str, Annotated[str, Meta(max_length=64)]], Meta(max_length=16)]
Arm = Literal["baseline", "canary", "shadow", "live"]
MarkerAction = Literal[
    "started", "weight_changed", "paused", "resumed", "promoted", "rolled_back", "aborted", "gated"
]
# A rollout strategy's name. Which names exist is the strategy registry's (``watcher.judges.strategies``,
# plug-ins included): the decoders take its check (``decode_batch(check_marker=...)``).
StrategyName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]


# The tag makes msgspec check ``schema`` in C when present (absent is allowed for a single tagged type)
# and makes encoding write it, without storing it per event. gc=False is safe: the fields are strings,
# numbers and str->str dicts, which cannot form reference cycles.
class Turn(Struct, kw_only=True, tag_field="schema", tag=SCHEMA_TURN, gc=False):
    """One agent turn (``watcher.turn/v1``); ``ts`` is always float Unix seconds once decoded."""

    event_id: _Id128
    # Decoded as RFC 3339 or a number, then converted to float by the decoders of this module.
    if TYPE_CHECKING:
        ts: float
    else:
        ts: _Ts
    agent_id: _Id128
    environment: str = "prod"
    version: _Id128
    arm: Arm | None = None
    conversation_id: _Id256
    turn: _Count = 0
    segment: _Segment = {}
    latency_ms: _NonNeg | None = None
    quality: _Unit | None = None
    escalated: bool = False
    error: bool = False
    compliance_violation: bool = False
    flags: dict[str, str] = {}
    tokens_in: _Count | None = None
    tokens_out: _Count | None = None
    cost_usd: _NonNeg | None = None
    # the trace the turn belongs to (OTLP input: the span's trace id, 32 hex digits): decisions link
    # their example conversations to it
    trace_id: Annotated[str, Meta(min_length=1, max_length=64)] | None = None


class FlagSpec(Struct, kw_only=True, gc=False):
    """The feature flag of a ``strategy: flag`` rollout and its two variants."""

    name: Annotated[str, Meta(min_length=1)]
    control: Annotated[str, Meta(min_length=1)]
    treatment: Annotated[str, Meta(min_length=1)]


class GateOutcome(Struct, kw_only=True, gc=False):
    """What a pre-production gate concluded about ``canary_version`` (a ``gated`` marker)."""

    verdict: Literal["pass", "fail", "inconclusive"]
    decision_id: _Id128 | None = None  # the gate's watcher.decision/v1 record


class Deployment(Struct, kw_only=True, tag_field="schema", tag=SCHEMA_DEPLOYMENT, gc=False):
    """A deployment marker (``watcher.deployment/v1``). Versions are 1-128 chars like a turn's."""

    event_id: _Id128
    if TYPE_CHECKING:
        ts: float
    else:
        ts: _Ts
    agent_id: _Id128
    environment: str = "prod"
    action: MarkerAction
    strategy: StrategyName | None = None
    baseline_version: _Id128 | None = None
    canary_version: _Id128 | None = None
    canary_weight: _Unit | None = None
    flag: FlagSpec | None = None
    gate: GateOutcome | None = None  # with action "gated"
    actor: str | None = None
    notes: str | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input message that broke the contract, with the original bytes for the dead letter."""

    reason: RejectReason
    detail: str
    raw: bytes
    origin: str = ""  # "topic/partition@offset" or "file:line"


_ENCODER = msgspec.json.Encoder()


# ---- encoding ----------------------------------------------------------------------------------------


def dead_letter_record(
    r: Rejected,
    now: float,
    *,
    part: int = 0,
    parts: int = 1,
    raw_bytes: int | None = None,
    raw_sha256: str | None = None,
) -> bytes:
    """The dead-letter JSON for a rejection; the original bytes travel base64 (any bytes fit).

    A message too large for one Kafka record travels in ``parts`` records, each with its slice of
    the bytes in ``raw`` (``r.raw`` here) and ``part`` (0-based), ``parts``, ``raw_bytes`` (the
    whole message's size) and ``raw_sha256`` (of the whole message) to put them together again.

    >>> rec = msgspec.json.decode(dead_letter_record(Rejected(RejectReason.NOT_JSON, "x", b"{"), 5.0))
    >>> rec["schema"], rec["reason"], rec["raw_b64"], rec["raw_text"]
    ('watcher.deadletter/v1', 'not_json', 'ew==', '{')
    """
    try:
        text: str | None = r.raw.decode("utf-8")[:DEAD_LETTER_TEXT_CHARS] if part == 0 else None
    except UnicodeDecodeError:
        text = None
    record: dict[str, object] = {
        "schema": SCHEMA_DEADLETTER,
        "reason": r.reason.value,
        "detail": r.detail,
        "origin": r.origin,
        "ts": now,
        "raw_b64": base64.b64encode(r.raw).decode("ascii"),
        "raw_text": text,
    }
    if parts > 1:
        record.update(part=part, parts=parts, raw_bytes=raw_bytes, raw_sha256=raw_sha256)
    return _ENCODER.encode(record)


def encode_turn(t: Turn) -> bytes:
    """The turn as contract JSON (with ``schema``); decoding it gives back an equal Turn."""
    return _ENCODER.encode(t)


def encode_deployment(d: Deployment) -> bytes:
    """The marker as contract JSON (with ``schema``); decoding it gives back an equal Deployment."""
    return _ENCODER.encode(d)
