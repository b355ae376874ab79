"""``watcher simulate --format otlp``: the simulator's turns as the GenAI spans an instrumented agent emits.

Each turn becomes the trace an agent traced with the OpenTelemetry SDK and the GenAI semantic
conventions exports (docs/otlp.md): an ``invoke_agent`` span (the turn: agent, version, conversation,
``watcher.turn``, ``watcher.segment.*``, token usage, a ``gen_ai.evaluation.result`` event with the
quality score, ``feature_flag.evaluation`` events, status ERROR and ``error.type`` for an error) with
a model call and a tool call as child spans. The resource carries ``service.name``,
``service.version`` and ``deployment.environment.name``.

Spans are batched per resource (one process per agent version) as the SDK's ``BatchSpanProcessor``
batches them: a request when 512 spans wait or the oldest has waited 5 s (event time). Requests are
``ExportTraceServiceRequest`` messages in protobuf (``otlp_proto``, the Collector's Kafka default) or
OTLP/JSON (``otlp_json``, also one per line in a file). The mapping reads every turn back with the
values of the JSON stream (times in whole nanoseconds from the stream's milliseconds), so both
formats make the same decisions (tests/sim/test_simulate_otlp.py).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec

from watcher.contract import OTLP_JSON, OTLP_PROTO, Turn

__all__ = ["SpanBatcher", "encode_request", "otlp_blocks", "turn_spans"]

_TURN = msgspec.json.Decoder(Turn)
MAX_SPANS = 512  # BatchSpanProcessor's max_export_batch_size
MAX_DELAY_S = 5.0  # its schedule_delay_millis
CHILDREN = 2  # spans under each turn span: a model call and a tool call
_SDK = (
    ("telemetry.sdk.language", "python"),
    ("telemetry.sdk.name", "opentelemetry"),
    ("telemetry.sdk.version", "1.45.2"),
)
_MODEL = "gpt-4o"
_CALLS = (("chat", f"chat {_MODEL}"), ("execute_tool", "execute_tool lookup_account"))


# ---- protobuf, by hand: a few fixed message shapes, no generated classes -------------------------------


def _varint_long(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [_varint_long(n) for n in range(1 << 14)]  # tags and most lengths: one lookup


def _varint(n: int) -> bytes:
    return _SMALL[n] if n < 16384 else _varint_long(n)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _any(value: Any) -> bytes:
    if value.__class__ is str:
        return _field(1, value.encode())
    if value.__class__ is bool:
        return b"\x10" + (b"\x01" if value else b"\x00")
    if value.__class__ is int:
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    return b"\x21" + _f64(value)


def _f64(x: float) -> bytes:
    return _F64.pack(x)


_F64 = struct.Struct("<d")
_U64 = struct.Struct("<Q")


def _kv(key: str, value: Any) -> bytes:
    return _field(1, key.encode()) + _field(2, _any(value))


# Attributes whose (key, value) pairs repeat from turn to turn are encoded once (the ids, tokens and
# costs that vary are not kept): the simulator feeds the throughput benchmark, ~1 µs a turn matters.
_VARYING = frozenset({"gen_ai.conversation.id", "watcher.cost_usd", "gen_ai.evaluation.score.value"})
_PROTO_CACHE: dict[tuple[str, Any, type], bytes] = {}
_JSON_CACHE: dict[tuple[str, Any, type], dict[str, Any]] = {}


def _span_attr(key: str, value: Any) -> bytes:
    """A span's attribute (field 9) as encoded bytes."""
    if key in _VARYING:
        return _field(9, _kv(key, value))
    k = (key, value, value.__class__)  # the type too: True == 1, and they encode differently
    found = _PROTO_CACHE.get(k)
    if found is None:
        found = _PROTO_CACHE[k] = _field(9, _kv(key, value))
    return found


def _fixed64(number: int, value: int) -> bytes:
    return _SMALL[number << 3 | 1] + _U64.pack(value)


def _span_proto(span: _Span) -> bytes:
    out = [_field(1, span.trace_id), _field(2, span.span_id)]
    if span.parent:
        out.append(_field(4, span.parent))
    out += [_field(5, span.name.encode()), b"\x30" + _varint(span.kind)]
    out += [_fixed64(7, span.start), _fixed64(8, span.end)]
    out += [_span_attr(k, v) for k, v in span.attrs]
    for name, at, attrs in span.events:
        body = _fixed64(1, at) + _field(2, name.encode()) + b"".join(_field(3, _kv(k, v)) for k, v in attrs)
        out.append(_field(11, body))
    if span.status:
        out.append(_field(15, b"\x18" + _varint(span.status)))
    return b"".join(out)


# ---- OTLP/JSON --------------------------------------------------------------------------------------


def _any_json(value: Any) -> dict[str, Any]:
    if value.__class__ is str:
        return {"stringValue": value}
    if value.__class__ is bool:
        return {"boolValue": value}
    if value.__class__ is int:
        return {"intValue": str(value)}
    return {"doubleValue": value}


def _attrs_json(attrs: Iterable[tuple[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for k, v in attrs:
        if k in _VARYING:
            out.append({"key": k, "value": _any_json(v)})
            continue
        c = (k, v, v.__class__)
        found = _JSON_CACHE.get(c)
        if found is None:
            found = _JSON_CACHE[c] = {"key": k, "value": _any_json(v)}
        out.append(found)
    return out


def _span_json(span: _Span) -> dict[str, Any]:
    doc: dict[str, Any] = {"traceId": span.trace_id.hex(), "spanId": span.span_id.hex()}
    if span.parent:
        doc["parentSpanId"] = span.parent.hex()
    doc.update(
        name=span.name,
        kind=span.kind,
        startTimeUnixNano=str(span.start),
        endTimeUnixNano=str(span.end),
        attributes=_attrs_json(span.attrs),
    )
    if span.events:
        doc["events"] = [
            {"timeUnixNano": str(at), "name": name, "attributes": _attrs_json(attrs)}
            for name, at, attrs in span.events
        ]
    if span.status:
        doc["status"] = {"code": span.status}
    return doc


# ---- turns into spans ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Span:
    trace_id: bytes
    span_id: bytes
    name: str
    kind: int  # INTERNAL 1, CLIENT 3
    start: int  # ns
    end: int
    attrs: list[tuple[str, Any]]
    parent: bytes = b""
    events: list[tuple[str, int, list[tuple[str, Any]]]] = field(default_factory=list)
    status: int = 0  # ERROR 2


def _ns(value: float, steps: int, ns_per_unit: int) -> int:
    """Whole nanoseconds of ``value`` (in units of ``ns_per_unit`` ns) as the decimal the JSON stream
    wrote (``steps`` per unit: ts in ms, latency in tenths of ms), so that the mapping's exact division
    reads back the very same double."""
    n = round(value * steps)
    if n / steps == value:
        return n * (ns_per_unit // steps)
    return round(Decimal(repr(value)) * ns_per_unit)


def turn_spans(t: Turn, children: int = CHILDREN) -> list[_Span]:
    """The spans of one turn: its invoke_agent span and ``children`` model and tool calls."""
    ids = hashlib.blake2b(t.event_id.encode(), digest_size=40).digest()
    trace_id, root = ids[:16], ids[16:24]
    end = _ns(t.ts, 1000, 1_000_000_000)
    latency = _ns(t.latency_ms, 10, 1_000_000) if t.latency_ms is not None else 0
    start = end - latency
    attrs: list[tuple[str, Any]] = [
        ("gen_ai.operation.name", "invoke_agent"),
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.agent.name", t.agent_id),
        ("gen_ai.agent.version", t.version),
        ("gen_ai.conversation.id", t.conversation_id),
        ("watcher.turn", t.turn),
    ]
    attrs += [("watcher.segment." + k, v) for k, v in t.segment.items()]
    if t.arm is not None:
        attrs.append(("watcher.arm", t.arm))
    for key, value in (
        ("gen_ai.usage.input_tokens", t.tokens_in),
        ("gen_ai.usage.output_tokens", t.tokens_out),
        ("watcher.cost_usd", t.cost_usd),
    ):
        if value is not None:
            attrs.append((key, value))
    if t.escalated:
        attrs.append(("watcher.escalated", True))
    if t.compliance_violation:
        attrs.append(("watcher.compliance_violation", True))
    span = _Span(trace_id, root, f"invoke_agent {t.agent_id}", kind=1, start=start, end=end, attrs=attrs)
    if t.error:
        attrs.append(("error.type", "agent_error"))
        span.status = 2
    if t.quality is not None:
        score = [("gen_ai.evaluation.name", "quality"), ("gen_ai.evaluation.score.value", t.quality)]
        span.events.append(("gen_ai.evaluation.result", end, score))
    for key, variant in t.flags.items():
        flag = [("feature_flag.key", key), ("feature_flag.result.variant", variant)]
        span.events.append(("feature_flag.evaluation", start, flag))
    out = [span]
    for c, (op, name) in enumerate(_CALLS[:children]):
        call: list[tuple[str, Any]] = [
            ("gen_ai.operation.name", op),
            ("gen_ai.provider.name", "openai"),
            ("gen_ai.request.model", _MODEL),
        ]
        if op == "chat" and t.tokens_in is not None:
            call.append(("gen_ai.usage.input_tokens", t.tokens_in))
        out.append(
            _Span(
                trace_id=trace_id,
                span_id=ids[24 + 8 * c : 32 + 8 * c],
                parent=root,
                name=name,
                kind=3,
                start=start + (c + 1) * 1000,
                end=max(start + (c + 1) * 1000, end - (c + 1) * 1000),
                attrs=call,
            )
        )
    return out


def encode_request(resource: tuple[str, str, str], spans: list[_Span], encoding: str) -> bytes:
    """One ``ExportTraceServiceRequest``: one resource (agent, environment, version), one scope."""
    agent, environment, version = resource
    res = [
        ("service.name", agent),
        ("service.version", version),
        ("deployment.environment.name", environment),
        *_SDK,
    ]
    if encoding == OTLP_PROTO:
        scope = _field(1, _field(1, b"watcher.sim")) + b"".join(_field(2, _span_proto(s)) for s in spans)
        rs = _field(1, b"".join(_field(1, _kv(k, v)) for k, v in res)) + _field(2, scope)
        return _field(1, rs)
    doc = {
        "resourceSpans": [
            {
                "resource": {"attributes": _attrs_json(res)},
                "scopeSpans": [{"scope": {"name": "watcher.sim"}, "spans": [_span_json(s) for s in spans]}],
            }
        ]
    }
    return msgspec.json.encode(doc)


class SpanBatcher:
    """Turns in, requests out: per resource, a request when ``max_spans`` wait or the oldest waited
    ``max_delay_s`` of event time (``BatchSpanProcessor``'s rule), so request order follows time."""

    def __init__(
        self, encoding: str = OTLP_PROTO, *, max_spans: int = MAX_SPANS, max_delay_s: float = MAX_DELAY_S
    ) -> None:
        if encoding not in (OTLP_PROTO, OTLP_JSON):
            raise ValueError(f"encoding must be {OTLP_PROTO} or {OTLP_JSON}, got {encoding!r}")
        self.encoding = encoding
        self.max_spans = max_spans
        self.max_delay_s = max_delay_s
        self._pending: dict[tuple[str, str, str], tuple[float, list[list[_Span]]]] = {}

    def add(self, turn: Turn) -> list[tuple[str, bytes, int]]:
        """Requests due when this turn is added (in the order their batches started), as
        ``(agent, request, turns)``."""
        out = []
        for key, (first, _) in list(self._pending.items()):
            if turn.ts - first >= self.max_delay_s:
                out.append(self._flush(key))
        key = (turn.agent_id, turn.environment, turn.version)
        first, spans = self._pending.setdefault(key, (turn.ts, []))
        spans.append(turn_spans(turn))
        if len(spans) * (1 + CHILDREN) >= self.max_spans:
            out.append(self._flush(key))
        return out

    def flush(self) -> list[tuple[str, bytes, int]]:
        return [self._flush(key) for key in list(self._pending)]

    def _flush(self, key: tuple[str, str, str]) -> tuple[str, bytes, int]:
        _, turns = self._pending.pop(key)
        spans = [span for turn in turns for span in turn]
        return key[0], encode_request(key, spans, self.encoding), len(turns)


def otlp_blocks(
    stream: Iterable[tuple[list[str], list[str], set[int]]], encoding: str = OTLP_PROTO
) -> Iterator[tuple[list[str], list[bytes], set[int], list[int]]]:
    """The simulator's blocks of JSON lines ``(agent ids, lines, marker positions)`` as trace requests:
    ``(agent ids, messages, marker positions, events)``, ``events`` the turns each request holds (1
    for a marker). A deployment marker passes as it is, after every request due before it."""
    batcher = SpanBatcher(encoding)
    for keys, lines, markers in stream:
        out: list[tuple[str, bytes, int]] = []
        marks: set[int] = set()
        for i, line in enumerate(lines):
            if i in markers:
                out += batcher.flush()
                marks.add(len(out))
                out.append((keys[i], line.encode(), 1))
                continue
            turn = _TURN.decode(line)
            if turn.ts.__class__ is not float:
                turn.ts = turn.ts.timestamp()  # type: ignore[attr-defined]
            out += batcher.add(turn)
        if out:
            yield [k for k, _, _ in out], [v for _, v, _ in out], marks, [n for _, _, n in out]
    tail = batcher.flush()
    if tail:
        yield [k for k, _, _ in tail], [v for _, v, _ in tail], set(), [n for _, _, n in tail]
