"""The optional C decoder (``watcher.contract._otlpscan``) against the Python rules, on any request.

Differential: for generated requests (every attribute type the wire allows, the mapping's keys and
others, repeated keys, empty values, odd strings, evaluation and flag events, missing ids, ends before
starts), the C decoder, the official generated classes and the OTLP/JSON reader must give the same
turns (every value equal, floats bit for bit) and the same rejections (reason, detail, span bytes).
Robustness: truncated and mutated requests never crash it; when the official parser accepts one,
the answers agree again.
"""

from __future__ import annotations

import math
import os
import random
from datetime import datetime
from typing import Any

import msgspec
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.support.otlp import otlp_json, raw_request, sdk_request
from watcher.contract import OTLP_JSON, OTLP_PROTO, OtlpDecoder, SpanMapping

try:
    from watcher.contract import _otlpscan
except ImportError:
    if os.environ.get("CI"):  # CI builds the extension: its absence there is a packaging bug
        raise
    pytest.skip(
        "watcher.contract._otlpscan is not built (no C compiler at install time)", allow_module_level=True
    )

MAPPINGS = [
    SpanMapping(),
    SpanMapping(
        turn_operations=(),
        turn_span_names=("turn",),
        turn_attribute="k.turn",
        segments={"tier": "k.tier", "intent": "k.s"},
        latency_ms=("k.lat",),
        quality=("k.q",),
        quality_evaluation="Relevance",
        quality_range=(1.0, 5.0),
        error=("k.err",),
        cost_usd=("k.cost",),
    ),
]
KEYS = [
    "gen_ai.operation.name", "gen_ai.agent.name", "gen_ai.agent.id", "service.name", "gen_ai.agent.version",
    "service.version", "deployment.environment.name", "deployment.environment", "watcher.arm",
    "gen_ai.conversation.id", "session.id", "watcher.turn", "watcher.segment.intent", "watcher.segment.",
    "watcher.segment.x", "watcher.escalated", "error.type", "watcher.compliance_violation",
    "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "watcher.cost_usd", "k.turn", "k.tier",
    "k.s", "k.lat", "k.q", "k.err", "k.cost", "other", "",
]  # fmt: skip
EVENT_KEYS = [
    "gen_ai.evaluation.name", "gen_ai.evaluation.score.value", "feature_flag.key",
    "feature_flag.result.variant", "feature_flag.result.value", "other",
]  # fmt: skip
STRINGS = st.sampled_from(
    [
        "invoke_agent",
        "turn",
        "",
        "v1",
        "canary",
        "quality",
        "Relevance",
        "on",
        'q"uo\\te',
        "tab\tnl\n",
        "é ✓",
        "0",
    ]
) | st.text(max_size=8)
VALUES = st.one_of(
    STRINGS,
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, 2, 3, -1, 512]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.5, 1.0, 4.0, 1e-300, -0.0]),
    st.binary(max_size=3),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 3), max_size=2),
    st.none(),
)
ATTRS = st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=10)
EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["gen_ai.evaluation.result", "feature_flag.evaluation", "other"]),
        st.lists(st.tuples(st.sampled_from(EVENT_KEYS), VALUES), max_size=4),
    ),
    max_size=3,
)
SPANS = st.lists(
    st.fixed_dictionaries(
        {
            "attrs": ATTRS,
            "events": EVENTS,
            "name": st.sampled_from(["invoke_agent x", "turn", "chat", ""]),
            "span_id": st.sampled_from([b"", b"\x01" * 8, b"\xab\xcd" * 4, b"\x00\x07"]),
            "start_ns": st.integers(0, 2**64 - 1),
            "end_ns": st.sampled_from([0, 1, 1_795_766_400_123_456_789, 2**64 - 1])
            | st.integers(0, 2**64 - 1),
            "status": st.sampled_from([0, 1, 2, 7]),
        }
    ),
    min_size=1,
    max_size=4,
)


def _values(out: Any) -> Any:
    """Turns as plain data (floats as bit patterns), rejections as tuples."""

    def norm(x: Any) -> Any:
        if isinstance(x, float):
            return ("f", x.hex()) if not math.isnan(x) else ("f", "nan")
        if isinstance(x, dict):
            return {k: norm(v) for k, v in x.items()}
        return x

    def turn(raw: bytes) -> Any:
        t = msgspec.json.decode(raw)
        if isinstance(t.get("ts"), str):  # the C decoder writes RFC 3339 (microseconds), Python a number
            t["ts"] = datetime.fromisoformat(t["ts"]).timestamp()
        return norm(t)

    turns = [turn(t) for t in out.turns]
    return out.error, out.spans, turns, [(r, d, bytes(b)) for r, d, b in out.rejected]


def _same(request: ExportTraceServiceRequest, mapping: SpanMapping) -> None:
    raw = request.SerializeToString()
    c = OtlpDecoder(mapping).read(raw, OTLP_PROTO)
    python = OtlpDecoder(mapping, native=False).read(raw, OTLP_PROTO)
    assert c.error is None and python.error is None, (c.error, python.error)
    assert _values(c) == _values(python)
    js = OtlpDecoder(mapping).read(otlp_json(request), OTLP_JSON)
    assert js.error is None
    assert _values(js)[:3] == _values(python)[:3]  # JSON rejections carry the span's JSON, not its protobuf
    assert [(r, d) for r, d, _ in js.rejected] == [(r, d) for r, d, _ in python.rejected]


@pytest.mark.parametrize("mapping", MAPPINGS, ids=["default", "custom"])
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spans=SPANS, resource=ATTRS)
def test_c_decoder_equals_the_python_rules(
    mapping: SpanMapping, spans: list[dict[str, Any]], resource: Any
) -> None:
    _same(raw_request(spans, resource=resource), mapping)


def test_realistic_requests_agree_and_most_spans_are_turns_or_skipped() -> None:
    request = sdk_request([{"score": i / 40, "error": i % 7 == 0, "flags": {"f": "on"}} for i in range(40)])
    _same(request, SpanMapping())
    out = OtlpDecoder().read(request.SerializeToString(), OTLP_PROTO)
    assert (out.spans, len(out.turns), out.rejected) == (120, 40, [])


def test_truncated_and_mutated_requests_never_crash_and_agree_when_valid() -> None:
    rng = random.Random(7)
    base = sdk_request([{"score": 0.5, "flags": {"f": "on"}}, {"error": True}]).SerializeToString()
    decoder, reference = OtlpDecoder(), OtlpDecoder(native=False)
    agreed = 0
    for i in range(3000):
        raw = bytearray(base)
        if i < len(base):
            raw = raw[:i]  # every truncation
        else:
            for _ in range(rng.randint(1, 4)):  # half of them ASCII letters, so many mutants stay valid
                raw[rng.randrange(len(raw))] = (
                    rng.randrange(256) if rng.random() < 0.5 else rng.randrange(97, 123)
                )
        raw = bytes(raw)
        try:
            turns, rejected, spans = _otlpscan.read(decoder._plan, raw)
        except ValueError:
            continue
        assert isinstance(turns, list) and isinstance(rejected, list) and spans >= 0
        try:
            ExportTraceServiceRequest.FromString(raw)
        except DecodeError:
            continue
        got, want = _values(decoder.read(raw, OTLP_PROTO)), _values(reference.read(raw, OTLP_PROTO))
        assert got[:3] == want[:3], raw
        # a mutant's span bytes are its own, the reference's are re-encoded: equal as messages
        assert [(r, d, Span.FromString(b)) for r, d, b in got[3]] == [
            (r, d, Span.FromString(b)) for r, d, b in want[3]
        ]
        agreed += 1
    assert agreed > 100  # the comparison ran on many valid mutants, not only on refusals


def test_sniff_and_bad_arguments() -> None:
    proto = sdk_request([{}]).SerializeToString()
    values = [b'{"event_id":"a"}', proto, None, b"", b' {"resourceSpans":[]}', "text", b"\n{}", b"\n\x00"]
    assert _otlpscan.sniff(values) == [(1, OTLP_PROTO), (4, OTLP_JSON), (7, OTLP_PROTO)]
    plan = OtlpDecoder()._plan
    with pytest.raises(TypeError):
        _otlpscan.read(plan, "text")
    with pytest.raises(TypeError):
        _otlpscan.compile(())
    with pytest.raises(ValueError):
        _otlpscan.read(plan, b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")
