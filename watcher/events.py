"""The event contract (docs EVENT_SCHEMA.md): decoding, validation, deduplication, dead letters.

Valid events are decoded by msgspec straight into typed Structs whose ``Meta`` constraints carry the
contract's rules, so the common case is validated in C in one pass. Only when that fails does the
slow path run a generic decode to route the message (turn, deployment, unknown schema) and to name
the precise :class:`RejectReason`. Malformed input is a value (:class:`Rejected`), never an
exception.

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

import base64
import collections
import functools
import itertools
import json
import math
import operator
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
import numpy as np
from msgspec import Meta, Struct

from watcher.errors import CheckpointError

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
Action = Literal["started", "weight_changed", "paused", "resumed", "promoted", "rolled_back", "aborted"]
Strategy = Literal["canary", "shadow", "blue_green", "flag"]


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


class FlagSpec(Struct, kw_only=True, gc=False):
    """The feature flag of a ``strategy: flag`` rollout and its two variants."""

    name: Annotated[str, Meta(min_length=1)]
    control: Annotated[str, Meta(min_length=1)]
    treatment: Annotated[str, Meta(min_length=1)]


class Deployment(Struct, kw_only=True, tag_field="schema", tag=SCHEMA_DEPLOYMENT, gc=False):
    """A deployment marker (``watcher.deployment/v1``). Versions are 1-128 chars like a turn's."""

    event_id: _Id128
    if TYPE_CHECKING:
        ts: float
    else:
        ts: _Ts
    agent_id: _Id128
    environment: str = "prod"
    action: Action
    strategy: Strategy | None = None
    baseline_version: _Id128 | None = None
    canary_version: _Id128 | None = None
    canary_weight: _Unit | None = None
    flag: FlagSpec | None = None
    actor: str | None = None
    notes: str | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input message that broke the contract, with the original bytes for the dead letter."""

    reason: RejectReason
    detail: str
    raw: bytes
    origin: str = ""  # "topic/partition@offset" or "file:line"


_COL_TS = operator.attrgetter("ts")
_COL_LAT = operator.attrgetter("latency_ms")
_COL_Q = operator.attrgetter("quality")
_COL_ESC = operator.attrgetter("escalated")
_COL_ERR = operator.attrgetter("error")
_COL_COMP = operator.attrgetter("compliance_violation")
_COL_TURN = operator.attrgetter("turn")
_COL_CID = operator.attrgetter("conversation_id")
_COL_SEG = operator.attrgetter("segment")
_COL_ROUTE = operator.attrgetter("agent_id", "environment", "version", "arm")


class TurnColumns:
    """The columns of a batch of turns that route, state, judge and drift read, each extracted once.

    Every consumer used to read ~10 attributes per turn on its own (~0.3 µs per consumer and turn);
    here each column is one C-level ``map`` over the turns, built on first use and shared. Columns are
    lazy, so objects that only have some attributes (a test's ``TurnLike``) still work. Float columns
    hold NaN for None. ``route_code`` numbers each turn's ``(agent_id, environment, version, arm)``
    in order of first appearance (``route_keys[code]``; ``route_first[code]``: its first turn), so
    per-key work (routing, series lookup, per-agent selection) runs per distinct key, not per turn.
    After routing, ``routed`` holds the arms list the registry returned and the resolved arm per key.
    """

    def __init__(self, turns: Sequence[Any], *, ts: np.ndarray | None = None) -> None:
        self.turns = turns
        self.n = len(turns)
        self.routed: tuple[list[str], list[str]] | None = None  # (arms per turn, arm per route key)
        if ts is not None:
            self.__dict__["ts"] = ts

    @cached_property
    def ts(self) -> np.ndarray:
        return np.fromiter(map(_COL_TS, self.turns), np.float64, self.n)

    @cached_property
    def latency(self) -> np.ndarray:
        return np.fromiter(map(_COL_LAT, self.turns), np.float64, self.n)  # None -> NaN

    @cached_property
    def quality(self) -> np.ndarray:
        return np.fromiter(map(_COL_Q, self.turns), np.float64, self.n)

    @cached_property
    def escalated(self) -> np.ndarray:
        return np.fromiter(map(_COL_ESC, self.turns), bool, self.n)

    @cached_property
    def error(self) -> np.ndarray:
        return np.fromiter(map(_COL_ERR, self.turns), bool, self.n)

    @cached_property
    def compliance(self) -> np.ndarray:
        return np.fromiter(map(_COL_COMP, self.turns), bool, self.n)

    @cached_property
    def first_turn(self) -> np.ndarray:
        """True for a conversation's turn 0 (where a conversation is counted)."""
        return np.fromiter(map(_COL_TURN, self.turns), np.int64, self.n) == 0

    @cached_property
    def conversation_id(self) -> list[str]:
        return list(map(_COL_CID, self.turns))

    @cached_property
    def segment(self) -> list[dict[str, str]]:
        return list(map(_COL_SEG, self.turns))

    @cached_property
    def route_code(self) -> np.ndarray:
        # defaultdict + a counter: one dict lookup per turn, in C, numbers keys by first appearance
        codes: defaultdict[tuple[Any, ...], int] = defaultdict(itertools.count().__next__)
        code = np.fromiter(map(codes.__getitem__, map(_COL_ROUTE, self.turns)), np.intp, self.n)
        self.__dict__["route_keys"] = list(codes)
        return code

    @cached_property
    def route_keys(self) -> list[tuple[str, str, str, str | None]]:
        self.route_code  # noqa: B018 (sets route_keys)
        return self.__dict__["route_keys"]  # type: ignore[no-any-return]

    @cached_property
    def route_first(self) -> np.ndarray:
        """Index of the first turn of each route key (codes rise exactly there)."""
        code = self.route_code
        if not self.n:
            return np.zeros(0, np.intp)
        top = np.maximum.accumulate(code)
        return np.flatnonzero(np.concatenate(([True], top[1:] > top[:-1])))

    def arm_is(self, arms: Sequence[str], arm: str) -> np.ndarray:
        """Boolean mask of ``arms[i] == arm``; per route key when ``arms`` is the routed list."""
        routed = self.routed
        # a strategy may hand its judge a copy of the routed list (``strategies.arms_for``): list ==
        # compares identical items by identity in C, far cheaper than the per-turn comparison below
        if routed is not None and (routed[0] is arms or (isinstance(arms, list) and routed[0] == arms)):
            return np.fromiter(map(arm.__eq__, routed[1]), bool, len(routed[1]))[self.route_code]
        return np.fromiter(map(arm.__eq__, arms), bool, len(arms))

    def take(self, idx: np.ndarray) -> TurnColumns:
        """The columns of the turns at ``idx`` (columns already built are sliced, not re-read)."""
        pos = idx.tolist()
        turns = self.turns
        sub = TurnColumns([turns[i] for i in pos])
        d = self.__dict__
        for name in ("ts", "latency", "quality", "escalated", "error", "compliance", "first_turn"):
            if name in d:
                sub.__dict__[name] = d[name][idx]
        for name in ("conversation_id", "segment"):
            if name in d:
                col = d[name]
                sub.__dict__[name] = [col[i] for i in pos]
        return sub


@dataclass(slots=True)
class DecodedBatch:
    turns: list[Turn]
    deployments: list[Deployment]
    rejected: list[Rejected]
    duplicates: int
    _columns: TurnColumns | None = field(default=None, repr=False, compare=False)

    @property
    def columns(self) -> TurnColumns:
        """The turns' shared columns (built once, on first use)."""
        if self._columns is None or self._columns.turns is not self.turns:
            self._columns = TurnColumns(self.turns)
        return self._columns


class Deduplicator:
    """A bounded window of recently seen event ids.

    Two generations of sets: when the current one reaches ``capacity`` it becomes the previous one
    and a fresh one starts, so between ``capacity`` and ``2 * capacity`` most recent ids are
    remembered at a fixed memory bound, with O(1) work per id and no per-id timestamps.

    >>> d = Deduplicator(capacity=2)
    >>> [d.seen(x) for x in ["a", "b", "a", "c", "d", "a"]]
    [False, False, True, False, False, False]
    """

    def __init__(self, capacity: int = 200_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._current: set[str] = set()
        self._previous: set[str] = set()

    def seen(self, event_id: str) -> bool:
        """True if ``event_id`` is in the window; otherwise records it and returns False."""
        if event_id in self._current or event_id in self._previous:
            return True
        self._current.add(event_id)
        if len(self._current) >= self.capacity:
            self._rotate()
        return False

    def _add_batch(self, ids: list[str]) -> list[bool] | None:
        """Record a batch of ids; None when all are new, else a parallel list of "is new" flags.

        Same outcome as ``[not self.seen(x) for x in ids]`` but built from set and map operations in
        C: a Python loop of ``seen`` calls would cost more than decoding. The window rotates once per
        batch here, so the current generation may overshoot ``capacity`` by at most one batch.
        """
        batch = set(ids)
        known = batch & self._previous
        if self._current:
            known |= batch & self._current
        if not known and len(batch) == len(ids):
            self._current |= batch
            flags = None
        else:
            n = len(ids)
            first = dict(zip(reversed(ids), range(n - 1, -1, -1)))  # id -> index of its first occurrence
            is_first = map(operator.eq, map(first.__getitem__, ids), range(n))
            flags = list(map(operator.gt, is_first, map(known.__contains__, ids)))  # first and not known
            self._current |= batch - known
        if len(self._current) >= self.capacity:
            self._rotate()
        return flags

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def _rotate(self) -> None:
        self._previous = self._current
        self._current = set()

    def to_state(self) -> dict[str, Any]:
        return {
            "v": 1,
            "capacity": self.capacity,
            "current": list(self._current),
            "previous": list(self._previous),
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> Deduplicator:
        if not isinstance(d, dict) or d.get("v") != 1:
            version = d.get("v") if isinstance(d, dict) else d
            raise CheckpointError(f"deduplicator state: unsupported version {version!r}")
        try:
            dedup = cls(int(d["capacity"]))
            dedup._current = {str(x) for x in d["current"]}
            dedup._previous = {str(x) for x in d["previous"]}
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"deduplicator state: {e}") from e
        return dedup


# ---- decoding ----------------------------------------------------------------------------------------

_TURN_DECODER = msgspec.json.Decoder(Turn)
_DEPLOYMENT_DECODER = msgspec.json.Decoder(Deployment)
_ANY_DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()
# Deployment ids live in their own namespace of the window, so a producer reusing an id of a turn can
# never make a marker (rare and critical) disappear as a "duplicate".
_DEPLOYMENT_KEY = "\x00deployment\x00"

_Problem = tuple[RejectReason, str]
_TS = operator.attrgetter("ts")
_EVENT_ID = operator.attrgetter("event_id")
_FLOAT_ONLY = {float}
_DATETIME_ONLY = {datetime}


def decode_batch(
    raws: Sequence[bytes],
    dedup: Deduplicator,
    *,
    origins: Sequence[str] | None = None,
    max_bytes: int = 65_536,
) -> DecodedBatch:
    """Decode and validate a batch of messages; never raises for any input.

    Every input ends up exactly once in ``turns``, ``deployments``, ``rejected`` or ``duplicates``.
    ``origins`` (parallel to ``raws``) label the rejections.
    """
    turns: list[Turn] = []
    deployments: list[Deployment] = []
    rejected: list[Rejected] = []
    duplicates = 0
    if not isinstance(raws, (list, tuple)):
        raws = list(raws)  # it is read twice below (sizes, then contents) and indexed
    try:
        fits = max(map(len, raws), default=0) <= max_bytes
    except Exception:  # a value without a length (e.g. a tombstone's None): checked one by one
        fits = False
    decode: Callable[[Any], Turn] = (
        _TURN_DECODER.decode if fits else functools.partial(_decode_turn_limited, max_bytes=max_bytes)
    )
    # The common case runs without Python bytecode per event: list.extend over map() decodes in C
    # until a message fails; CPython keeps the items appended before the failure, so the failing
    # index is known, that one message takes the slow path, and extend resumes after it.
    it = iter(raws)
    i = 0  # index of the next message extend() will take
    while True:
        before = len(turns)
        try:
            turns.extend(map(decode, it))
            break
        except Exception:  # every failure is classified precisely on the slow path below
            i += len(turns) - before
        raw = raws[i]
        ev = _decode_slow(raw, max_bytes, turn_by_default=True)
        if isinstance(ev, Turn):
            turns.append(ev)
        elif isinstance(ev, Deployment):
            if dedup.seen(_DEPLOYMENT_KEY + ev.event_id):
                duplicates += 1
            else:
                deployments.append(ev)
        else:
            rejected.append(Rejected(ev[0], ev[1], _as_bytes(raw), _origin(origins, i)))
        i += 1
    columns: TurnColumns | None = None
    if turns:
        unique = dedup._add_batch(list(map(_EVENT_ID, turns)))
        if unique is not None:
            duplicates += unique.count(False)
            turns = list(itertools.compress(turns, unique))
        # after dedup (fewer to convert); the float column is kept for the batch's consumers
        columns = TurnColumns(turns, ts=np.array(_timestamps_to_float(turns), np.float64))
    return DecodedBatch(turns, deployments, rejected, duplicates, columns)


def _decode_turn_limited(raw: bytes, max_bytes: int) -> Turn:
    if len(raw) > max_bytes:
        raise ValueError("too large")  # classified (TOO_LARGE) on the slow path
    return _TURN_DECODER.decode(raw)


def _timestamps_to_float(turns: list[Turn]) -> list[float]:
    """msgspec yields a datetime for the RFC 3339 form of ``ts``; the contract's type is float seconds.

    Converts in place and returns the float stamps in order."""
    stamps: list[Any] = list(map(_TS, turns))
    kinds = set(map(type, stamps))
    if kinds == _FLOAT_ONLY:
        return stamps
    if kinds == _DATETIME_ONLY:
        floats = list(map(datetime.timestamp, stamps))
    else:
        floats = [x if x.__class__ is float else x.timestamp() for x in stamps]
    collections.deque(map(setattr, turns, itertools.repeat("ts"), floats), maxlen=0)
    return floats


def decode_deployment(raw: bytes, *, max_bytes: int = 65_536) -> Deployment | Rejected:
    """Decode a deployment marker received over the HTTP API (no dedup; ``schema`` may be omitted).

    >>> decode_deployment(b'{"event_id":"d1","ts":0,"agent_id":"bot","action":"paused"}').action
    'paused'
    >>> decode_deployment(b'{"event_id":"d1","ts":0,"agent_id":"bot","action":"started"}').reason
    <RejectReason.MISSING_FIELD: 'missing_field'>
    """
    ev = _decode_slow(raw, max_bytes, turn_by_default=False)
    if isinstance(ev, Deployment):
        return ev
    if isinstance(ev, Turn):
        detail = f"schema: expected {SCHEMA_DEPLOYMENT!r}"
        return Rejected(RejectReason.UNKNOWN_SCHEMA, detail, _as_bytes(raw))
    return Rejected(ev[0], ev[1], _as_bytes(raw))


def _decode_slow(raw: Any, max_bytes: int, *, turn_by_default: bool) -> Turn | Deployment | _Problem:
    """Route one message and validate it, naming the precise reason on failure. Never raises."""
    try:
        return _decode_slow_unsafe(raw, max_bytes, turn_by_default)
    except Exception as e:  # a bug here must cost one message, not the batch
        return RejectReason.INVALID_VALUE, _clip(f"undecodable: {type(e).__name__}: {e}")


def _decode_slow_unsafe(raw: Any, max_bytes: int, turn_by_default: bool) -> Turn | Deployment | _Problem:
    if raw is None:
        return RejectReason.NOT_JSON, "empty message (no value)"
    if not isinstance(raw, (bytes, bytearray, memoryview, str)):
        return RejectReason.NOT_JSON, f"expected bytes, got {type(raw).__name__}"
    if len(raw) > max_bytes:
        return RejectReason.TOO_LARGE, f"message is {len(raw)} bytes, limit is {max_bytes}"
    obj, problem = _generic_decode(raw)
    if problem is not None:
        return problem
    if not isinstance(obj, dict):
        return RejectReason.NOT_OBJECT, f"expected a JSON object, got {_json_kind(obj)}"
    schema = obj.get("schema", SCHEMA_TURN if turn_by_default else SCHEMA_DEPLOYMENT)
    decoder: msgspec.json.Decoder[Any]
    if schema == SCHEMA_TURN:
        decoder = _TURN_DECODER
    elif schema == SCHEMA_DEPLOYMENT:
        decoder = _DEPLOYMENT_DECODER
    elif not isinstance(schema, str):
        return RejectReason.WRONG_TYPE, f"schema: expected `str`, got {_describe(schema)}"
    else:
        return RejectReason.UNKNOWN_SCHEMA, _clip(
            f"schema: unknown {schema!r}, expected {SCHEMA_TURN!r} or {SCHEMA_DEPLOYMENT!r}"
        )
    try:
        ev = decoder.decode(raw)
    except msgspec.ValidationError as e:
        return _map_validation_error(str(e), obj)
    except Exception as e:  # e.g. non-UTF-8 in a string the generic decoder accepted
        return RejectReason.NOT_JSON, _clip(f"{type(e).__name__}: {e}")
    if ev.ts.__class__ is not float:
        ev.ts = ev.ts.timestamp()
    if isinstance(ev, Deployment):
        rule = _deployment_rule_problem(ev)
        if rule is not None:
            return rule
    return ev  # type: ignore[no-any-return]


def _generic_decode(raw: bytes | bytearray | memoryview | str) -> tuple[Any, _Problem | None]:
    """A schema-less decode, to route the message and to look up the offending value."""
    try:
        return _ANY_DECODER.decode(raw), None
    except RecursionError:
        return None, (RejectReason.NOT_JSON, "JSON is nested too deeply")
    except UnicodeDecodeError as e:
        return None, (RejectReason.NOT_JSON, _clip(f"not valid UTF-8: {e}"))
    except (msgspec.DecodeError, ValueError) as e:
        first_error = str(e)
    # msgspec refuses NaN, Infinity and numbers that overflow to inf (1e999); the stdlib parser takes
    # them, which lets the rejection name the field and say NOT_FINITE rather than just "malformed".
    try:
        text = raw.decode("utf-8") if not isinstance(raw, str) else raw
        obj = json.loads(text)
    except Exception:
        return None, (RejectReason.NOT_JSON, _clip(first_error))
    bad = _first_non_finite(obj, "$")
    if bad is not None:
        return None, (RejectReason.NOT_FINITE, f"{_field(bad[0])}: not a finite number ({bad[1]!r})")
    return None, (RejectReason.NOT_JSON, _clip(first_error))


def _first_non_finite(obj: Any, path: str, depth: int = 0) -> tuple[str, float] | None:
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (path, obj)
    if depth > 64:  # the parsers already bound depth; this keeps the walk cheap on odd inputs
        return None
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (float, dict, list)):
                found = _first_non_finite(v, f"{path}.{k}", depth + 1)
                if found is not None:
                    return found
    elif isinstance(obj, list):
        for j, v in enumerate(obj):
            if isinstance(v, (float, dict, list)):
                found = _first_non_finite(v, f"{path}[{j}]", depth + 1)
                if found is not None:
                    return found
    return None


def _deployment_rule_problem(d: Deployment) -> _Problem | None:
    """Cross-field rules that msgspec constraints cannot express."""
    if d.action == "started":
        if d.strategy is None:
            return RejectReason.MISSING_FIELD, "strategy: required when action is 'started'"
        if d.strategy == "flag" and d.flag is None:
            return RejectReason.MISSING_FIELD, "flag: required when strategy is 'flag' and action 'started'"
    return None


_AT = " - at `"
_RANGE = re.compile(r"^Expected `[^`]+` (of length )?[<>]=? ")
_PATH_TOKEN = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")
_MISSING = object()


def _map_validation_error(message: str, obj: dict[str, Any]) -> _Problem:
    """Turn msgspec's validation message into a reason and a short detail naming the field."""
    core, sep, path = message.rpartition(_AT)
    if sep:
        path = path.rstrip("`")
    else:
        core, path = message, "$"
    if core.startswith("Object missing required field `"):
        name = core[len("Object missing required field `") : -1]
        path = f"{path}.{name}"
        return RejectReason.MISSING_FIELD, _clip(f"{_field(path)}: {_lower_first(core)}")
    if core.startswith("Expected `") and "`, got `" in core:
        reason = RejectReason.WRONG_TYPE
    elif _RANGE.match(core):
        reason = RejectReason.OUT_OF_RANGE
    elif core == "Number out of range":
        reason = RejectReason.NOT_FINITE
    elif path == "$.ts" and ("datetime" in core or "RFC3339" in core):
        reason = RejectReason.BAD_TIMESTAMP
    else:
        reason = RejectReason.INVALID_VALUE
    detail = f"{_field(path)}: {_lower_first(core)}"
    if reason is RejectReason.OUT_OF_RANGE or reason is RejectReason.BAD_TIMESTAMP:
        value = _value_at(obj, path)
        if value is not _MISSING:
            detail += f", got {_describe(value)}"
    return reason, _clip(detail)


def _value_at(obj: Any, path: str) -> Any:
    for m in _PATH_TOKEN.finditer(path, 1):
        name, index = m.group(1), m.group(2)
        try:
            if name is not None:
                obj = obj[name]
            elif index is not None:
                obj = obj[int(index)]
            else:
                return _MISSING  # a dict value: msgspec does not say which key
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return obj


def _field(path: str) -> str:
    return path[2:] if path.startswith("$.") else ("(message)" if path == "$" else path.lstrip("$"))


def _lower_first(s: str) -> str:
    return s[:1].lower() + s[1:]


def _describe(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"{shown!r} ({len(value)} chars)"
    if isinstance(value, dict):
        return f"an object of {len(value)} keys"
    if isinstance(value, list):
        return f"an array of {len(value)} items"
    return _clip(repr(value), 40)


_KINDS = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}


def _json_kind(value: Any) -> str:
    return "null" if value is None else _KINDS.get(type(value), type(value).__name__)


def _clip(s: str, limit: int = 240) -> str:
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _as_bytes(raw: Any) -> bytes:
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, (bytearray, memoryview)):
        return bytes(raw)
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogatepass")
    return b""


def _origin(origins: Sequence[str] | None, i: int) -> str:
    if origins is None:
        return ""
    try:
        return str(origins[i])
    except Exception:
        return ""


# ---- encoding ----------------------------------------------------------------------------------------


def dead_letter_record(r: Rejected, now: float) -> bytes:
    """The dead-letter JSON for a rejection; the original bytes travel base64 (any bytes fit).

    >>> rec = msgspec.json.decode(dead_letter_record(Rejected(RejectReason.NOT_JSON, "x", b"{"), 5.0))
    >>> rec["schema"], rec["reason"], rec["raw_b64"], rec["raw_text"]
    ('watcher.deadletter/v1', 'not_json', 'ew==', '{')
    """
    try:
        text: str | None = r.raw.decode("utf-8")[:DEAD_LETTER_TEXT_CHARS]
    except UnicodeDecodeError:
        text = None
    record = {
        "schema": SCHEMA_DEADLETTER,
        "reason": r.reason.value,
        "detail": r.detail,
        "origin": r.origin,
        "ts": now,
        "raw_b64": base64.b64encode(r.raw).decode("ascii"),
        "raw_text": text,
    }
    return _ENCODER.encode(record)


def encode_turn(t: Turn) -> bytes:
    """The turn as contract JSON (with ``schema``); decoding it gives back an equal Turn."""
    return _ENCODER.encode(t)


def encode_deployment(d: Deployment) -> bytes:
    """The marker as contract JSON (with ``schema``); decoding it gives back an equal Deployment."""
    return _ENCODER.encode(d)
