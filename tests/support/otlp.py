"""OTLP trace requests for tests, made by the real producers.

``sdk_request(turns)``: spans recorded by the OpenTelemetry Python SDK (a real ``TracerProvider``)
and encoded by the SDK's own OTLP encoder (``encode_spans``, what its OTLP/HTTP exporter sends and
what the Collector forwards): an ``ExportTraceServiceRequest``. Each turn is an ``invoke_agent``
span with GenAI attributes, an evaluation event, and two child spans (a model call and a tool call)
that are not turns.

``raw_request(...)``: a request built field by field with the official generated classes, for the
shapes the SDK would not produce (wrong attribute types, no span id, duplicate keys).

``otlp_json(request)``: the request as OTLP/JSON, as the Collector's ``otlp_json`` encoding writes
it (lowerCamelCase keys, hex ids, enums as integers, 64-bit integers as strings).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from google.protobuf.json_format import MessageToDict
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

T0_NS = 1_795_766_400_000_000_000  # 2026-11-27T08:00:00Z

RESOURCE = {
    "service.name": "support-bot",
    "service.version": "v42",
    "deployment.environment.name": "prod",
}


def turn_attributes(i: int = 0, **extra: Any) -> dict[str, Any]:
    """The attributes of an instrumented agent's invoke_agent span (GenAI conventions)."""
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.provider.name": "openai",
        "gen_ai.agent.name": "support-bot",
        "gen_ai.agent.version": "v42",
        "gen_ai.conversation.id": f"conv-{i // 3}",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 512 + i,
        "gen_ai.usage.output_tokens": 128,
        "watcher.turn": i % 3,
        "watcher.segment.intent": ("billing", "tech_support", "sales")[i % 3],
        "watcher.segment.language": "de",
    }
    attrs.update(extra)
    return {k: v for k, v in attrs.items() if v is not None}


def sdk_request(
    turns: Sequence[Mapping[str, Any]],
    *,
    resource: Mapping[str, Any] | None = None,
    children: int = 2,
) -> ExportTraceServiceRequest:
    """Each turn: ``attrs`` (the invoke_agent span's), optional ``name``, ``start_ns``, ``latency_ms``,
    ``score`` (a gen_ai.evaluation.result event; ``evaluation`` its name), ``flags`` (feature_flag
    events), ``error`` (status ERROR and error.type). ``children`` model/tool spans per turn."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(dict(resource if resource is not None else RESOURCE)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("support_bot.agent", "1.0")
    for i, turn in enumerate(turns):
        start = turn.get("start_ns", T0_NS + i * 1_000_000_000)
        end = start + int(turn.get("latency_ms", 500.0) * 1_000_000)
        attrs = dict(turn.get("attrs", turn_attributes(i)))
        span = tracer.start_span(
            turn.get("name", "invoke_agent support-bot"), kind=SpanKind.INTERNAL, start_time=start
        )
        span.set_attributes(attrs)
        if "score" in turn:
            span.add_event(
                "gen_ai.evaluation.result",
                {
                    "gen_ai.evaluation.name": turn.get("evaluation", "quality"),
                    "gen_ai.evaluation.score.value": turn["score"],
                },
                timestamp=end,
            )
        for key, variant in turn.get("flags", {}).items():
            span.add_event(
                "feature_flag.evaluation", {"feature_flag.key": key, "feature_flag.result.variant": variant}
            )
        if turn.get("error"):
            span.set_attribute("error.type", "timeout")
            span.set_status(Status(StatusCode.ERROR, "tool timed out"))
        ctx = trace.set_span_in_context(span)
        for c, (op, name) in enumerate(
            (("chat", "chat gpt-4o"), ("execute_tool", "execute_tool lookup_invoice"))[:children]
        ):
            child = tracer.start_span(name, context=ctx, kind=SpanKind.CLIENT, start_time=start + 1000 + c)
            child.set_attributes(
                {
                    "gen_ai.operation.name": op,
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o",
                    "gen_ai.usage.input_tokens": 400,
                    "gen_ai.conversation.id": attrs.get("gen_ai.conversation.id", ""),
                }
            )
            child.end(end_time=end - 1000)
        span.end(end_time=end)
    provider.shutdown()
    return encode_spans(exporter.get_finished_spans())


def any_value(value: Any) -> AnyValue:
    """An AnyValue of any type the wire allows (bytes, arrays, key-value lists included)."""
    if value is None:
        return AnyValue()
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    if isinstance(value, dict):
        return AnyValue(
            kvlist_value=KeyValueList(values=[KeyValue(key=k, value=any_value(v)) for k, v in value.items()])
        )
    return AnyValue(string_value=value)


def attributes(attrs: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> list[KeyValue]:
    items = attrs.items() if isinstance(attrs, Mapping) else attrs
    return [KeyValue(key=k, value=any_value(v)) for k, v in items]


def raw_request(
    spans: Sequence[Mapping[str, Any]],
    *,
    resource: Mapping[str, Any] | Sequence[tuple[str, Any]] = RESOURCE,
) -> ExportTraceServiceRequest:
    """One resource, one scope; each span: ``attrs`` (a mapping, or pairs to repeat a key), ``name``,
    ``span_id`` (bytes; b"" for none), ``trace_id``, ``start_ns``, ``end_ns``, ``status`` (a code),
    ``events`` ([(name, attrs)])."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend(attributes(resource))
    ss = rs.scope_spans.add()
    ss.scope.name = "test"
    for i, s in enumerate(spans):
        span = ss.spans.add(
            trace_id=s.get("trace_id", bytes([1 + i % 250]) * 16),
            span_id=s.get("span_id", (i + 1).to_bytes(8, "big")),
            name=s.get("name", "invoke_agent support-bot"),
            start_time_unix_nano=s.get("start_ns", T0_NS + i * 1_000_000_000),
            end_time_unix_nano=s.get("end_ns", T0_NS + i * 1_000_000_000 + 500_000_000),
        )
        span.attributes.extend(attributes(s.get("attrs", turn_attributes(i))))
        for name, attrs in s.get("events", ()):
            span.events.add(name=name, time_unix_nano=span.end_time_unix_nano).attributes.extend(
                attributes(attrs)
            )
        if "status" in s:
            span.status.code = s["status"]
    return request


def _hex_ids(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") else _hex_ids(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_hex_ids(v) for v in node]
    return node


def otlp_json(request: ExportTraceServiceRequest) -> bytes:
    """The request as the Collector's otlp_json encoding writes it."""
    doc = MessageToDict(request, use_integers_for_enums=True, preserving_proto_field_name=False)
    return msgspec.json.encode(_hex_ids(doc))
