"""OTLP/JSON trace requests (``ExportTraceServiceRequest``), decoded by msgspec into spans.

OTLP/JSON is protobuf's JSON mapping with the OTLP deviations (opentelemetry-proto,
docs/specification.md): lowerCamelCase keys, trace and span ids as hex, enums as integers, 64-bit
integers as decimal strings or numbers; unknown fields are ignored. The Collector's Kafka exporter
writes it with ``encoding: otlp_json``, its file exporter one request per line.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec
from msgspec import Struct

from watcher.contract.otlp_mapping import SpanView

__all__ = ["read_json"]


class _AnyValue(Struct, gc=False):
    stringValue: str | None = None
    boolValue: bool | None = None
    intValue: int | str | None = None
    doubleValue: float | str | None = None  # "NaN", "Infinity" and "-Infinity" are strings
    bytesValue: str | None = None
    arrayValue: Any = None
    kvlistValue: Any = None


class _KeyValue(Struct, gc=False):
    key: str = ""
    value: _AnyValue | None = None


class _Event(Struct, gc=False):
    name: str = ""
    attributes: list[_KeyValue] = []


class _Status(Struct, gc=False):
    code: int | str = 0  # OTLP/JSON says integers; protobuf's own JSON mapping writes the names


class _Span(Struct, gc=False):
    traceId: str = ""
    spanId: str = ""
    name: str = ""
    startTimeUnixNano: int | str = 0
    endTimeUnixNano: int | str = 0
    attributes: list[_KeyValue] = []
    events: list[_Event] = []
    status: _Status | None = None


class _Resource(Struct, gc=False):
    attributes: list[_KeyValue] = []


class _ScopeSpans(Struct, gc=False):
    spans: list[_Span] = []


class _ResourceSpans(Struct, gc=False):
    resource: _Resource | None = None
    scopeSpans: list[_ScopeSpans] = []


class _Request(Struct, gc=False):
    resourceSpans: list[_ResourceSpans] = []


_DECODER = msgspec.json.Decoder(_Request)
_ENCODER = msgspec.json.Encoder()
_STATUS_NAMES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
_SPECIAL = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def _value(v: _AnyValue | None) -> Any:
    if v is None:
        return None
    if v.stringValue is not None:
        return v.stringValue
    if v.boolValue is not None:
        return v.boolValue
    if v.intValue is not None:
        return int(v.intValue)  # a decimal string for 64-bit integers; ValueError if it is not one
    if v.doubleValue is not None:
        d = v.doubleValue
        return d if d.__class__ is float else _SPECIAL.get(d) if d in _SPECIAL else float(d)
    if v.bytesValue is not None:
        return v.bytesValue.encode()  # base64 text: kept opaque, never a turn field
    # arrays and key-value lists are never turn fields: only their kind matters (in a rejection)
    if v.arrayValue is not None:
        return []
    if v.kvlistValue is not None:
        return {}
    return None


def _status(status: _Status | None) -> int:
    if status is None:
        return 0
    code = status.code
    return code if isinstance(code, int) else _STATUS_NAMES.get(code, -1)


def _attrs(kvs: list[_KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def _find(kvs: list[_KeyValue], key: str) -> Any:
    found = None
    for kv in kvs:
        if kv.key == key:
            found = _value(kv.value)  # the last one wins, as in a dict
    return found


def read_json(raw: bytes, is_turn: Any) -> tuple[list[tuple[dict[str, Any], SpanView]], int]:
    """The request's turn spans (with their resource's attributes) and how many spans it holds.
    ``is_turn(name, find)`` tells a turn span from its name and an attribute finder, so every other
    span costs no more than that test. Raises ``msgspec.DecodeError``/``ValidationError`` or
    ``ValueError`` (an integer that is not one) for a malformed request."""
    request = _DECODER.decode(raw)
    turns: list[tuple[dict[str, Any], SpanView]] = []
    total = 0
    for rs in request.resourceSpans:
        resource: dict[str, Any] | None = None
        for ss in rs.scopeSpans:
            total += len(ss.spans)
            for s in ss.spans:
                if not is_turn(s.name, lambda key, kvs=s.attributes: _find(kvs, key)):
                    continue
                if resource is None:
                    resource = _attrs(rs.resource.attributes) if rs.resource is not None else {}
                span = SpanView(
                    trace_id=s.traceId.lower(),
                    span_id=s.spanId.lower(),
                    name=s.name,
                    start_ns=int(s.startTimeUnixNano),
                    end_ns=int(s.endTimeUnixNano),
                    status=_status(s.status),
                    attrs=_attrs(s.attributes),
                    events=[(e.name, _attrs(e.attributes)) for e in s.events],
                    raw=functools.partial(_ENCODER.encode, s),  # only a rejection reads it
                )
                turns.append((resource, span))
    return turns, total
