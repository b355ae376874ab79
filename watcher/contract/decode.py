"""Decoding a batch of messages into turns, deployment markers, rejections and duplicates.

Valid events are decoded by msgspec straight into the contract's typed Structs
(``watcher.contract.schema``), so the common case is validated in C in one pass. Only when that fails
does the slow path run a generic decode to route the message (turn, deployment, unknown schema) and
to name the precise :class:`RejectReason`. Malformed input is a value (:class:`Rejected`), never an
exception.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
import numpy as np

from watcher.contract.columnar import scan_turns, turn_columns
from watcher.contract.columns import TurnColumns
from watcher.contract.dedup import Deduplicator
from watcher.contract.schema import SCHEMA_DEPLOYMENT, SCHEMA_TURN, Deployment, Rejected, RejectReason, Turn
from watcher.contract.skim import without_fields

__all__ = ["DecodedBatch", "MarkerCheck", "decode_batch", "decode_deployment"]


@dataclass(slots=True)
class DecodedBatch:
    turns: Sequence[Turn]  # a list, or LazyTurns on the columnar path
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


# ---- decoding ----------------------------------------------------------------------------------------

_TURN_DECODER = msgspec.json.Decoder(Turn)
_DEPLOYMENT_DECODER = msgspec.json.Decoder(Deployment)
_ANY_DECODER = msgspec.json.Decoder()
_TOO_DEEP = "JSON is nested too deeply"
# the top-level fields a turn or a marker can have: anything else may be cut out unread (``skim``)
_KNOWN = frozenset(
    ["schema", *(f.encode_name for t in (Turn, Deployment) for f in msgspec.structs.fields(t))]
)
# Deployment ids live in their own namespace of the window, so a producer reusing an id of a turn can
# never make a marker (rare and critical) disappear as a "duplicate".
_DEPLOYMENT_KEY = "\x00deployment\x00"

_Problem = tuple[RejectReason, str]
# Why a well-formed marker cannot be applied (None: it can): the rules of what it names, e.g. that
# its strategy exists (``watcher.judges.strategies``), which the contract does not know.
MarkerCheck = Callable[[Deployment], _Problem | None]
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
    columnar: bool = True,
    check_marker: MarkerCheck | None = None,
) -> DecodedBatch:
    """Decode and validate a batch of messages; never raises for any input.

    Every input ends up exactly once in ``turns``, ``deployments``, ``rejected`` or ``duplicates``.
    ``origins`` (parallel to ``raws``) label the rejections. With ``columnar`` (and the C scanner
    built), the turns are decoded straight into the batch's columns (``watcher.contract.columnar``) and
    ``turns`` builds ``Turn`` objects only when read; the outcome is the same either way. A marker
    ``check_marker`` finds a problem with is rejected with it (the engine passes its strategies').
    """
    if not isinstance(raws, list):
        raws = list(raws)  # it is read twice below (sizes, then contents) and indexed
    deployments: list[Deployment] = []
    rejected: list[Rejected] = []
    scanned = scan_turns(raws, max_bytes) if columnar and raws else None
    if scanned is not None:  # none of the messages it left is a turn: markers and rejects
        settled = [(i, _decode_slow(raws[i], max_bytes, turn_by_default=True)) for i in scanned.slow]
        if not any(isinstance(ev, Turn) for _, ev in settled):
            duplicates = 0
            for i, ev in settled:
                duplicates += _settle(ev, i, raws, origins, dedup, deployments, rejected, check_marker)  # type: ignore[arg-type]
            lazy, cols, dropped = turn_columns(scanned, raws, dedup)
            return DecodedBatch(lazy, deployments, rejected, duplicates + dropped, cols)
        # a turn only readable without its unknown fields (nested too deeply): the object path
    turns: list[Turn] = []
    duplicates = 0
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
        ev = _decode_slow(raws[i], max_bytes, turn_by_default=True)
        if isinstance(ev, Turn):
            turns.append(ev)
        else:
            duplicates += _settle(ev, i, raws, origins, dedup, deployments, rejected, check_marker)
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


def _settle(
    ev: Deployment | _Problem,
    i: int,
    raws: Sequence[Any],
    origins: Sequence[str] | None,
    dedup: Deduplicator,
    deployments: list[Deployment],
    rejected: list[Rejected],
    check_marker: MarkerCheck | None,
) -> int:
    """A message that is not a turn goes to ``deployments`` (1 returned if a duplicate) or ``rejected``."""
    if isinstance(ev, Deployment) and check_marker is not None:
        ev = check_marker(ev) or ev
    if isinstance(ev, Deployment):
        if dedup.seen(_DEPLOYMENT_KEY + ev.event_id):
            return 1
        deployments.append(ev)
    else:
        rejected.append(Rejected(ev[0], ev[1], _as_bytes(raws[i]), _origin(origins, i)))
    return 0


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


def decode_deployment(
    raw: bytes, *, max_bytes: int = 65_536, check: MarkerCheck | None = None
) -> Deployment | Rejected:
    """Decode a deployment marker received over the HTTP API (no dedup; ``schema`` may be omitted);
    ``check`` as ``decode_batch``'s ``check_marker``.

    >>> decode_deployment(b'{"event_id":"d1","ts":0,"agent_id":"bot","action":"paused"}').action
    'paused'
    >>> decode_deployment(b'{"event_id":"d1","ts":0,"agent_id":"bot","action":"started"}').reason
    <RejectReason.MISSING_FIELD: 'missing_field'>
    """
    ev = _decode_slow(raw, max_bytes, turn_by_default=False)
    if isinstance(ev, Deployment) and check is not None:
        ev = check(ev) or ev
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
        if problem[1] == _TOO_DEEP:  # maybe only in a field the contract ignores: cut those out, once
            reduced = without_fields(_as_bytes(raw), _KNOWN)
            if reduced is not None:
                return _decode_slow_unsafe(reduced, max_bytes, turn_by_default)
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
    ts: float | datetime = ev.ts  # a datetime when the message gave RFC 3339 (schema.Turn)
    if isinstance(ts, datetime):
        ev.ts = ts.timestamp()
    if isinstance(ev, Deployment):
        rule = _deployment_rule_problem(ev)
        if rule is not None:
            return rule
    return ev


def _generic_decode(raw: bytes | bytearray | memoryview | str) -> tuple[Any, _Problem | None]:
    """A schema-less decode, to route the message and to look up the offending value."""
    try:
        return _ANY_DECODER.decode(raw), None
    except RecursionError:
        return None, (RejectReason.NOT_JSON, _TOO_DEEP)
    except UnicodeDecodeError as e:
        return None, (RejectReason.NOT_JSON, _clip(f"not valid UTF-8: {e}"))
    except (msgspec.DecodeError, ValueError) as e:
        first_error = str(e)
    # msgspec refuses NaN, Infinity and numbers that overflow to inf (1e999); the stdlib parser takes
    # them, which lets the rejection name the field and say NOT_FINITE rather than just "malformed".
    try:
        text = _as_bytes(raw).decode("utf-8") if not isinstance(raw, str) else raw
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
    if d.action == "started" and d.strategy is None:
        return RejectReason.MISSING_FIELD, "strategy: required when action is 'started'"
    if d.action == "gated":
        if d.gate is None:
            return RejectReason.MISSING_FIELD, "gate: required when action is 'gated'"
        if d.canary_version is None:
            return RejectReason.MISSING_FIELD, "canary_version: required when action is 'gated'"
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
