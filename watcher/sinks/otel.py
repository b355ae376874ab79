"""OpenTelemetry sink: each decision, rollout change and drift signal as a short span with one event.

The span (``watcher.decision``, ``watcher.rollout_change``, ``watcher.judges.drift``) carries the record's
fields as attributes and an event of the same name with the same attributes, so a trace backend can
search decisions like any other span and a log pipeline that turns span events into log records sees
them too. The ``TracerProvider`` is injected (the daemon's, or an in-memory one in tests); exporting is
the provider's job, so a ``send`` here never fails on the network.
"""

from __future__ import annotations

from typing import Any, ClassVar

from watcher.contract import Item, ItemKind
from watcher.sinks.base import (
    NULL_STATE,
    FilteredSink,
    Request,
    Sent,
    SinkContext,
    SinkSettings,
    SinkState,
    SinkType,
)

__all__ = ["OTEL", "OtelSettings", "OtelSink", "attributes"]

_SCALARS = (str, bool, int, float)


def _flat(prefix: str, d: dict[str, Any], out: dict[str, Any]) -> None:
    for k, v in d.items():
        if isinstance(v, _SCALARS):
            out[f"{prefix}{k}"] = v
        elif isinstance(v, dict) and k in ("rollout", "trigger", "marker"):
            _flat(f"{prefix}{k}.", v, out)


def attributes(item: Item) -> dict[str, Any]:
    """OTel attributes of an item: scalar fields flattened under ``watcher.<kind>.``; None dropped."""
    out: dict[str, Any] = {
        "watcher.item.id": item.item_id,
        "watcher.item.kind": item.kind.value,
        "watcher.agent.id": item.agent_id,
        "deployment.environment.name": item.environment,
        "watcher.severity": item.severity.value,
    }
    r = item.record
    _flat(
        f"watcher.{item.kind.value}.", {k: v for k, v in r.items() if k not in ("evidence", "markers")}, out
    )
    if item.kind is ItemKind.DECISION:
        failing = [e["reason"] for e in r.get("evidence", []) if e.get("verdict") == "fail"]
        out["watcher.decision.evidence.rows"] = len(r.get("evidence", []))
        out["watcher.decision.evidence.failing"] = failing[:20]
    if item.kind is ItemKind.MARKER:
        out.pop("watcher.marker.rollout.markers", None)
    return out


class OtelSettings(SinkSettings, tag="otel", frozen=True, kw_only=True):
    """``type: otel``: spans on the daemon's OpenTelemetry tracer provider; nothing of its own."""

    DEFAULT_KINDS: ClassVar[tuple[ItemKind, ...]] = (ItemKind.DECISION, ItemKind.MARKER, ItemKind.DRIFT)


class OtelSink(FilteredSink[OtelSettings]):
    def __init__(self, settings: OtelSettings, *, tracer_provider: Any = None) -> None:
        super().__init__(settings)
        from opentelemetry import trace

        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self._tracer = provider.get_tracer("watcher.sinks")

    def render(self, item: Item, state: SinkState = NULL_STATE) -> list[Request]:
        name = {
            ItemKind.DECISION: "watcher.decision",
            ItemKind.MARKER: "watcher.rollout_change",
            ItemKind.DRIFT: "watcher.drift",
        }[item.kind]
        return [
            Request(
                kind="span",
                url=name,
                body={"name": name, "attributes": attributes(item), "ts_ns": int(item.ts * 1e9)},
            )
        ]

    async def send(self, request: Request) -> Sent:
        body = request.body
        attrs = dict(body["attributes"])
        if request.idempotency_key:
            attrs["watcher.idempotency_key"] = request.idempotency_key
        from opentelemetry.context import Context

        # a root span of its own: a decision is not part of whatever the worker task inherited
        span = self._tracer.start_span(body["name"], context=Context(), attributes=attrs)
        try:
            span.add_event(body["name"], attributes=attrs, timestamp=body["ts_ns"])
        finally:
            span.end()
        return Sent(detail=body["name"])


def _build(settings: OtelSettings, ctx: SinkContext) -> OtelSink:
    return OtelSink(settings, tracer_provider=ctx.tracer_provider)


OTEL = SinkType(OtelSettings, _build)
