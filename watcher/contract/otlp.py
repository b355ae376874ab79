"""OTLP traces in: the trace requests of a batch become ``watcher.turn/v1`` messages.

A telemetry topic may carry OTLP trace requests as the OpenTelemetry Collector's Kafka exporter
writes them (``encoding: otlp_proto`` or ``otlp_json``: one ``ExportTraceServiceRequest`` per
message), next to or instead of JSON turns; a replayed file may hold OTLP/JSON lines (the
Collector's file exporter). Each message is recognised by its first bytes: a JSON object whose key is
``resourceSpans``, or protobuf (which starts with the tag of ``resource_spans``, byte 0x0A, never the
first non-blank byte of a JSON message). Everything else is left as it is, so a batch without OTLP
costs one pass over the first bytes of its messages.

``OtlpDecoder.expand`` replaces each OTLP message by the turn messages of its turn spans, in place
(``watcher.contract.otlp_mapping`` decides which spans are turns and reads their fields); the turns
then go through the contract like any other turn (``decode_batch``), with the OTLP message's origin.
Spans that are not turns are counted and dropped; a turn span that breaks the mapping, and a message
that is not a readable request (``bad_otlp``), are rejections with the reason, dead-lettered with the
span's (or the message's) own bytes.

Protobuf is read by the optional C decoder ``watcher.contract._otlpscan`` (built with the turn
scanner; it applies the mapping while it walks the wire format, and holds to the Python rules of
``otlp_mapping`` in tests/contract/test_otlpscan.py), else by the official generated classes
(``otlp_proto``, the [otlp] extra); OTLP/JSON by msgspec (``otlp_json``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from watcher.contract import otlp_json, otlp_proto
from watcher.contract.otlp_mapping import SpanMapping, map_span, turn_test
from watcher.contract.schema import Rejected, RejectReason

try:  # optional: built from watcher/contract/_otlpscan.c when a compiler is present (pyproject.toml)
    from watcher.contract import _otlpscan as _native
except ImportError:  # pragma: no cover - depends on the install
    _native = None  # type: ignore[assignment]

__all__ = [
    "OTLP_JSON",
    "OTLP_PROTO",
    "Expansion",
    "MessageTurns",
    "NullOtlp",
    "OtlpCounts",
    "OtlpDecoder",
    "sniff",
]

log = logging.getLogger(__name__)

OTLP_PROTO = "otlp_proto"
OTLP_JSON = "otlp_json"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # the OTLP specification's recommended request limit
_BLANK = b" \t\r\n"
_JSON_KEY = b'"resourceSpans"'
_ENCODER = msgspec.json.Encoder()


def sniff(raw: Any) -> str | None:
    """``OTLP_PROTO``, ``OTLP_JSON`` or None (not an OTLP trace request) from a message's first bytes."""
    if raw.__class__ is not bytes or not raw:
        return None
    head = raw[:64].lstrip(_BLANK)
    if head[:1] == b"{":  # a JSON object (after at most 63 blanks), its key within 80 bytes
        brace = 64 - len(head) if len(raw) >= 64 else len(raw) - len(head)
        return OTLP_JSON if raw[brace + 1 : brace + 81].lstrip(_BLANK).startswith(_JSON_KEY) else None
    return OTLP_PROTO if raw[0] == 0x0A else None


@dataclass(slots=True)
class OtlpCounts:
    """What the OTLP messages of a batch held (``watcher_otlp_spans_total``)."""

    messages: int = 0
    spans: int = 0
    turns: int = 0  # turn spans made into turn messages (the contract may still reject some)
    rejected: int = 0  # turn spans that break the mapping
    bad_messages: int = 0

    @property
    def ignored(self) -> int:
        """Spans that are not turns (tool calls, model calls, HTTP...): read no further."""
        return self.spans - self.turns - self.rejected

    def add(self, other: OtlpCounts) -> None:
        self.messages += other.messages
        self.spans += other.spans
        self.turns += other.turns
        self.rejected += other.rejected
        self.bad_messages += other.bad_messages


@dataclass(slots=True)
class MessageTurns:
    """One OTLP request read: its turn messages, its broken turn spans (reason, detail, span bytes)
    and how many spans it held; ``error`` when the request itself cannot be read."""

    turns: list[bytes] = field(default_factory=list)
    rejected: list[tuple[RejectReason, str, bytes]] = field(default_factory=list)
    spans: int = 0
    error: tuple[RejectReason, str] | None = None


@dataclass(slots=True)
class Expansion:
    """A batch with its OTLP messages replaced by their turn messages."""

    raws: list[Any]
    origins: Sequence[str] | None
    rejected: list[Rejected]
    counts: OtlpCounts


class _Origins(Sequence[str]):
    """The origin of each message of an expanded batch: its source message's (formatted on demand)."""

    __slots__ = ("_origins", "_source")

    def __init__(self, origins: Sequence[str], source: list[int]) -> None:
        self._origins, self._source = origins, source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):  # still formatted only on demand
            return _Origins(self._origins, self._source[i])
        return self._origins[self._source[i]]


class OtlpDecoder:
    """Reads OTLP trace requests into turn messages with one ``SpanMapping``.

    ``native=False`` reads protobuf with the Python reference (the official generated classes) even
    when the C decoder is built (tests, and the benchmark's baseline).
    """

    def __init__(
        self,
        mapping: SpanMapping | None = None,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        native: bool = True,
    ) -> None:
        self.mapping = mapping if mapping is not None else SpanMapping()
        self.max_message_bytes = max_message_bytes
        self._is_turn = turn_test(self.mapping)
        self._plan = _native.compile(*plan_args(self.mapping)) if native and _native is not None else None
        self._warned = False

    @property
    def native(self) -> bool:
        """Whether protobuf is read by the C decoder."""
        return self._plan is not None

    # -- one request ----------------------------------------------------------------------------
    def read(self, raw: bytes, encoding: str) -> MessageTurns:
        """The turns of one request in ``encoding`` (``OTLP_PROTO`` or ``OTLP_JSON``). Never raises."""
        if len(raw) > self.max_message_bytes:
            limit = self.max_message_bytes
            detail = f"OTLP request is {len(raw)} bytes, limit is {limit} (otlp.max_message_bytes)"
            return MessageTurns(error=(RejectReason.TOO_LARGE, detail))
        try:
            if encoding == OTLP_PROTO and self._plan is not None:
                turns, rejected, spans = _native.read(self._plan, raw)
                return MessageTurns([*turns], [(RejectReason(r), d, b) for r, d, b in rejected], spans)
            reader = otlp_proto.read_proto if encoding == OTLP_PROTO else otlp_json.read_json
            pairs, spans = reader(raw, self._is_turn)
        except Exception as exc:  # malformed: a value, never an exception out of here
            return MessageTurns(error=(RejectReason.BAD_OTLP, self._why(raw, encoding, exc)))
        out = MessageTurns(spans=spans)
        for resource, span in pairs:
            turn = map_span(self.mapping, span, resource)
            if isinstance(turn, dict):
                out.turns.append(_ENCODER.encode(turn))
            else:
                out.rejected.append((turn[0], turn[1], span.raw()))
        return out

    def _why(self, raw: bytes, encoding: str, exc: Exception) -> str:
        if isinstance(exc, RuntimeError) and not otlp_proto.available():  # neither decoder installed
            if not self._warned:
                log.error("OTLP protobuf received but not readable here: %s", exc)
                self._warned = True
            return str(exc)
        what = (
            "protobuf ExportTraceServiceRequest"
            if encoding == OTLP_PROTO
            else "OTLP/JSON ExportTraceServiceRequest"
        )
        return _clip(f"not a readable {what}: {type(exc).__name__}: {exc}")

    # -- a batch --------------------------------------------------------------------------------
    def expand(self, raws: Sequence[Any], origins: Sequence[str] | None = None) -> Expansion | None:
        """The batch with every OTLP message replaced by its turn messages (in place, so the batch's
        order is kept), or None when it holds no OTLP message (the usual JSON batch: nothing copied)."""
        found = _native.sniff(raws) if self._plan is not None else _sniff_all(raws)
        if not found:
            return None
        counts = OtlpCounts()
        rejected: list[Rejected] = []
        out: list[Any] = []
        source: list[int] = []
        start = 0
        for i, encoding in found:
            out.extend(raws[start:i])
            source.extend(range(start, i))
            start = i + 1
            raw = raws[i]
            origin = _at(origins, i)
            read = self.read(raw, encoding)
            counts.messages += 1
            if read.error is not None:
                counts.bad_messages += 1
                rejected.append(Rejected(read.error[0], read.error[1], raw, origin))
                continue
            counts.spans += read.spans
            counts.turns += len(read.turns)
            counts.rejected += len(read.rejected)
            out.extend(read.turns)
            source.extend([i] * len(read.turns))
            rejected.extend(Rejected(reason, detail, span, origin) for reason, detail, span in read.rejected)
        out.extend(raws[start:])
        source.extend(range(start, len(raws)))
        return Expansion(out, _Origins(origins, source) if origins is not None else None, rejected, counts)


class NullOtlp:
    """OTLP reading switched off (``otlp.enabled: false``): every message is read as a JSON event."""

    def expand(self, raws: Sequence[Any], origins: Sequence[str] | None = None) -> Expansion | None:
        return None


def _sniff_all(raws: Sequence[Any]) -> list[tuple[int, str]]:
    # the usual JSON message starts with '{"' and a key other than resourceSpans: one C-level test
    out = []
    for i, raw in enumerate(raws):
        if raw.__class__ is bytes and raw.startswith(b'{"') and not raw.startswith(b'{"resourceSpans"'):
            continue
        kind = sniff(raw)
        if kind is not None:
            out.append((i, kind))
    return out


def plan_args(m: SpanMapping) -> tuple[Any, ...]:
    """The mapping as the C decoder's ``compile`` takes it (see _otlpscan.c)."""
    return (
        m.turn_operations,
        m.turn_span_names,
        m.turn_attribute,
        m.agent_id,
        m.environment,
        m.version,
        m.arm,
        m.conversation_id,
        m.turn,
        m.segment_prefix,
        tuple(m.segments.items()),
        m.latency_ms,
        m.quality,
        m.quality_evaluation,
        tuple(m.quality_range),
        m.escalated,
        m.error,
        m.compliance_violation,
        m.tokens_in,
        m.tokens_out,
        m.cost_usd,
    )


def _at(origins: Sequence[str] | None, i: int) -> str:
    if origins is None:
        return ""
    try:
        return str(origins[i])
    except Exception:
        return ""


def _clip(s: str, limit: int = 240) -> str:
    return s if len(s) <= limit else s[: limit - 3] + "..."
