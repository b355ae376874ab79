"""OTLP/HTTP in: ``POST /v1/traces``, so an OpenTelemetry SDK or Collector exports straight to watcher.

As the OTLP specification (opentelemetry-proto, docs/specification.md) has it: the body is an
``ExportTraceServiceRequest`` in binary protobuf (``Content-Type: application/x-protobuf``) or
OTLP/JSON (``application/json``), optionally ``Content-Encoding: gzip``; the answer uses the request's
encoding. 200 with an empty ``ExportTraceServiceResponse`` when every turn span was taken; 200 with
``partial_success`` (the number of rejected spans and why) when some broke the mapping or the
contract (the client must not retry those); 400 for a request that cannot be read, 413 over
``otlp.max_message_bytes`` (before or after decompression), 415 for another content type, 503 with
``Retry-After`` when the turns could not be written. Error bodies are a ``google.rpc.Status``.

The turn spans become turn messages (``watcher.contract.OtlpDecoder``), go through the event
contract, and are written to the telemetry topic, keyed by agent, **before** the answer
(``watcher.kafka.TurnWriter``, acks=all): a 200 means they survive a restart, and every instance
reads them in order with the rest. Rejected spans are dead-lettered and counted like any other input.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from watcher.contract import (
    OTLP_JSON,
    OTLP_PROTO,
    Deduplicator,
    OtlpCounts,
    OtlpDecoder,
    Rejected,
    RejectReason,
    decode_batch,
    encode_turn,
)
from watcher.errors import SourceError
from watcher.kafka import TurnWriter

__all__ = ["OTLP_TRACES", "OtlpReceiver"]

OTLP_TRACES = "/v1/traces"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
ORIGIN = "POST /v1/traces"
RETRY_AFTER_S = 5
_MESSAGE_CHARS = 1024  # error_message is for a person: the first reasons, not every one

# the gRPC codes google.rpc.Status carries (the specification lets clients ignore them)
_INVALID_ARGUMENT, _UNAVAILABLE = 3, 14

Observer = Callable[[OtlpCounts, list[Rejected]], Awaitable[None]]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _answer(encoding: str, status: int, body: dict[str, Any], proto: bytes, **headers: str) -> web.Response:
    if encoding == OTLP_PROTO:
        return web.Response(status=status, body=proto, content_type=PROTOBUF, headers=headers or None)
    return web.Response(
        status=status, body=msgspec.json.encode(body), content_type=JSON, headers=headers or None
    )


def _status(encoding: str, http_status: int, code: int, message: str, **headers: str) -> web.Response:
    """A failure: ``google.rpc.Status`` {code, message}."""
    proto = b"\x08" + _varint(code) + _ld(2, message.encode())
    return _answer(encoding, http_status, {"code": code, "message": message}, proto, **headers)


def _success(encoding: str, rejected: list[Rejected]) -> web.Response:
    """``ExportTraceServiceResponse``: empty, or ``partial_success`` {rejected_spans, error_message}."""
    if not rejected:
        return _answer(encoding, 200, {}, b"")
    reasons = "; ".join(f"{r.reason.value}: {r.detail}" for r in rejected[:3])
    message = f"{len(rejected)} spans rejected ({reasons})"
    if len(message) > _MESSAGE_CHARS:
        message = message[: _MESSAGE_CHARS - 3] + "..."
    partial = b"\x08" + _varint(len(rejected)) + _ld(2, message.encode())
    body = {"partialSuccess": {"rejectedSpans": str(len(rejected)), "errorMessage": message}}
    return _answer(encoding, 200, body, _ld(1, partial))


class OtlpReceiver:
    """The ``POST /v1/traces`` handler. ``observe(counts, rejected)`` counts the spans and
    dead-letters the rejected ones; it runs after the turns are written and before the answer."""

    def __init__(self, decoder: OtlpDecoder, writer: TurnWriter, observe: Observer) -> None:
        self.decoder = decoder
        self.writer = writer
        self.observe = observe
        self.max_bytes = decoder.max_message_bytes

    def routes(self) -> list[web.RouteDef]:
        return [web.post(OTLP_TRACES, self.traces)]

    async def traces(self, request: web.Request) -> web.Response:
        ctype = request.content_type
        encoding = OTLP_PROTO if ctype == PROTOBUF else OTLP_JSON
        if ctype not in (PROTOBUF, JSON):
            return _status(
                OTLP_JSON, 415, _INVALID_ARGUMENT, f"Content-Type {ctype!r}: send {PROTOBUF} or {JSON}"
            )
        body = await self._body(request, encoding)
        if isinstance(body, web.Response):
            return body
        read = self.decoder.read(body, encoding)
        if read.error is not None:
            reason, detail = read.error
            http_status = 413 if reason is RejectReason.TOO_LARGE else 400
            return _status(encoding, http_status, _INVALID_ARGUMENT, detail)
        rejected = [Rejected(reason, detail, span, ORIGIN) for reason, detail, span in read.rejected]
        # the turns through the event contract here, so the client hears of the ones it rejects
        batch = decode_batch(read.turns, Deduplicator(), origins=[ORIGIN] * len(read.turns), columnar=False)
        rejected += batch.rejected
        records = [(t.agent_id.encode(), encode_turn(t)) for t in batch.turns]
        try:
            await self.writer.write(records)
            counts = OtlpCounts(1, read.spans, turns=len(read.turns), rejected=len(read.rejected))
            await self.observe(counts, rejected)
        except SourceError as exc:
            return _status(encoding, 503, _UNAVAILABLE, str(exc), **{"Retry-After": str(RETRY_AFTER_S)})
        return _success(encoding, rejected)

    async def _body(self, request: web.Request, encoding: str) -> bytes | web.Response:
        """The body within ``otlp.max_message_bytes`` (413 beyond). aiohttp inflates a gzip (or
        deflate) body as it streams, so the limit holds after decompression too: a small bomb is
        refused as soon as its inflated bytes pass it."""
        limit = self.max_bytes
        message = f"request body over {limit} bytes (otlp.max_message_bytes)"
        if request.content_length is not None and request.content_length > limit:
            return _status(encoding, 413, _INVALID_ARGUMENT, message)
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > limit:
                    return _status(encoding, 413, _INVALID_ARGUMENT, message)
                chunks.append(chunk)
        except RequestPayloadError as exc:  # e.g. a body that is not the gzip it says it is
            return _status(encoding, 400, _INVALID_ARGUMENT, f"the body cannot be decoded: {exc}")
        return b"".join(chunks)
