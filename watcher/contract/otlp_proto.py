"""OTLP/protobuf trace requests read with the official generated classes (``opentelemetry-proto``).

This is the reference the C decoder (``watcher.contract._otlpscan``) is held to, and the fallback when
it is not built: correct, but ~35 µs per turn against the C decoder's ~1 µs (docs/performance.md), as
every attribute becomes a Python object. It needs ``pip install 'rollout-watcher[otlp]'``.
"""

from __future__ import annotations

from typing import Any

from watcher.contract.otlp_mapping import SpanView

__all__ = ["available", "read_proto"]

_Request: Any
try:  # optional: the [otlp] extra
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest as _Request
except ImportError:  # pragma: no cover - depends on the install
    _Request = None


def available() -> bool:
    return _Request is not None


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return []  # never a turn field: only the kind matters (in a rejection)
    if which == "kvlist_value":
        return {}
    if which == "string_value_strindex":
        return None  # a profiles dictionary index: no string in a trace
    return getattr(v, which)


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def _find(kvs: Any, key: str) -> Any:
    found = None
    for kv in kvs:
        if kv.key == key:
            found = _value(kv.value)  # the last one wins, as in a dict
    return found


def read_proto(raw: bytes, is_turn: Any) -> tuple[list[tuple[dict[str, Any], SpanView]], int]:
    """Like ``otlp_json.read_json``, for the protobuf encoding. Raises ``google.protobuf``'s
    ``DecodeError`` for a malformed request; ``RuntimeError`` without the [otlp] extra."""
    if _Request is None:
        raise RuntimeError(
            "reading OTLP protobuf needs watcher's C decoder or: pip install 'rollout-watcher[otlp]'"
        )
    request = _Request.FromString(raw)
    turns: list[tuple[dict[str, Any], SpanView]] = []
    total = 0
    for rs in request.resource_spans:
        resource: dict[str, Any] | None = None
        for ss in rs.scope_spans:
            total += len(ss.spans)
            for s in ss.spans:
                if not is_turn(s.name, lambda key, kvs=s.attributes: _find(kvs, key)):
                    continue
                if resource is None:
                    resource = _attrs(rs.resource.attributes)
                span = SpanView(
                    trace_id=s.trace_id.hex(),
                    span_id=s.span_id.hex(),
                    name=s.name,
                    start_ns=s.start_time_unix_nano,
                    end_ns=s.end_time_unix_nano,
                    status=s.status.code,
                    attrs=_attrs(s.attributes),
                    events=[(e.name, _attrs(e.attributes)) for e in s.events],
                    raw=s.SerializeToString,
                )
                turns.append((resource, span))
    return turns, total
