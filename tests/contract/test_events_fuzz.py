"""Property/fuzz test of decode_batch: valid events, mutated events and arbitrary bytes.

For every generated batch: decode_batch does not raise; every input is accounted for exactly once;
every rejection carries a RejectReason and its own original bytes; every generated-valid event is
accepted; and every accepted event satisfies the contract, re-checked here independently against the
input JSON (parsed with the stdlib, not msgspec).
"""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from watcher.contract.decode import decode_batch
from watcher.contract.dedup import Deduplicator
from watcher.contract.schema import SCHEMA_DEPLOYMENT, SCHEMA_TURN, Deployment, RejectReason, Turn
from watcher.judges import STRATEGIES as REGISTRY

MAX_BYTES = 4096  # small, so the "huge" mutations cross it often
MIN_MESSAGES = 10_000
EXERCISED = {"messages": 0, "batches": 0, "rejected": 0, "turns": 0, "deployments": 0, "duplicates": 0}

ARMS = ("baseline", "canary", "shadow", "live")
ACTIONS = ("started", "weight_changed", "paused", "resumed", "promoted", "rolled_back", "aborted")
STRATEGIES = REGISTRY.names()
FLOAT_FIELDS = ("latency_ms", "quality", "cost_usd")
INT_FIELDS = ("turn", "tokens_in", "tokens_out")
BOOL_FIELDS = ("escalated", "error", "compliance_violation")
TS_MIN, TS_MAX = -62135596800.0, 253402300800.0

# ---- valid events ----------------------------------------------------------------------------------------

# A small id pool makes duplicates within and across kinds common.
# Short generated text keeps generation fast; the length limits get explicit boundary values.
event_ids = st.sampled_from([f"e{i}" for i in range(25)]) | st.text(min_size=1, max_size=12)
event_ids |= st.just("é" * 128)
names = st.text(min_size=1, max_size=12) | st.sampled_from(["x" * 128, "\U0001f600" * 128])
offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))


def _rfc3339(dt: datetime, zulu: bool) -> str:
    s = dt.isoformat()
    return s[:-6] + "Z" if zulu and s.endswith("+00:00") else s


rfc3339 = st.builds(
    _rfc3339,
    st.datetimes(datetime(1, 1, 2), datetime(9999, 12, 30), timezones=offsets | st.just(UTC)),
    st.booleans(),
)
timestamps = st.one_of(
    rfc3339,
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
    st.integers(min_value=0, max_value=4_000_000_000),
)
counts = st.integers(min_value=0, max_value=2**63 - 1)
non_negative = st.floats(min_value=0, max_value=1e300, allow_nan=False) | st.integers(0, 10**6)

extras = st.recursive(st.none() | st.integers() | st.text(max_size=5), lambda c: st.lists(c, max_size=3))
valid_turns = st.fixed_dictionaries(
    {
        "event_id": event_ids,
        "ts": timestamps,
        "agent_id": names,
        "version": names,
        "conversation_id": st.text(min_size=1, max_size=12) | st.just("c" * 256),
    },
    optional={
        "schema": st.just(SCHEMA_TURN),
        "environment": st.text(max_size=8),
        "arm": st.sampled_from([*ARMS, None]),
        "turn": counts,
        "segment": st.dictionaries(st.text(max_size=8), st.text(max_size=8) | st.just("s" * 64), max_size=16),
        "latency_ms": non_negative | st.none(),
        "quality": st.floats(min_value=0, max_value=1) | st.sampled_from([0, 1, None]),
        "escalated": st.booleans(),
        "error": st.booleans(),
        "compliance_violation": st.booleans(),
        "flags": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=5),
        "tokens_in": counts | st.none(),
        "tokens_out": counts | st.none(),
        "cost_usd": non_negative | st.none(),
        "unknown_extra": extras,
    },
)
flags = st.fixed_dictionaries({"name": names, "control": names, "treatment": names})


@st.composite
def valid_deployments(draw: st.DrawFn) -> dict[str, Any]:
    d = draw(
        st.fixed_dictionaries(
            {"schema": st.just(SCHEMA_DEPLOYMENT), "event_id": event_ids, "ts": timestamps, "agent_id": names,
             "action": st.sampled_from(ACTIONS)},
            optional={"environment": st.text(max_size=8), "strategy": st.sampled_from(STRATEGIES),
                      "baseline_version": names, "canary_version": names,
                      "canary_weight": st.floats(0, 1) | st.none(), "flag": flags | st.none(),
                      "actor": st.text(max_size=10), "notes": st.text(max_size=20) | st.none()},
        )
    )  # fmt: skip
    if d["action"] == "started":
        d.setdefault("strategy", draw(st.sampled_from(STRATEGIES)))
        if d["strategy"] == "flag" and d.get("flag") is None:
            d["flag"] = draw(flags)
        if d["strategy"] == "flag" and d["flag"]["control"] == d["flag"]["treatment"]:
            d["flag"]["treatment"] += "-on"  # one variant against itself is no flag rollout
    return d


def encode(d: Any, ascii_only: bool = True) -> bytes:
    return json.dumps(d, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


# ---- mutations -------------------------------------------------------------------------------------------
# Mutations run on a random.Random seeded by hypothesis: drawing every mutation through hypothesis costs
# ~1.5 ms per message, which would not fit 10,000 messages in the time budget.

MUTATIONS = ("drop", "retype", "edge", "edge", "flip", "truncate", "non_finite", "huge", "nest", "non_utf8",
             "schema", "non_object", "splice")  # fmt: skip
# Values on and just beyond each rule's boundary.
EDGES: dict[str, list[Any]] = {
    "quality": [0, 1, 1.0000001, -1e-9, -0.0, 2, "0.5", True],
    "latency_ms": [0, -0.001, -1, 1e308, None, False],
    "cost_usd": [0, -0.01, 1e308, [1]],
    "turn": [0, -1, 2**63 - 1, 2**63, 1.0, True, None],
    "tokens_in": [0, -1, 2**63, 0.5, None],
    "tokens_out": [2**63 - 1, -3, False],
    "event_id": ["", "x" * 128, "x" * 129, 1, None],
    "agent_id": ["", "é" * 128, "é" * 129],
    "version": ["", "v" * 129, ["v"]],
    "conversation_id": ["c" * 256, "c" * 257, ""],
    "environment": ["", None, 0],
    "arm": ["Canary", "control", "", None, "shadow"],
    "segment": [
        {f"k{i}": "v" for i in range(16)},
        {f"k{i}": "v" for i in range(17)},
        {"a": "x" * 65},
        {"a": 1},
        {"a": None},
        [],
    ],
    "flags": [{"f": 1}, {"f": "on"}, "f"],
    "escalated": [0, 1, "true", None],
    "error": [0, "false"],
    "compliance_violation": [1, None],
    "ts": [
        "2026-11-27T08:00:00",
        "2026-11-27T08:00:00Z",
        "2026-11-27T08:00:00+25:00",
        "2026-02-30T00:00:00Z",
        "2026-11-27t08:00:00z",
        "2026-11-27 08:00:00Z",
        "2026-11-27T08:00:60Z",
        -62135596801,
        253402300800,
        253402300799.99,
        True,
        "",
        "0",
    ],
    "action": ["started", "restarted", "", None],
    "strategy": ["flag", "canary", "linear", None],
    "canary_weight": [0, 1, 1.01, -0.01, "0.1"],
    "flag": [None, {"name": "n", "control": "c"}, {"name": "", "control": "c", "treatment": "t"}, "n"],
    "schema": [None, "", SCHEMA_TURN, SCHEMA_DEPLOYMENT],
}
NON_UTF8 = (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80", b"\xfe\xff", b"\xc0\xaf")


def random_text(rng: random.Random, max_size: int) -> str:
    alphabet = 'ab_-/.:é\u00a0\u4e2d\U0001f600\x00\n"\\'
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, max_size)))


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 1, 2**63, -(2**70), rng.randint(-(10**6), 10**6)])
    if kind == 3:
        return rng.choice([0.0, -0.0, 0.5, 1.5, -2.5, 1e308, 5e-324, rng.uniform(-1e6, 1e6)])
    if kind in (4, 5, 6):
        return random_text(rng, 12)
    if kind == 7:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {random_text(rng, 5): random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def mutate(d: dict[str, Any], rng: random.Random) -> bytes:
    d = dict(d)
    kind = rng.choice(MUTATIONS)
    if rng.random() < 0.9:  # a fresh id, or most accepted mutants would be duplicates of their original
        d["event_id"] = f"m{rng.getrandbits(64):x}"
    key = rng.choice(sorted(d))
    if kind == "edge":
        field = rng.choice(sorted(EDGES))
        d[field] = rng.choice(EDGES[field])
    elif kind == "drop":
        del d[key]
    elif kind == "retype":
        d[key] = random_json(rng)
    elif kind == "non_finite":
        d[rng.choice([*FLOAT_FIELDS, "ts", "canary_weight", "turn", key])] = 123456789
        literal = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"1e400"])
        return encode(d).replace(b"123456789", literal, 1)
    elif kind == "huge":
        d[rng.choice([key, "notes", "event_id", "padding"])] = "x" * rng.randint(100, 20_000)
    elif kind == "nest":
        depth = rng.choice([1, 10, 100, 1_000, 3_000, 10_000])
        return encode(d)[:-1] + b',"n":' + b"[" * depth + b"]" * depth + b"}"
    elif kind == "schema":
        d["schema"] = rng.choice([random_text(rng, 30), "watcher.turn/v2", "watcher.deadletter/v1", 1, None])
    elif kind == "non_object":
        return encode(rng.choice([[random_json(rng)], random_text(rng, 10), rng.randint(-9, 9), None, True]))
    raw = bytearray(encode(d, ascii_only=rng.random() < 0.5))
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] ^= rng.randint(1, 255)
    elif kind == "truncate":
        raw = raw[: rng.randrange(len(raw))]
    elif kind == "non_utf8":
        i = raw.rfind(b'"', 0, rng.randint(1, len(raw)))
        raw[i + 1 : i + 1] = rng.choice(NON_UTF8)
    elif kind == "splice":
        i = rng.randint(0, len(raw))
        raw[i:i] = rng.randbytes(rng.randint(1, 8))
    return bytes(raw)


@st.composite
def batches(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """A shuffled batch; each message tagged: "valid" ones must be accepted, the others may go either way."""
    valid = draw(st.lists(valid_turns | valid_deployments(), min_size=4, max_size=10))
    noise = draw(st.lists(st.binary(max_size=120), max_size=3))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    batch = [("valid", encode(d, ascii_only=rng.random() < 0.5)) for d in valid]
    batch += [("mutated", mutate(rng.choice(valid), rng)) for _ in range(3 * len(valid))]
    batch += [("bytes", b) for b in noise]
    rng.shuffle(batch)
    return batch


# ---- the independent contract check ----------------------------------------------------------------------


def _parse(raw: bytes) -> dict[str, Any]:
    # surrogateescape: msgspec skips unknown fields without decoding them, so they may hold non-UTF-8
    obj = json.loads(raw.decode("utf-8", "surrogateescape"))
    assert isinstance(obj, dict)
    return obj


def _is_str(v: Any, lo: int = 0, hi: int = 10**9) -> bool:
    return isinstance(v, str) and lo <= len(v) <= hi


def _is_float(v: Any, lo: float = 0.0, hi: float = math.inf) -> bool:
    return type(v) is float and math.isfinite(v) and lo <= v <= hi


def _is_count(v: Any) -> bool:
    return type(v) is int and 0 <= v < 2**63


def _expected_ts(v: Any) -> float | None:
    if isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v)
        except ValueError:
            return None  # msgspec accepts a few RFC 3339 forms fromisoformat does not; range-checked below
        assert dt.tzinfo is not None, f"accepted an RFC 3339 ts without a zone: {v!r}"
        return dt.timestamp()
    assert type(v) in (int, float) and math.isfinite(v), f"accepted ts {v!r}"
    return float(v)


def check_turn(t: Turn, src: dict[str, Any]) -> None:
    assert src.get("schema", SCHEMA_TURN) == SCHEMA_TURN
    assert _is_str(t.event_id, 1, 128) and _is_str(t.agent_id, 1, 128) and _is_str(t.version, 1, 128)
    assert _is_str(t.conversation_id, 1, 256) and _is_str(t.environment)
    assert _is_float(t.ts, TS_MIN, TS_MAX)
    assert t.arm is None or t.arm in ARMS
    assert _is_count(t.turn)
    assert isinstance(t.segment, dict) and len(t.segment) <= 16
    assert all(_is_str(k) and _is_str(v, 0, 64) for k, v in t.segment.items())
    assert isinstance(t.flags, dict) and all(_is_str(k) and _is_str(v) for k, v in t.flags.items())
    assert t.latency_ms is None or _is_float(t.latency_ms)
    assert t.quality is None or _is_float(t.quality, 0.0, 1.0)
    assert t.cost_usd is None or _is_float(t.cost_usd)
    assert all(v is None or _is_count(v) for v in (t.tokens_in, t.tokens_out))
    assert all(type(getattr(t, f)) is bool for f in BOOL_FIELDS)
    defaults = {"environment": "prod", "arm": None, "turn": 0, "segment": {}, "flags": {}, "escalated": False,
                "error": False, "compliance_violation": False}  # fmt: skip
    for f in Turn.__struct_fields__:
        got, want = getattr(t, f), src.get(f, defaults.get(f))
        if f == "ts":
            expected = _expected_ts(want)
            assert expected is None or abs(got - expected) <= 1e-6 * max(1.0, abs(expected)) + 1e-6
        elif f in FLOAT_FIELDS:
            assert want is None and got is None or (type(want) in (int, float) and got == float(want))
        else:
            assert type(got) is type(want) and got == want, (f, got, want)


def check_deployment(d: Deployment, src: dict[str, Any]) -> None:
    assert src.get("schema") == SCHEMA_DEPLOYMENT
    assert _is_str(d.event_id, 1, 128) and _is_str(d.agent_id, 1, 128) and _is_str(d.environment)
    assert _is_float(d.ts, TS_MIN, TS_MAX)
    assert abs(d.ts - (_expected_ts(src["ts"]) or d.ts)) <= 1e-6 * max(1.0, abs(d.ts)) + 1e-6
    assert d.action in ACTIONS and d.action == src["action"]
    assert d.strategy is None or d.strategy in STRATEGIES
    assert d.canary_weight is None or _is_float(d.canary_weight, 0.0, 1.0)
    if d.action == "started":
        assert d.strategy is not None
        if d.strategy == "flag":
            assert d.flag is not None
    if d.flag is not None:
        assert all(_is_str(getattr(d.flag, f), 1) for f in ("name", "control", "treatment"))
    for f in ("baseline_version", "canary_version"):
        assert getattr(d, f) is None or _is_str(getattr(d, f), 1, 128)
    assert all(getattr(d, f) is None or _is_str(getattr(d, f)) for f in ("actor", "notes"))


def check_batch(batch: list[tuple[str, bytes]]) -> None:
    raws = [raw for _, raw in batch]
    origins = [str(i) for i in range(len(raws))]
    out = decode_batch(  # must not raise
        raws, Deduplicator(), origins=origins, max_bytes=MAX_BYTES, check_marker=REGISTRY.check_marker
    )

    assert len(out.turns) + len(out.deployments) + len(out.rejected) + out.duplicates == len(raws)
    rejected_at = set()
    for r in out.rejected:
        assert isinstance(r.reason, RejectReason) and isinstance(r.detail, str) and r.detail
        i = int(r.origin)
        assert r.raw == raws[i] and i not in rejected_at
        rejected_at.add(i)
        assert (r.reason is RejectReason.TOO_LARGE) == (len(r.raw) > MAX_BYTES), (r.reason, len(r.raw))
        if batch[i][0] == "valid":
            assert r.reason is RejectReason.TOO_LARGE, (
                f"valid rejected: {r.reason} {r.detail} {r.raw[:200]!r}"
            )
    assert sorted(rejected_at) == [int(r.origin) for r in out.rejected]  # input order

    # Replay the accepted inputs through an independent model of routing + dedup.
    seen: set[tuple[str, str]] = set()
    expect_turns, expect_deployments, duplicates = [], [], 0
    for i, raw in enumerate(raws):
        if i in rejected_at:
            continue
        assert len(raw) <= MAX_BYTES
        src = _parse(raw)
        kind = "deployment" if src.get("schema") == SCHEMA_DEPLOYMENT else "turn"
        if (kind, src["event_id"]) in seen:
            duplicates += 1
            continue
        seen.add((kind, src["event_id"]))
        (expect_deployments if kind == "deployment" else expect_turns).append(src)
    assert out.duplicates == duplicates
    assert len(out.turns) == len(expect_turns) and len(out.deployments) == len(expect_deployments)
    for t, src in zip(out.turns, expect_turns):
        assert isinstance(t, Turn)
        check_turn(t, src)
    for d, src in zip(out.deployments, expect_deployments):
        assert isinstance(d, Deployment)
        check_deployment(d, src)

    EXERCISED["messages"] += len(raws)
    EXERCISED["batches"] += 1
    EXERCISED["rejected"] += len(out.rejected)
    EXERCISED["turns"] += len(out.turns)
    EXERCISED["deployments"] += len(out.deployments)
    EXERCISED["duplicates"] += out.duplicates


@settings(
    max_examples=600,
    derandomize=True,
    deadline=None,
    database=None,
    # No shrinking: the mutants come from a seeded random.Random that hypothesis cannot shrink well, and
    # the assertion messages already name the field and value; shrinking a 30-message batch takes minutes.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(batches())
def _fuzz_batches(batch: list[tuple[str, bytes]]) -> None:
    check_batch(batch)


def test_decode_batch_fuzz() -> None:
    before = EXERCISED["messages"]
    _fuzz_batches()
    assert EXERCISED["messages"] - before >= MIN_MESSAGES, EXERCISED
    # every outcome was exercised, so the invariants above were not checked vacuously
    assert all(EXERCISED[k] > 100 for k in ("rejected", "turns", "deployments", "duplicates")), EXERCISED
