"""Unit tests of the event contract (EVENT_SCHEMA.md): every rule, with the exact reject reason."""

from __future__ import annotations

import base64
import json
import random
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from watcher import contract as events
from watcher.contract.decode import DecodedBatch, decode_batch, decode_deployment
from watcher.contract.dedup import Deduplicator
from watcher.contract.schema import (
    SCHEMA_DEPLOYMENT,
    SCHEMA_TURN,
    Deployment,
    FlagSpec,
    Rejected,
    RejectReason,
    Turn,
    dead_letter_record,
    encode_deployment,
    encode_turn,
)
from watcher.errors import CheckpointError

R = RejectReason
EXAMPLE_TURN = (
    b'{"schema":"watcher.turn/v1","event_id":"c81f-3","ts":"2026-11-27T08:00:18.839Z",'
    b'"agent_id":"support-bot","environment":"prod","version":"v42","arm":"canary",'
    b'"conversation_id":"c81f","turn":3,"segment":{"intent":"billing","language":"de","channel":"voice"},'
    b'"latency_ms":812.5,"quality":0.83,"escalated":false,"error":false,"compliance_violation":false,'
    b'"tokens_in":512,"tokens_out":128}'
)
EXAMPLE_DEPLOYMENT = (
    b'{"schema":"watcher.deployment/v1","event_id":"dep-77","ts":"2026-11-27T08:00:00Z",'
    b'"agent_id":"support-bot","environment":"prod","action":"started","strategy":"canary",'
    b'"baseline_version":"v41","canary_version":"v42","canary_weight":0.1,"actor":"argo-rollouts"}'
)
TS_0800 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC).timestamp()


def turn_dict(**overrides: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "event_id": "e1",
        "ts": 1_795_766_400.0,
        "agent_id": "bot",
        "version": "v1",
        "conversation_id": "c1",
    }
    d.update(overrides)
    return d


def dep_dict(**overrides: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "schema": SCHEMA_DEPLOYMENT,
        "event_id": "d1",
        "ts": 1_795_766_400,
        "agent_id": "bot",
        "action": "paused",
    }
    d.update(overrides)
    return d


def without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


def enc(d: Any) -> bytes:
    return json.dumps(d).encode()


def one(raw: Any, **kw: Any) -> Turn | Deployment | Rejected:
    """Decode a single message and return what became of it."""
    b = decode_batch([raw], Deduplicator(), **kw)
    outcomes = [*b.turns, *b.deployments, *b.rejected]
    assert len(outcomes) == 1 and b.duplicates == 0
    return outcomes[0]


def rejected(raw: Any, **kw: Any) -> Rejected:
    r = one(raw, **kw)
    assert isinstance(r, Rejected), f"expected a rejection, got {r!r}"
    assert isinstance(r.reason, RejectReason)
    return r


def turn(raw: bytes) -> Turn:
    t = one(raw)
    assert isinstance(t, Turn), f"expected a turn, got {t!r}"
    return t


def deployment(raw: bytes) -> Deployment:
    d = one(raw)
    assert isinstance(d, Deployment), f"expected a deployment, got {d!r}"
    return d


# ---- vocabulary and shapes ------------------------------------------------------------------------------


def test_reject_reason_is_the_closed_label_vocabulary() -> None:
    assert {r.value for r in RejectReason} == {
        "not_json", "not_object", "too_large", "unknown_schema", "missing_field", "wrong_type",
        "out_of_range", "bad_timestamp", "not_finite", "invalid_value", "too_late", "too_early", "bad_otlp",
    }  # fmt: skip
    assert RejectReason.NOT_FINITE == "not_finite"  # str Enum: usable directly as a label value


def test_struct_attributes_are_the_contract_field_names() -> None:
    assert Turn.__struct_fields__ == (
        "event_id", "ts", "agent_id", "environment", "version", "arm", "conversation_id", "turn",
        "segment", "latency_ms", "quality", "escalated", "error", "compliance_violation", "flags",
        "tokens_in", "tokens_out", "cost_usd", "trace_id",
    )  # fmt: skip
    assert Deployment.__struct_fields__ == (
        "event_id", "ts", "agent_id", "environment", "action", "strategy", "baseline_version",
        "canary_version", "canary_weight", "flag", "gate", "actor", "notes",
    )  # fmt: skip
    assert FlagSpec.__struct_fields__ == ("name", "control", "treatment")


def test_all_is_exactly_the_public_interface() -> None:
    assert sorted(events.__all__) == sorted(
        [
            "SCHEMA_TURN", "SCHEMA_DEPLOYMENT", "SCHEMA_DEADLETTER", "MarkerAction", "Arm", "StrategyName",
            "DecodedBatch", "Deduplicator", "Deployment", "FlagSpec", "GateOutcome", "MarkerCheck",
            "Rejected", "RejectReason", "Turn", "TurnColumns", "dead_letter_record", "decode_batch",
            "decode_deployment", "encode_deployment", "encode_turn", "renumber",
            # what comes out: verdicts, decision records and the items sinks receive
            "Action", "ArmEstimate", "Cause", "Decision", "Example", "MetricEvidence", "RolloutEvidence",
            "RolloutRef", "SampleRatioEvidence", "Verdict", "decision_id", "rfc3339", "Item", "ItemKind",
            "Severity",
            # OTLP traces in: the span-to-turn mapping and the reader of trace requests
            "SpanMapping", "OtlpDecoder", "NullOtlp", "OtlpCounts", "Expansion", "MessageTurns", "OTLP_JSON",
            "OTLP_PROTO", "sniff",
            # the metric catalogue
            "CATALOGUE", "MEAN_METRICS", "RATE_METRICS", "SERIES_FAMILIES", "Direction", "Family", "Kind",
            "MetricDef", "ToleranceMode", "metric_def", "metric_names",
        ]
    )  # fmt: skip
    assert all(hasattr(events, n) for n in events.__all__)


# ---- turns: happy path, defaults, ts --------------------------------------------------------------------


def test_contract_example_turn_decodes_with_every_field() -> None:
    t = turn(EXAMPLE_TURN)
    assert t == Turn(
        event_id="c81f-3", ts=TS_0800 + 18.839, agent_id="support-bot", environment="prod", version="v42",
        arm="canary", conversation_id="c81f", turn=3,
        segment={"intent": "billing", "language": "de", "channel": "voice"}, latency_ms=812.5,
        quality=0.83, escalated=False, error=False, compliance_violation=False, flags={}, tokens_in=512,
        tokens_out=128, cost_usd=None,
    )  # fmt: skip
    assert type(t.ts) is float


def test_defaults_of_optional_turn_fields() -> None:
    t = turn(enc(turn_dict()))
    assert (t.environment, t.arm, t.turn, t.segment, t.flags) == ("prod", None, 0, {}, {})
    assert (t.escalated, t.error, t.compliance_violation) == (False, False, False)
    assert (t.latency_ms, t.quality, t.tokens_in, t.tokens_out, t.cost_usd) == (None,) * 5


def test_defaults_are_not_shared_between_turns() -> None:
    a, b = turn(enc(turn_dict())), turn(enc(turn_dict()))
    a.segment["x"] = "y"
    assert b.segment == {}


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2026-11-27T08:00:00Z", TS_0800),
        ("2026-11-27T08:00:00.040Z", TS_0800 + 0.04),
        ("2026-11-27T09:30:00+01:30", TS_0800),
        ("2026-11-27T03:00:00-05:00", TS_0800),
        (1_795_766_400, TS_0800),
        (1_795_766_400.25, TS_0800 + 0.25),
        (0, 0.0),
    ],
)
def test_ts_is_float_unix_seconds_from_rfc3339_or_number(ts: Any, expected: float) -> None:
    t = turn(enc(turn_dict(ts=ts)))
    assert type(t.ts) is float
    assert t.ts == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "ts",
    ["2026-11-27T08:00:00", "2026-11-27T08:00:00.040", "garbage", "", "2026-13-01T00:00:00Z", "1795766400",
     "2026-11-27", "08:00:00Z"],
)  # fmt: skip
def test_ts_string_without_zone_or_not_rfc3339_is_bad_timestamp(ts: str) -> None:
    r = rejected(enc(turn_dict(ts=ts)))
    assert r.reason is R.BAD_TIMESTAMP
    assert r.detail.startswith("ts: ")


def test_ts_of_other_types_and_ranges() -> None:
    assert rejected(enc(turn_dict(ts=True))).reason is R.WRONG_TYPE
    assert rejected(enc(turn_dict(ts=None))).reason is R.WRONG_TYPE
    assert rejected(enc(turn_dict(ts={"s": 1}))).reason is R.WRONG_TYPE
    assert rejected(enc(turn_dict(ts=1e17))).reason is R.OUT_OF_RANGE  # beyond year 9999
    assert rejected(enc(turn_dict(ts=-1e12))).reason is R.OUT_OF_RANGE
    assert rejected(enc(turn_dict()).replace(b"1795766400.0", b"1e999")).reason is R.NOT_FINITE


# ---- turns: each field's type and range -----------------------------------------------------------------


@pytest.mark.parametrize("field", ["event_id", "ts", "agent_id", "version", "conversation_id"])
def test_required_turn_fields(field: str) -> None:
    r = rejected(enc(without(turn_dict(), field)))
    assert r.reason is R.MISSING_FIELD
    assert r.detail.startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("field", "limit"), [("event_id", 128), ("agent_id", 128), ("version", 128), ("conversation_id", 256)]
)
def test_string_lengths(field: str, limit: int) -> None:
    assert getattr(turn(enc(turn_dict(**{field: "x" * limit}))), field) == "x" * limit
    assert getattr(turn(enc(turn_dict(**{field: "é"}))), field) == "é"
    for bad in ("", "x" * (limit + 1)):
        r = rejected(enc(turn_dict(**{field: bad})))
        assert r.reason is R.OUT_OF_RANGE
        assert r.detail.startswith(f"{field}: ") and f"({len(bad)} chars)" in r.detail


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", 5), ("agent_id", None), ("environment", 1), ("environment", None), ("version", []),
        ("arm", 1), ("conversation_id", {}), ("turn", "1"), ("turn", True), ("turn", None), ("turn", 1.0),
        ("turn", 1.5), ("segment", []), ("segment", "a=b"), ("segment", None), ("latency_ms", "5"),
        ("latency_ms", True), ("quality", "0.5"), ("quality", False), ("escalated", "false"),
        ("escalated", 0), ("escalated", None), ("error", 1), ("error", "true"), ("compliance_violation", 1),
        ("flags", []), ("flags", {"f": 1}), ("flags", {"f": None}), ("tokens_in", "1"), ("tokens_in", 3.0),
        ("tokens_out", True), ("cost_usd", "0.1"), ("cost_usd", True),
    ],
)  # fmt: skip
def test_wrong_types(field: str, value: Any) -> None:
    r = rejected(enc(turn_dict(**{field: value})))
    assert r.reason is R.WRONG_TYPE, r.detail
    assert r.detail.startswith(field)


@pytest.mark.parametrize("arm", ["baseline", "canary", "shadow", "live", None])
def test_valid_arms(arm: str | None) -> None:
    assert turn(enc(turn_dict(arm=arm))).arm == arm


@pytest.mark.parametrize("arm", ["Canary", "control", "", "treatment"])
def test_invalid_arm_is_invalid_value(arm: str) -> None:
    r = rejected(enc(turn_dict(arm=arm)))
    assert r.reason is R.INVALID_VALUE
    assert r.detail.startswith("arm: ")


@pytest.mark.parametrize(
    ("field", "good", "bad"),
    [
        ("turn", [0, 7, 2**63 - 1], [-1, 2**63, 10**30]),
        ("tokens_in", [0, 512, None], [-1, 2**63]),
        ("tokens_out", [0, 128, None], [-5]),
        ("latency_ms", [0, 0.0, 812.5, 1e300, None], [-0.1, -1]),
        ("quality", [0, 0.0, 0.5, 1, 1.0, None], [-0.01, 1.0000001, 1.7, 2]),
        ("cost_usd", [0, 0.0012, None], [-0.01]),
    ],
)
def test_numeric_ranges(field: str, good: list[Any], bad: list[Any]) -> None:
    for v in good:
        got = getattr(turn(enc(turn_dict(**{field: v}))), field)
        assert got == v
        assert v is None or type(got) is (int if field.startswith(("turn", "tokens")) else float)
    for v in bad:
        r = rejected(enc(turn_dict(**{field: v})))
        assert r.reason is R.OUT_OF_RANGE, (v, r.detail)
        assert r.detail.startswith(f"{field}: ") and r.detail.endswith(f"got {v!r}")


def test_out_of_range_detail_names_field_bound_and_value() -> None:
    assert rejected(enc(turn_dict(quality=1.7))).detail == "quality: expected `float` <= 1.0, got 1.7"


@pytest.mark.parametrize("field", ["latency_ms", "quality", "cost_usd"])
@pytest.mark.parametrize("literal", [b"1e999", b"-1e999", b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_numbers(field: str, literal: bytes) -> None:
    raw = enc(turn_dict(**{field: 12345})).replace(b"12345", literal)
    r = rejected(raw)
    assert r.reason is R.NOT_FINITE
    assert r.detail.startswith(f"{field}: not a finite number")
    assert r.raw == raw


def test_segment_rules() -> None:
    sixteen = {f"k{i}": "v" for i in range(16)}
    assert turn(enc(turn_dict(segment=sixteen))).segment == sixteen
    assert turn(enc(turn_dict(segment={"intent": "x" * 64}))).segment == {"intent": "x" * 64}
    assert turn(enc(turn_dict(segment={"k" * 200: "v"}))).segment == {"k" * 200: "v"}  # keys unbounded
    r = rejected(enc(turn_dict(segment={**sixteen, "k16": "v"})))
    assert r.reason is R.OUT_OF_RANGE
    assert r.detail == "segment: expected `object` of length <= 16, got an object of 17 keys"
    r = rejected(enc(turn_dict(segment={"intent": "x" * 65})))
    assert r.reason is R.OUT_OF_RANGE and r.detail.startswith("segment")
    assert rejected(enc(turn_dict(segment={"a": 1}))).reason is R.WRONG_TYPE
    assert rejected(enc(turn_dict(segment={"a": {"b": "c"}}))).reason is R.WRONG_TYPE
    assert rejected(enc(turn_dict(segment={"a": None}))).reason is R.WRONG_TYPE


def test_flags_are_string_to_string() -> None:
    flags = {f"f{i}": "on" for i in range(40)}
    assert turn(enc(turn_dict(flags=flags))).flags == flags


def test_booleans_are_real_booleans() -> None:
    t = turn(enc(turn_dict(escalated=True, error=True, compliance_violation=True)))
    assert (t.escalated, t.error, t.compliance_violation) == (True, True, True)


def test_unknown_fields_are_ignored() -> None:
    raw = enc(turn_dict(extra={"deep": [1, {"x": None}]}, span_id="abc", quality_v2=5))
    assert turn(raw) == turn(enc(turn_dict()))


def test_trace_id_is_optional_and_bounded() -> None:
    assert turn(enc(turn_dict(trace_id="4bf92f3577b34da6a3ce929d0e0e4736"))).trace_id == (
        "4bf92f3577b34da6a3ce929d0e0e4736"
    )
    assert turn(enc(turn_dict(trace_id=None))).trace_id is None
    for bad in ("", "x" * 65, 7):
        assert isinstance(one(enc(turn_dict(trace_id=bad))), Rejected), bad


# ---- framing: not JSON, not an object, too large --------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"", b" ", b"{", b"not json", b"{'a': 1}", enc(turn_dict()) + b" x", b"\xef\xbb\xbf" + enc(turn_dict()),
     b"\xff\xfe\x00", enc(turn_dict(event_id="AAAA")).replace(b"AAAA", b"\xff\xfe"),
     b'{"a":' + b"[" * 100_000 + b"]" * 100_000, b"[" * 100_000, b'{"event_id":"\\ud800"}'],
)  # fmt: skip
def test_not_json(raw: bytes) -> None:
    r = rejected(raw, max_bytes=1_000_000)
    assert r.reason is R.NOT_JSON
    assert r.raw == raw


def test_an_object_whose_only_field_nests_too_deep_is_read_without_it() -> None:
    # the unknown field is skipped (issue #15, 9): what is left misses the contract's fields
    raw = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = rejected(raw, max_bytes=1_000_000)
    assert r.reason is R.MISSING_FIELD and r.raw == raw


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"turn"', b"null", b"true", b"[" + enc(turn_dict()) + b"]"])
def test_not_object(raw: bytes) -> None:
    assert rejected(raw).reason is R.NOT_OBJECT


def test_too_large_is_rejected_without_parsing() -> None:
    base = enc(turn_dict(notes=""))
    raw = base.replace(b'"notes": ""', b'"notes": "' + b"x" * (200 - len(base)) + b'"')
    assert len(raw) == 200
    assert isinstance(one(raw, max_bytes=200), Turn)
    r = rejected(raw + b" ", max_bytes=200)
    assert r.reason is R.TOO_LARGE and "201" in r.detail
    # not parsed: garbage over the limit is TOO_LARGE, not NOT_JSON
    assert rejected(b"\xff" * 70_000).reason is R.TOO_LARGE


def test_inputs_that_are_not_bytes_never_raise() -> None:
    raws: list[Any] = [None, 5, bytearray(enc(turn_dict())), memoryview(enc(turn_dict(event_id="e2")))]
    b = decode_batch(raws, Deduplicator())
    assert [t.event_id for t in b.turns] == ["e1", "e2"]
    assert [r.reason for r in b.rejected] == [R.NOT_JSON, R.NOT_JSON]
    assert [r.raw for r in b.rejected] == [b"", b""]


# ---- schema routing -------------------------------------------------------------------------------------


def test_schema_routing() -> None:
    assert isinstance(one(enc(turn_dict())), Turn)
    assert isinstance(one(enc(turn_dict(schema=SCHEMA_TURN))), Turn)
    assert isinstance(one(enc(dep_dict())), Deployment)
    for schema in ("watcher.turn/v2", "watcher.deadletter/v1", "", "WATCHER.TURN/V1"):
        r = rejected(enc(turn_dict(schema=schema)))
        assert r.reason is R.UNKNOWN_SCHEMA and r.detail.startswith("schema: ")
    assert rejected(enc(turn_dict(schema=1))).reason is R.WRONG_TYPE
    assert rejected(enc(turn_dict(schema=None))).reason is R.WRONG_TYPE


def test_schema_is_checked_wherever_it_appears_in_the_object() -> None:
    d = turn_dict()
    d["schema"] = "watcher.turn/v9"  # after every other field
    assert rejected(enc(d)).reason is R.UNKNOWN_SCHEMA
    d = dep_dict()
    d = {**without(d, "schema"), "schema": SCHEMA_DEPLOYMENT}
    assert isinstance(one(enc(d)), Deployment)


def test_deployment_without_schema_is_read_as_a_turn() -> None:
    r = rejected(enc(without(dep_dict(), "schema")))
    assert r.reason is R.MISSING_FIELD


# ---- deployments ----------------------------------------------------------------------------------------


def test_contract_example_deployment() -> None:
    d = deployment(EXAMPLE_DEPLOYMENT)
    assert d == Deployment(
        event_id="dep-77", ts=TS_0800, agent_id="support-bot", environment="prod", action="started",
        strategy="canary", baseline_version="v41", canary_version="v42", canary_weight=0.1, flag=None,
        actor="argo-rollouts", notes=None,
    )  # fmt: skip
    assert type(d.ts) is float


@pytest.mark.parametrize(
    "action", ["started", "weight_changed", "paused", "resumed", "promoted", "rolled_back", "aborted"]
)
def test_deployment_actions(action: str) -> None:
    d = deployment(enc(dep_dict(action=action, strategy="canary")))
    assert d.action == action and d.environment == "prod"


def test_deployment_rules() -> None:
    assert rejected(enc(dep_dict(action="restarted"))).reason is R.INVALID_VALUE
    assert rejected(enc(without(dep_dict(), "action"))).reason is R.MISSING_FIELD
    assert rejected(enc(without(dep_dict(), "ts"))).reason is R.MISSING_FIELD
    assert rejected(enc(dep_dict(ts="2026-11-27T08:00:00"))).reason is R.BAD_TIMESTAMP
    # a strategy is a name (which names exist is the strategy registry's: tests/judges/test_strategies.py)
    r = rejected(enc(dep_dict(strategy="Linear!")))
    assert r.reason is R.INVALID_VALUE and r.detail.startswith("strategy: ")
    assert deployment(enc(dep_dict(action="started", strategy="linear"))).strategy == "linear"
    r = rejected(enc(dep_dict(action="started")))
    assert (r.reason, r.detail) == (R.MISSING_FIELD, "strategy: required when action is 'started'")
    for strategy in ("canary", "shadow", "blue_green"):
        assert deployment(enc(dep_dict(action="started", strategy=strategy))).strategy == strategy
    flag = {"name": "new-prompt", "control": "off", "treatment": "on"}
    d = deployment(enc(dep_dict(action="started", strategy="flag", flag=flag)))
    assert d.flag == FlagSpec(name="new-prompt", control="off", treatment="on")
    assert deployment(enc(dep_dict(action="paused", strategy="flag"))).flag is None
    r = rejected(enc(dep_dict(flag=without(flag, "name"))))
    assert (r.reason, r.detail.split(":")[0]) == (R.MISSING_FIELD, "flag.name")
    assert rejected(enc(dep_dict(flag="new-prompt"))).reason is R.WRONG_TYPE
    assert rejected(enc(dep_dict(flag={**flag, "control": 0}))).reason is R.WRONG_TYPE
    assert rejected(enc(dep_dict(actor=5))).reason is R.WRONG_TYPE
    assert rejected(enc(dep_dict(canary_version=""))).reason is R.OUT_OF_RANGE


def test_canary_weight_range() -> None:
    for w in (0, 0.1, 1, None):
        assert deployment(enc(dep_dict(canary_weight=w))).canary_weight == w
    for w in (-0.1, 1.01, 100):
        assert rejected(enc(dep_dict(canary_weight=w))).reason is R.OUT_OF_RANGE
    assert rejected(enc(dep_dict(canary_weight="0.5"))).reason is R.WRONG_TYPE
    assert rejected(enc(dep_dict(canary_weight=0.777)).replace(b"0.777", b"1e999")).reason is R.NOT_FINITE


def test_decode_deployment_for_the_http_api() -> None:
    d = decode_deployment(EXAMPLE_DEPLOYMENT)
    assert isinstance(d, Deployment) and d.ts == TS_0800
    # the endpoint implies the schema
    assert isinstance(decode_deployment(enc(without(dep_dict(), "schema"))), Deployment)
    for raw, reason in [
        (enc(turn_dict()), R.MISSING_FIELD),  # no schema: read as a deployment, which needs an action
        (enc(turn_dict(schema=SCHEMA_TURN)), R.UNKNOWN_SCHEMA),
        (enc(dep_dict(schema="watcher.deployment/v2")), R.UNKNOWN_SCHEMA),
        (enc(dep_dict(action="started")), R.MISSING_FIELD),
        (b"{", R.NOT_JSON),
        (b"[]", R.NOT_OBJECT),
        (b" " * 70_000, R.TOO_LARGE),
    ]:
        r = decode_deployment(raw)
        assert isinstance(r, Rejected) and r.reason is reason and r.raw == raw


# ---- batches, origins, deduplication --------------------------------------------------------------------


def test_mixed_batch_accounting_and_origins() -> None:
    raws = [enc(turn_dict(event_id="a")), b"{", enc(dep_dict()), enc(turn_dict(event_id="a")), b"[]",
            enc(turn_dict(event_id="b")), enc(dep_dict())]  # fmt: skip
    origins = [f"t/0@{i}" for i in range(len(raws))]
    b = decode_batch(raws, Deduplicator(), origins=origins)
    assert isinstance(b, DecodedBatch)
    assert [t.event_id for t in b.turns] == ["a", "b"]
    assert [d.event_id for d in b.deployments] == ["d1"]
    assert [(r.reason, r.origin, r.raw) for r in b.rejected] == [
        (R.NOT_JSON, "t/0@1", b"{"),
        (R.NOT_OBJECT, "t/0@4", b"[]"),
    ]
    assert b.duplicates == 2
    assert decode_batch([b"{"], Deduplicator()).rejected[0].origin == ""
    assert decode_batch([b"{", b"{"], Deduplicator(), origins=["x"]).rejected[1].origin == ""  # short origins


def test_any_iterable_of_messages() -> None:
    raws: Any = (enc(turn_dict(event_id=str(i))) for i in range(3))
    b = decode_batch(raws, Deduplicator())
    assert [t.event_id for t in b.turns] == ["0", "1", "2"]


def test_batch_dedup_matches_one_by_one_seen() -> None:
    rng = random.Random(7)
    for capacity in (10_000, 300):  # without and with rotations
        bulk = Deduplicator(capacity=capacity)
        for _ in range(300):
            # the bulk path rotates once per batch, not mid-batch: compare from the same window
            single = Deduplicator.from_state(bulk.to_state())
            ids = [str(rng.randrange(600)) for _ in range(rng.randint(1, 40))]
            flags = bulk._add_batch(ids)
            generation = single._current
            expected = [not single.seen(x) for x in ids]
            if single._current is generation:  # no rotation inside the batch
                assert (flags if flags is not None else [True] * len(ids)) == expected
            assert len(bulk._current) < capacity + 40


def test_duplicates_keep_the_first_occurrence_in_order() -> None:
    raws = [enc(turn_dict(event_id=e, turn=i)) for i, e in enumerate(["a", "b", "a", "c", "b"])]
    b = decode_batch(raws, Deduplicator())
    assert [(t.event_id, t.turn) for t in b.turns] == [("a", 0), ("b", 1), ("c", 3)]
    assert b.duplicates == 2


def test_duplicates_across_batches_and_kinds() -> None:
    dedup = Deduplicator()
    first = decode_batch([enc(turn_dict(event_id="x")), enc(dep_dict(event_id="x"))], dedup)
    assert (len(first.turns), len(first.deployments), first.duplicates) == (1, 1, 0)  # separate namespaces
    again = decode_batch([enc(dep_dict(event_id="x")), enc(turn_dict(event_id="x", turn=9))], dedup)
    assert (again.turns, again.deployments, again.rejected, again.duplicates) == ([], [], [], 2)


def test_rejected_events_do_not_enter_the_window() -> None:
    dedup = Deduplicator()
    decode_batch([enc(turn_dict(event_id="x", quality=2))], dedup)
    assert len(decode_batch([enc(turn_dict(event_id="x"))], dedup).turns) == 1


def test_dedup_window_two_generations() -> None:
    d = Deduplicator(capacity=3)
    assert [d.seen(x) for x in "abc"] == [False, False, False]  # current full -> becomes previous
    assert d.seen("a") is True  # remembered in the previous generation
    assert [d.seen(x) for x in "def"] == [False, False, False]  # second rotation drops a, b, c
    assert [d.seen(x) for x in "adef"] == [False, True, True, True]
    assert len(d) <= 2 * d.capacity


def test_dedup_window_in_decode_batch_is_bounded() -> None:
    dedup = Deduplicator(capacity=10)
    for start in range(0, 100, 5):
        b = decode_batch([enc(turn_dict(event_id=str(i))) for i in range(start, start + 5)], dedup)
        assert len(b.turns) == 5
        assert len(dedup) <= 2 * 10 + 5
    assert decode_batch([enc(turn_dict(event_id="99"))], dedup).duplicates == 1  # recent: remembered
    assert decode_batch([enc(turn_dict(event_id="0"))], dedup).duplicates == 0  # evicted long ago


def test_dedup_state_round_trip() -> None:
    d = Deduplicator(capacity=3)
    for x in "abcde":
        d.seen(x)
    state = json.loads(json.dumps(d.to_state()))
    assert state["v"] == 1 and state["capacity"] == 3
    restored = Deduplicator.from_state(state)
    assert [restored.seen(x) for x in "abcdez"] == [True, True, True, True, True, False]
    with pytest.raises(CheckpointError):
        Deduplicator.from_state({**state, "v": 2})
    with pytest.raises(CheckpointError):
        Deduplicator.from_state({"v": 1})
    with pytest.raises(ValueError):
        Deduplicator(capacity=0)


# ---- dead letters and encoding --------------------------------------------------------------------------


def test_dead_letter_record_round_trip() -> None:
    raw = enc(turn_dict(quality=1.7))
    r = decode_batch([raw], Deduplicator(), origins=["telemetry/3@42"]).rejected[0]
    rec = json.loads(dead_letter_record(r, now=1_800_000_000.5))
    assert rec == {
        "schema": "watcher.deadletter/v1",
        "reason": "out_of_range",
        "detail": "quality: expected `float` <= 1.0, got 1.7",
        "origin": "telemetry/3@42",
        "ts": 1_800_000_000.5,
        "raw_b64": base64.b64encode(raw).decode(),
        "raw_text": raw.decode(),
    }
    assert base64.b64decode(rec["raw_b64"]) == raw


def test_dead_letter_of_non_utf8_and_long_messages() -> None:
    raw = b"\xff\x00binary"
    rec = json.loads(dead_letter_record(Rejected(R.NOT_JSON, "x", raw), now=1.0))
    assert rec["raw_text"] is None and base64.b64decode(rec["raw_b64"]) == raw
    long = ("é" * 5000).encode()
    rec = json.loads(dead_letter_record(Rejected(R.TOO_LARGE, "x", long), now=1.0))
    assert rec["raw_text"] == "é" * 4096 and base64.b64decode(rec["raw_b64"]) == long


def test_encode_decode_round_trip() -> None:
    full = turn(enc(turn_dict(ts="2026-11-27T08:00:00.123456Z", arm="shadow", environment="staging",
                              turn=4, segment={"a": "b"}, latency_ms=1.5, quality=0.25, escalated=True,
                              error=True, compliance_violation=True, flags={"f": "on"}, tokens_in=1,
                              tokens_out=2, cost_usd=0.001)))  # fmt: skip
    for t in (full, turn(EXAMPLE_TURN), turn(enc(turn_dict()))):
        raw = encode_turn(t)
        assert json.loads(raw)["schema"] == SCHEMA_TURN
        assert turn(raw) == t
    flag = {"name": "n", "control": "c", "treatment": "t"}
    flagged = deployment(enc(dep_dict(action="started", strategy="flag", flag=flag)))
    for d in (deployment(EXAMPLE_DEPLOYMENT), flagged):
        raw = encode_deployment(d)
        assert json.loads(raw)["schema"] == SCHEMA_DEPLOYMENT
        assert deployment(raw) == d
        assert decode_deployment(raw) == d


def test_constructed_structs_encode_to_valid_contract_json() -> None:
    t = Turn(event_id="e", ts=5.0, agent_id="a", version="v", conversation_id="c")
    assert turn(encode_turn(t)) == t
    assert msgspec.json.decode(encode_turn(t))["ts"] == 5.0


@pytest.mark.parametrize("columnar", [True, False])
def test_a_valid_turn_with_a_deeply_nested_unknown_field_is_accepted(columnar: bool) -> None:
    # issue #15, 9: a field the contract ignores, nested past the parser's recursion limit, made the
    # turn unreadable (not_json)
    deep = b"[" * 5000 + b"]" * 5000
    raw = enc(turn_dict(quality=0.5))[:-1] + b',"extra":{"x\\"]":' + deep + b'},"more":1}'
    ok = enc(turn_dict(event_id="e-2"))
    batch = decode_batch([raw, ok, b"nope"], Deduplicator(), columnar=columnar)
    assert [(t.event_id, t.quality) for t in batch.turns] == [("e1", 0.5), ("e-2", None)]
    assert [r.reason for r in batch.rejected] == [R.NOT_JSON]
    # a field of the contract nested that deep is still refused (it cannot be valid)
    bad = enc(turn_dict(event_id="e-3"))[:-1] + b',"segment":{"a":' + deep + b"}}"
    (reject,) = decode_batch([bad], Deduplicator(), columnar=columnar).rejected
    assert reject.reason is R.NOT_JSON and "nested too deeply" in reject.detail
