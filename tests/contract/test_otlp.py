"""OTLP traces into turns (``watcher.contract.otlp``): the mapping's rules, both encodings, every reader.

Every rule is checked through the three readers: protobuf by the C decoder, protobuf by the official
generated classes (the reference), OTLP/JSON by msgspec. Requests come from the real OpenTelemetry
SDK (``tests/support/otlp.py``) where it can produce them, else from the generated classes.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec
import pytest

from tests.support.otlp import RESOURCE, T0_NS, otlp_json, raw_request, sdk_request, turn_attributes
from watcher.config import load_settings
from watcher.contract import (
    OTLP_JSON,
    OTLP_PROTO,
    Deduplicator,
    OtlpDecoder,
    RejectReason,
    SpanMapping,
    Turn,
    decode_batch,
    sniff,
)
from watcher.contract import otlp as otlp_module
from watcher.engine import Engine
from watcher.errors import ConfigError

TURN = msgspec.json.Decoder(Turn)
READERS = ["c", "python", "json"]


def read(request: Any, reader: str, mapping: SpanMapping | None = None) -> Any:
    if reader == "c" and otlp_module._native is None:
        if os.environ.get("CI"):
            pytest.fail("the C decoder watcher.contract._otlpscan is not built (CI builds it)")
        pytest.skip("watcher.contract._otlpscan is not built")
    decoder = OtlpDecoder(mapping, native=reader == "c")
    if reader == "json":
        return decoder.read(otlp_json(request), OTLP_JSON)
    return decoder.read(request.SerializeToString(), OTLP_PROTO)


def decoded(raw: bytes) -> Turn:
    """A turn message as the contract reads it (ts in float seconds, as decode_batch makes it)."""
    t = TURN.decode(raw)
    if t.ts.__class__ is not float:
        t.ts = t.ts.timestamp()  # type: ignore[attr-defined]
    return t


def turns(request: Any, reader: str, mapping: SpanMapping | None = None) -> list[Turn]:
    out = read(request, reader, mapping)
    assert out.error is None and out.rejected == [], (out.error, out.rejected)
    return [decoded(t) for t in out.turns]


def rejection(request: Any, reader: str, mapping: SpanMapping | None = None) -> tuple[RejectReason, str]:
    out = read(request, reader, mapping)
    assert out.error is None and out.turns == [] and len(out.rejected) == 1, (
        out.error,
        out.turns,
        out.rejected,
    )
    reason, detail, span = out.rejected[0]
    assert span  # the span's own bytes, for the dead letter
    return reason, detail


@pytest.mark.parametrize("reader", READERS)
def test_an_sdk_instrumented_agent_needs_no_mapping(reader: str) -> None:
    request = sdk_request(
        [
            {"score": 0.83, "latency_ms": 812.5},
            {"error": True, "flags": {"new-prompt": "on"}, "latency_ms": 95.25},
            {"attrs": turn_attributes(2, **{"watcher.escalated": True}), "score": 0.25},
        ]
    )
    out = read(request, reader)
    assert out.spans == 9  # three turns and their model and tool calls
    got = [decoded(t) for t in out.turns]
    spans = request.resource_spans[0].scope_spans[0].spans
    invoke = [s for s in spans if s.name.startswith("invoke_agent")]
    assert [t.event_id for t in got] == [s.span_id.hex() for s in invoke]
    first = got[0]
    assert (first.agent_id, first.environment, first.version, first.arm) == (
        "support-bot",
        "prod",
        "v42",
        None,
    )
    assert (first.conversation_id, first.turn, first.segment) == (
        "conv-0",
        0,
        {"intent": "billing", "language": "de"},
    )
    assert first.ts == (T0_NS + 812_500_000) // 1000 / 10**6  # the span's end, in whole microseconds
    assert (first.latency_ms, first.quality, first.tokens_in, first.tokens_out) == (812.5, 0.83, 512, 128)
    assert (first.error, first.escalated, first.flags) == (False, False, {})
    assert (got[1].error, got[1].flags, got[1].latency_ms, got[1].quality) == (
        True,
        {"new-prompt": "on"},
        95.25,
        None,
    )
    assert (got[2].escalated, got[2].turn, got[2].quality) == (True, 2, 0.25)


@pytest.mark.parametrize("reader", READERS)
def test_resource_attributes_stand_in_for_missing_span_attributes(reader: str) -> None:
    attrs = turn_attributes(0, **{"gen_ai.agent.name": None, "gen_ai.agent.version": None})
    resource = {
        **RESOURCE,
        "service.name": "billing-bot",
        "service.version": "2026.11.3",
        "watcher.segment.tier": "gold",
    }
    (t,) = turns(raw_request([{"attrs": attrs}], resource=resource), reader)
    assert (t.agent_id, t.version, t.environment) == ("billing-bot", "2026.11.3", "prod")
    assert t.segment == {"tier": "gold", "intent": "billing", "language": "de"}
    # the span's own value wins over its resource's, and an empty value does not count
    attrs = turn_attributes(0, **{"gen_ai.agent.version": "", "watcher.segment.tier": "silver"})
    (t,) = turns(raw_request([{"attrs": attrs}], resource=resource), reader)
    assert (t.agent_id, t.version, t.segment["tier"]) == ("support-bot", "2026.11.3", "silver")
    # no environment anywhere: the contract's default
    (t,) = turns(raw_request([{}], resource={"service.name": "x"}), reader)
    assert t.environment == "prod"


@pytest.mark.parametrize("reader", READERS)
def test_spans_that_are_not_turns_are_counted_and_dropped(reader: str) -> None:
    request = sdk_request([{}, {}], children=2)
    out = read(request, reader)
    assert (out.spans, len(out.turns), out.rejected) == (6, 2, [])
    # a model call that carries every turn attribute is still not a turn: selection is by operation
    chat = turn_attributes(0, **{"gen_ai.operation.name": "chat"})
    assert read(raw_request([{"attrs": chat}]), reader).turns == []


@pytest.mark.parametrize("reader", READERS)
def test_which_spans_are_turns_is_configurable(reader: str) -> None:
    plain = {k: v for k, v in turn_attributes(0).items() if k != "gen_ai.operation.name"}
    spans = [
        {"attrs": plain, "name": "handle_turn"},
        {"attrs": {**plain, "app.is_turn": True}, "name": "x", "span_id": b"\x02" * 8},
        {"attrs": {**plain, "app.is_turn": False}, "name": "y", "span_id": b"\x03" * 8},
        {"attrs": turn_attributes(0), "name": "z", "span_id": b"\x04" * 8},
    ]
    by_name = SpanMapping(turn_operations=(), turn_span_names=("handle_turn",))
    assert [t.event_id for t in turns(raw_request(spans), reader, by_name)] == ["0000000000000001"]
    by_flag = SpanMapping(turn_operations=(), turn_attribute="app.is_turn")
    assert [t.event_id for t in turns(raw_request(spans), reader, by_flag)] == ["0202020202020202"]
    default = [t.event_id for t in turns(raw_request(spans), reader)]
    assert default == ["0404040404040404"]


@pytest.mark.parametrize("reader", READERS)
def test_a_turn_span_that_breaks_the_mapping_is_rejected_with_the_attribute_named(reader: str) -> None:
    no_conversation = turn_attributes(0, **{"gen_ai.conversation.id": None})
    reason, detail = rejection(raw_request([{"attrs": no_conversation}]), reader)
    assert reason is RejectReason.MISSING_FIELD
    assert detail == (
        "span 0000000000000001 (invoke_agent support-bot): no conversation_id: none of "
        "gen_ai.conversation.id, session.id is set on the span or its resource"
    )
    reason, detail = rejection(
        raw_request([{"attrs": turn_attributes(0, **{"watcher.turn": "first"})}]), reader
    )
    assert reason is RejectReason.WRONG_TYPE
    assert detail.endswith("watcher.turn (turn): expected an integer, got a string")
    reason, detail = rejection(
        raw_request([{"attrs": turn_attributes(0, **{"gen_ai.agent.version": 4.2})}]), reader
    )
    assert (reason, detail.split(": ", 1)[1]) == (
        RejectReason.WRONG_TYPE,
        "gen_ai.agent.version (version): expected a string, got a double",
    )
    reason, detail = rejection(
        raw_request([{"attrs": turn_attributes(0, **{"watcher.segment.tier": [1, 2]})}]), reader
    )
    assert detail.endswith("watcher.segment.tier (segment): expected a string, got an array")
    reason, detail = rejection(raw_request([{"span_id": b""}]), reader)
    assert (reason, detail) == (
        RejectReason.MISSING_FIELD,
        "span (no id) (invoke_agent support-bot): no span_id",
    )
    reason, detail = rejection(
        raw_request([{"attrs": turn_attributes(0, **{"watcher.escalated": "yes"})}]), reader
    )
    assert detail.endswith("watcher.escalated (escalated): expected a boolean, got a string")
    nan = turn_attributes(0, **{"app.latency": float("nan")})
    reason, detail = rejection(
        raw_request([{"attrs": nan}]), reader, SpanMapping(latency_ms=("app.latency",))
    )
    assert (reason, detail.split(": ", 1)[1]) == (
        RejectReason.NOT_FINITE,
        "app.latency (latency_ms): not a finite number (nan)",
    )


@pytest.mark.parametrize("reader", READERS)
def test_integers_stand_in_for_strings_and_other_values_are_not_guessed(reader: str) -> None:
    attrs = turn_attributes(
        0, **{"gen_ai.agent.version": 42, "watcher.segment.tier": 3, "gen_ai.conversation.id": 7}
    )
    (t,) = turns(raw_request([{"attrs": attrs}]), reader)
    assert (t.version, t.segment["tier"], t.conversation_id) == ("42", "3", "7")


@pytest.mark.parametrize("reader", READERS)
def test_quality_from_an_evaluation_event_an_attribute_or_a_rescaled_score(reader: str) -> None:
    events = [
        (
            "gen_ai.evaluation.result",
            {"gen_ai.evaluation.name": "Relevance", "gen_ai.evaluation.score.value": 4.0},
        ),
        (
            "gen_ai.evaluation.result",
            {"gen_ai.evaluation.name": "Helpfulness", "gen_ai.evaluation.score.value": 2.0},
        ),
    ]
    request = raw_request([{"events": events}])
    scaled = SpanMapping(quality_evaluation="Helpfulness", quality_range=(1.0, 5.0))
    assert [t.quality for t in turns(request, reader, scaled)] == [0.25]
    reason, detail = rejection(request, reader)  # the first evaluation, on the default 0..1 scale
    assert (reason, detail.split(": ", 1)[1]) == (
        RejectReason.OUT_OF_RANGE,
        "gen_ai.evaluation.score.value (quality): 4.0 is outside quality_range [0, 1]",
    )
    assert [t.quality for t in turns(request, reader, SpanMapping(quality_evaluation="Toxicity"))] == [None]
    by_attribute = raw_request([{"attrs": turn_attributes(0, **{"app.csat": 0.5}), "events": events}])
    assert [t.quality for t in turns(by_attribute, reader, SpanMapping(quality=("app.csat",)))] == [0.5]


@pytest.mark.parametrize("reader", READERS)
def test_errors_from_the_span_status_or_error_type(reader: str) -> None:
    spans = [
        {"status": 2},  # ERROR
        {"status": 1, "span_id": b"\x02" * 8},  # OK
        {"attrs": turn_attributes(0, **{"error.type": "timeout"}), "span_id": b"\x03" * 8},
        {"attrs": turn_attributes(0, **{"app.failed": False}), "span_id": b"\x04" * 8},
    ]
    got = turns(raw_request(spans), reader, SpanMapping(error=("error.type", "app.failed")))
    assert [t.error for t in got] == [True, False, True, False]


@pytest.mark.parametrize("reader", READERS)
def test_feature_flag_events_become_flags(reader: str) -> None:
    events = [
        ("feature_flag.evaluation", {"feature_flag.key": "new-prompt", "feature_flag.result.variant": "on"}),
        ("feature_flag.evaluation", {"feature_flag.key": "tts", "feature_flag.result.value": True}),
        ("feature_flag.evaluation", {"feature_flag.key": "retries", "feature_flag.result.value": 3}),
        ("feature_flag.evaluation", {"feature_flag.result.variant": "no key"}),
        ("feature_flag.evaluation", {"feature_flag.key": "ratio", "feature_flag.result.value": 0.5}),
    ]
    (t,) = turns(raw_request([{"events": events}]), reader)
    assert t.flags == {"new-prompt": "on", "tts": "true", "retries": "3"}


@pytest.mark.parametrize("reader", READERS)
def test_explicit_segments_arm_and_duplicate_keys(reader: str) -> None:
    attrs = [
        *turn_attributes(0).items(),
        ("app.intent", "refund"),
        ("watcher.arm", "canary"),
        ("app.intent", "billing"),
    ]
    mapping = SpanMapping(segments={"intent": "app.intent"}, segment_prefix=None)
    (t,) = turns(raw_request([{"attrs": attrs}]), reader, mapping)
    assert (t.segment, t.arm) == ({"intent": "billing"}, "canary")  # the last of a repeated key wins


@pytest.mark.parametrize("reader", ["python", "json", "c"])
def test_a_request_that_cannot_be_read_is_rejected_whole(reader: str) -> None:
    good = sdk_request([{}])
    raw = good.SerializeToString() if reader != "json" else otlp_json(good)
    if reader == "c":
        read(good, "c")  # skips when the C decoder is absent
    decoder = OtlpDecoder(native=reader == "c")
    encoding = OTLP_JSON if reader == "json" else OTLP_PROTO
    out = decoder.read(raw[: len(raw) // 2], encoding)
    assert out.error is not None and out.error[0] is RejectReason.BAD_OTLP and out.turns == []
    small = OtlpDecoder(native=reader == "c", max_message_bytes=100).read(raw, encoding)
    assert small.error is not None and small.error[0] is RejectReason.TOO_LARGE


def test_sniff_tells_otlp_from_json_events() -> None:
    request = sdk_request([{}])
    assert sniff(request.SerializeToString()) == OTLP_PROTO
    assert sniff(otlp_json(request)) == OTLP_JSON
    assert sniff(b' \n{ "resourceSpans" : []}') == OTLP_JSON
    assert sniff(b'\n{"event_id":"a"}') is None  # a JSON turn after a newline stays a JSON event
    assert sniff(b'{"event_id":"a","resourceSpans":1}') is None
    assert sniff(b"not json") is None and sniff(b"") is None and sniff(None) is None


def test_expand_replaces_otlp_messages_in_place_keeping_origins() -> None:
    request = sdk_request(
        [{"score": 0.5}, {}, {"attrs": turn_attributes(2, **{"gen_ai.conversation.id": None})}]
    )
    turn = b'{"event_id":"j1","ts":1,"agent_id":"a","version":"v","conversation_id":"c"}'
    raws = [turn, request.SerializeToString(), b"junk", otlp_json(request), b"\n\x05trunc"]
    for native in (True, False):
        decoder = OtlpDecoder(native=native)
        out = decoder.expand(raws, [f"t/0@{i}" for i in range(5)])
        assert out is not None
        assert out.raws[0] == turn and out.raws[3] == b"junk" and len(out.raws) == 1 + 2 + 1 + 2
        assert list(out.origins) == ["t/0@0", "t/0@1", "t/0@1", "t/0@2", "t/0@3", "t/0@3"]
        assert [(r.reason, r.origin) for r in out.rejected] == [
            (RejectReason.MISSING_FIELD, "t/0@1"),
            (RejectReason.MISSING_FIELD, "t/0@3"),
            (RejectReason.BAD_OTLP, "t/0@4"),
        ]
        assert (out.counts.messages, out.counts.spans, out.counts.turns) == (3, 18, 4)
        assert (out.counts.rejected, out.counts.ignored, out.counts.bad_messages) == (2, 12, 1)
        # the same span twice (the protobuf and the JSON copy): deduplicated by its span id
        batch = decode_batch(out.raws, Deduplicator(), origins=out.origins)
        assert (len(batch.turns), batch.duplicates) == (3, 2)
    assert OtlpDecoder().expand([turn, b"junk"]) is None  # no OTLP: the batch is not copied


def test_the_engine_judges_otlp_and_dead_letters_what_breaks_the_mapping() -> None:
    engine = Engine(load_settings(environ={}))
    bad = turn_attributes(0, **{"gen_ai.conversation.id": None})
    request = sdk_request([{"score": 0.8}, {"attrs": bad}, {"error": True}])
    result = engine.process([request.SerializeToString()], ["otlp_spans/0@7"])
    assert (result.turns, result.otlp.spans, result.otlp.ignored) == (2, 9, 6)
    (dead,) = result.rejected
    assert (dead.reason, dead.origin) == (RejectReason.MISSING_FIELD, "otlp_spans/0@7")
    assert "gen_ai.conversation.id" in dead.detail
    assert engine.state.keys()  # the turns reached the state
    off = Engine(load_settings(environ={}, overrides={"otlp.enabled": False}))
    result = off.process([request.SerializeToString()])
    assert result.turns == 0 and result.rejected[0].reason is RejectReason.NOT_JSON


def test_mapping_settings_fail_at_load_naming_the_field() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(
            environ={}, overrides={"otlp.mapping.turn_operations": [], "otlp.mapping.turn_span_names": []}
        )
    assert err.value.field == "otlp.mapping.turn_operations"
    with pytest.raises(ConfigError) as err:
        load_settings(environ={}, overrides={"otlp.mapping.conversation_id": []})
    assert err.value.field == "otlp.mapping.conversation_id"
    with pytest.raises(ConfigError) as err:
        load_settings(environ={}, overrides={"otlp.mapping.segments": {"intent": 3}})
    assert err.value.field.startswith("otlp.mapping.segments")
    settings = load_settings(environ={"WATCHER_OTLP__MAPPING__QUALITY_RANGE": "1,5"})
    assert settings.otlp.mapping.quality_range == (1.0, 5.0)
