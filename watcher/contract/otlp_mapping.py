"""From OpenTelemetry spans to turns: the mapping (``otlp.mapping`` in the settings) and its rules.

A *turn span* is a span the mapping selects (by default an ``invoke_agent`` span of the GenAI
semantic conventions, the per-turn container of an agent); every other span is ignored. Each turn
field comes from a list of attribute keys tried in order, each looked up on the span and then on the
span's resource (so ``service.name`` or ``deployment.environment.name`` count); the first one present
wins. The defaults follow the GenAI conventions, so an instrumented agent needs no mapping at all.

The rules live here once, in Python (``map_span``), and are what the optional C decoder
(``watcher.contract._otlpscan``) implements for OTLP protobuf; tests hold the two to each other.
A span that is a turn but breaks the mapping (no conversation id, an attribute of the wrong type, a
score outside ``quality_range``) is a rejection with a reason naming the attribute, never a crash.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from watcher.contract.schema import RejectReason
from watcher.errors import ConfigError

__all__ = [
    "EVALUATION_EVENT",
    "FLAG_EVENT",
    "SpanMapping",
    "SpanView",
    "TurnTest",
    "map_span",
    "turn_test",
    "value_kind",
]

EVALUATION_EVENT = "gen_ai.evaluation.result"
FLAG_EVENT = "feature_flag.evaluation"
_EVAL_NAME = "gen_ai.evaluation.name"
_EVAL_SCORE = "gen_ai.evaluation.score.value"
_FLAG_KEY = "feature_flag.key"
_FLAG_VARIANT = "feature_flag.result.variant"
_FLAG_VALUE = "feature_flag.result.value"
_OPERATION = "gen_ai.operation.name"
STATUS_ERROR = 2  # Status.StatusCode.STATUS_CODE_ERROR
_PREFIX = "otlp.mapping."

# attribute keys, tried in order; the first present (on the span, then its resource) wins
_Keys = tuple[Annotated[str, Meta(min_length=1)], ...]
_Key = Annotated[str, Meta(min_length=1)]


class SpanMapping(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which spans are turns, and where each turn field comes from (docs/otlp.md has the reference).

    A settings section (``otlp.mapping``) that lives with the rules it parametrises: frozen, unknown
    fields refused, validated by ``watcher.config`` like every other section."""

    # A span is a turn when any of these matches: its gen_ai.operation.name, its name, or a boolean
    # attribute set to true.
    turn_operations: _Keys = ("invoke_agent",)
    turn_span_names: _Keys = ()
    turn_attribute: _Key | None = None
    agent_id: _Keys = ("gen_ai.agent.name", "gen_ai.agent.id", "service.name")
    environment: _Keys = ("deployment.environment.name", "deployment.environment")  # absent: "prod"
    version: _Keys = ("gen_ai.agent.version", "service.version")
    arm: _Keys = ("watcher.arm",)
    conversation_id: _Keys = ("gen_ai.conversation.id", "session.id")
    turn: _Keys = ("watcher.turn",)  # the turn's index in its conversation; absent: 0
    segment_prefix: _Key | None = "watcher.segment."  # watcher.segment.intent=billing -> intent: billing
    segments: dict[_Key, _Key] = msgspec.field(default_factory=dict)  # segment key -> attribute key
    latency_ms: _Keys = ()  # empty: the span's duration
    quality: _Keys = ()  # attributes holding the score; else the gen_ai.evaluation.result event
    quality_evaluation: _Key | None = None  # that event's gen_ai.evaluation.name; None: the first one
    quality_range: tuple[float, float] = (0.0, 1.0)  # the evaluator's scale, mapped onto 0..1
    escalated: _Keys = ("watcher.escalated",)
    error: _Keys = ("error.type",)  # set (or true) marks an error; so does the span status ERROR
    compliance_violation: _Keys = ("watcher.compliance_violation",)
    tokens_in: _Keys = ("gen_ai.usage.input_tokens",)
    tokens_out: _Keys = ("gen_ai.usage.output_tokens",)
    cost_usd: _Keys = ("watcher.cost_usd",)

    def __post_init__(self) -> None:
        if not (self.turn_operations or self.turn_span_names or self.turn_attribute):
            raise ConfigError(
                _PREFIX + "turn_operations",
                "no span could be a turn: give turn_operations, turn_span_names or turn_attribute",
            )
        for name in ("agent_id", "version", "conversation_id"):
            if not getattr(self, name):
                raise ConfigError(_PREFIX + name, "needs at least one attribute key (the field is required)")
        lo, hi = self.quality_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ConfigError(
                _PREFIX + "quality_range", f"must be [low, high] with low < high, got [{lo}, {hi}]"
            )


class SpanView:
    """One span as the Python decoders read it: attribute values as Python values (str, bool, int,
    float, bytes; an empty list or dict for an array or key-value list, whose contents no turn field
    reads; None for an empty AnyValue), ids as lowercase hex, ``raw()`` the span's own bytes (for a
    dead letter)."""

    __slots__ = ("trace_id", "span_id", "name", "start_ns", "end_ns", "status", "attrs", "events", "raw")

    def __init__(
        self,
        trace_id: str,
        span_id: str,
        name: str,
        start_ns: int,
        end_ns: int,
        status: int,
        attrs: dict[str, Any],
        events: list[tuple[str, dict[str, Any]]],
        raw: Callable[[], bytes],
    ) -> None:
        self.trace_id, self.span_id, self.name = trace_id, span_id, name
        self.start_ns, self.end_ns, self.status = start_ns, end_ns, status
        self.attrs, self.events, self.raw = attrs, events, raw


_KINDS = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a double",
    bytes: "bytes",
    list: "an array",
    dict: "a key-value list",
}


def value_kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


class _Broken(Exception):
    """A turn span that breaks the mapping (internal: becomes a rejection)."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        self.reason, self.detail = reason, detail


TurnTest = Callable[[str, Callable[[str], Any]], bool]


def turn_test(mapping: SpanMapping) -> TurnTest:
    """``test(name, find)``: whether a span is a turn, from its name and ``find(key)`` (the value of
    one of its attributes, None when absent), so a decoder reads no more of the other spans."""
    operations = frozenset(mapping.turn_operations)
    names = frozenset(mapping.turn_span_names)
    attribute = mapping.turn_attribute

    def test(name: str, find: Callable[[str], Any]) -> bool:
        if name in names:
            return True
        if operations:
            op = find(_OPERATION)
            if op.__class__ is str and op in operations:
                return True
        return attribute is not None and find(attribute) is True

    return test


def _lookup(keys: _Keys, attrs: dict[str, Any], resource: dict[str, Any]) -> tuple[str, Any] | None:
    """The first key present (on the span, then on its resource), with its value. Empty strings and
    empty values count as absent, so a fallback still applies."""
    for key in keys:
        for where in (attrs, resource):
            value = where.get(key)
            if value is not None and value != "":
                return key, value
    return None


def _text(found: tuple[str, Any], field_name: str) -> str:
    key, value = found
    if value.__class__ is str:
        return value
    if value.__class__ is int:
        return str(value)
    raise _Broken(
        RejectReason.WRONG_TYPE, f"{key} ({field_name}): expected a string, got {value_kind(value)}"
    )


def _number(found: tuple[str, Any], field_name: str) -> float:
    key, value = found
    if value.__class__ is float or value.__class__ is int:
        number = float(value)
        if not math.isfinite(number):
            raise _Broken(RejectReason.NOT_FINITE, f"{key} ({field_name}): not a finite number ({number!r})")
        return number
    raise _Broken(
        RejectReason.WRONG_TYPE, f"{key} ({field_name}): expected a number, got {value_kind(value)}"
    )


def _integer(found: tuple[str, Any], field_name: str) -> int:
    key, value = found
    if value.__class__ is int:
        return value
    raise _Broken(
        RejectReason.WRONG_TYPE, f"{key} ({field_name}): expected an integer, got {value_kind(value)}"
    )


def _flag(found: tuple[str, Any], field_name: str) -> bool:
    key, value = found
    if value.__class__ is bool:
        return value
    raise _Broken(
        RejectReason.WRONG_TYPE, f"{key} ({field_name}): expected a boolean, got {value_kind(value)}"
    )


def _required(keys: _Keys, attrs: dict[str, Any], resource: dict[str, Any], field_name: str) -> str:
    found = _lookup(keys, attrs, resource)
    if found is None:
        raise _Broken(
            RejectReason.MISSING_FIELD,
            f"no {field_name}: none of {', '.join(keys)} is set on the span or its resource",
        )
    return _text(found, field_name)


def map_span(
    mapping: SpanMapping, span: SpanView, resource: dict[str, Any]
) -> dict[str, Any] | tuple[RejectReason, str]:
    """The ``watcher.turn/v1`` fields of a turn span (a dict to encode), or why it breaks the mapping."""
    try:
        return _map(mapping, span, resource)
    except _Broken as b:
        return b.reason, f"span {span.span_id or '(no id)'} ({span.name}): {b.detail}"


def _map(m: SpanMapping, span: SpanView, resource: dict[str, Any]) -> dict[str, Any]:
    attrs = span.attrs
    if not span.span_id:
        raise _Broken(RejectReason.MISSING_FIELD, "no span_id")
    end = span.end_ns or span.start_ns
    turn: dict[str, Any] = {
        "event_id": span.span_id,
        # whole microseconds, as the JSON contract's RFC 3339 times have them (int / int: correctly
        # rounded, the same double as a JSON turn's)
        "ts": end // 1000 / 1_000_000,
        "agent_id": _required(m.agent_id, attrs, resource, "agent_id"),
    }
    env = _lookup(m.environment, attrs, resource)
    if env is not None:
        turn["environment"] = _text(env, "environment")
    turn["version"] = _required(m.version, attrs, resource, "version")
    arm = _lookup(m.arm, attrs, resource)
    if arm is not None:
        turn["arm"] = _text(arm, "arm")
    turn["conversation_id"] = _required(m.conversation_id, attrs, resource, "conversation_id")
    index = _lookup(m.turn, attrs, resource)
    if index is not None:
        turn["turn"] = _integer(index, "turn")
    segment = _segment(m, attrs, resource)
    if segment:
        turn["segment"] = segment
    latency = _lookup(m.latency_ms, attrs, resource)
    turn["latency_ms"] = (
        _number(latency, "latency_ms") if latency is not None else (end - span.start_ns) / 1_000_000
    )
    quality = _quality(m, span, resource)
    if quality is not None:
        turn["quality"] = quality
    escalated = _lookup(m.escalated, attrs, resource)
    if escalated is not None and _flag(escalated, "escalated"):
        turn["escalated"] = True
    error = span.status == STATUS_ERROR
    if not error:
        found = _lookup(m.error, attrs, resource)
        error = found is not None and found[1] is not False
    if error:
        turn["error"] = True
    compliance = _lookup(m.compliance_violation, attrs, resource)
    if compliance is not None and _flag(compliance, "compliance_violation"):
        turn["compliance_violation"] = True
    flags = _flags(span)
    if flags:
        turn["flags"] = flags
    for name in ("tokens_in", "tokens_out"):
        found = _lookup(getattr(m, name), attrs, resource)
        if found is not None:
            turn[name] = _integer(found, name)
    cost = _lookup(m.cost_usd, attrs, resource)
    if cost is not None:
        turn["cost_usd"] = _number(cost, "cost_usd")
    if span.trace_id and len(span.trace_id) <= 64:  # decisions link their examples to the trace
        turn["trace_id"] = span.trace_id
    return turn


def _segment(m: SpanMapping, attrs: dict[str, Any], resource: dict[str, Any]) -> dict[str, str]:
    segment: dict[str, str] = {}
    prefix = m.segment_prefix
    if prefix:
        n = len(prefix)
        for where in (resource, attrs):  # the span's own value wins over its resource's
            for key, value in where.items():
                if key.startswith(prefix) and len(key) > n and value is not None and value != "":
                    segment[key[n:]] = _text((key, value), "segment")
    for name, key in m.segments.items():
        found = _lookup((key,), attrs, resource)
        if found is not None:
            segment[name] = _text(found, "segment")
    return segment


def _quality(m: SpanMapping, span: SpanView, resource: dict[str, Any]) -> float | None:
    found = _lookup(m.quality, span.attrs, resource)
    if found is None:
        for name, attrs in span.events:
            if name != EVALUATION_EVENT:
                continue
            if m.quality_evaluation is not None and attrs.get(_EVAL_NAME) != m.quality_evaluation:
                continue
            score = attrs.get(_EVAL_SCORE)
            if score is None:
                continue
            found = (_EVAL_SCORE, score)
            break
        else:
            return None
    score = _number(found, "quality")
    lo, hi = m.quality_range
    if not lo <= score <= hi:
        raise _Broken(
            RejectReason.OUT_OF_RANGE,
            f"{found[0]} (quality): {score!r} is outside quality_range [{lo:g}, {hi:g}]",
        )
    return score if (lo, hi) == (0.0, 1.0) else (score - lo) / (hi - lo)


def _flags(span: SpanView) -> dict[str, str]:
    flags: dict[str, str] = {}
    for name, attrs in span.events:
        if name != FLAG_EVENT:
            continue
        key = attrs.get(_FLAG_KEY)
        variant = attrs.get(_FLAG_VARIANT)
        if variant is None or variant == "":
            variant = attrs.get(_FLAG_VALUE)
        if key.__class__ is not str or not key:
            continue  # an evaluation without a key says nothing about the turn
        if variant.__class__ is str and variant:
            flags[key] = variant
        elif variant.__class__ is bool:
            flags[key] = "true" if variant else "false"
        elif variant.__class__ is int:
            flags[key] = str(variant)
        # other results (none, doubles, arrays) name no variant: the evaluation is skipped
    return flags
