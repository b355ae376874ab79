"""The optional C scanner (``watcher.contract._turnscan``): soundness against msgspec, robustness, interning.

Soundness is differential: for every message the scanner calls fast, msgspec's ``Decoder(Turn)``
must accept it and every column must equal msgspec's value (floats bit for bit, NaN for None).
Inputs: realistic simulator events (which must be >= 99 % fast: a scanner that sends everything to
the slow path fails), generated Turn-like messages full of boundary values, odd spellings, random key
order and whitespace, and byte-level mutations of valid messages.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import math
import os
import random
import struct
import sys
import tracemalloc
from datetime import datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watcher.contract.schema import Turn, encode_turn

try:
    from watcher.contract import _turnscan
except ImportError:
    if os.environ.get("CI"):  # CI builds the extension: its absence there is a packaging bug
        raise
    pytest.skip(
        "watcher.contract._turnscan is not built (no C compiler at install time)", allow_module_level=True
    )

DECODER = msgspec.json.Decoder(Turn)
MAX = 65_536
NAN_BITS = struct.pack("<d", math.nan)
EXERCISED = {"messages": 0, "fast": 0}

# ---- the differential check --------------------------------------------------------------------------


@dataclasses.dataclass
class Scan:
    fast: list[int]
    slow: list[int]
    ts: list[float]
    latency: list[float]
    quality: list[float]
    bits: bytes
    turn: list[int]
    event_id: list[str]
    conversation_id: list[str]
    route_code: list[int]
    route_keys: list[tuple[Any, ...]]
    segment_code: list[int]
    segments: list[dict[str, str]]
    flag_code: list[int]
    flag_dicts: list[dict[str, str]]
    trace_id: list[str | None] | None


def scan(values: list[Any], max_bytes: int = MAX) -> Scan:
    out = _turnscan.scan(values, max_bytes)
    assert isinstance(out, tuple) and len(out) == 16
    fast, slow, ts, lat, q, bits, turn, eids, cids, rcode, rkeys, scode, segs, fcode, fdicts, tids = out
    n = len(fast) // 8
    for b, size in (
        (fast, 8),
        (ts, 8),
        (lat, 8),
        (q, 8),
        (bits, 1),
        (turn, 8),
        (rcode, 8),
        (scode, 8),
        (fcode, 8),
    ):
        assert type(b) is bytes and len(b) == n * size
    assert type(slow) is list and type(eids) is list and type(cids) is list and len(eids) == len(cids) == n
    assert tids is None or (type(tids) is list and len(tids) == n and tids.count(None) < n)

    def i64(b: bytes) -> list[int]:
        return list(struct.unpack(f"={n}q", b))

    def f64(b: bytes) -> list[float]:
        return list(struct.unpack(f"={n}d", b))

    return Scan(
        i64(fast),
        slow,
        f64(ts),
        f64(lat),
        f64(q),
        bits,
        i64(turn),
        eids,
        cids,
        i64(rcode),
        rkeys,
        i64(scode),
        segs,
        i64(fcode),
        fdicts,
        tids,
    )


def same_float(got: float, want: float | None) -> bool:
    if want is None:
        return math.isnan(got)
    return struct.pack("<d", got) == struct.pack("<d", float(want))


def check(values: list[Any], max_bytes: int = MAX) -> Scan:
    """Scan, then hold every fast row against msgspec; returns the scan."""
    s = scan(values, max_bytes)
    assert s.fast == sorted(s.fast) and s.slow == sorted(s.slow)
    assert sorted(s.fast + s.slow) == list(range(len(values))), "fast + slow must partition the input"
    for j, i in enumerate(s.fast):
        raw = values[i]
        assert type(raw) is bytes and len(raw) <= max_bytes
        try:
            t = DECODER.decode(raw)
        except msgspec.DecodeError as e:  # pragma: no cover - the failure message is the point
            raise AssertionError(f"fast but msgspec rejects {raw!r}: {e}") from None
        want_ts = t.ts if t.ts.__class__ is float else t.ts.timestamp()
        assert same_float(s.ts[j], want_ts), (raw, s.ts[j], want_ts)
        assert same_float(s.latency[j], t.latency_ms), (raw, s.latency[j])
        assert same_float(s.quality[j], t.quality), (raw, s.quality[j])
        bits = s.bits[j]
        assert bits & ~7 == 0
        assert (bool(bits & 1), bool(bits & 2), bool(bits & 4)) == (
            t.escalated,
            t.error,
            t.compliance_violation,
        )
        assert s.turn[j] == t.turn, raw
        assert type(s.event_id[j]) is str and s.event_id[j] == t.event_id, raw
        assert type(s.conversation_id[j]) is str and s.conversation_id[j] == t.conversation_id, raw
        assert (None if s.trace_id is None else s.trace_id[j]) == t.trace_id, raw
        key = s.route_keys[s.route_code[j]]
        assert type(key) is tuple and key == (t.agent_id, t.environment, t.version, t.arm), raw
        assert all(type(x) is str for x in key[:3]) and (key[3] is None or type(key[3]) is str)
        seg = s.segments[s.segment_code[j]]
        assert type(seg) is dict and seg == t.segment and list(seg) == list(t.segment), raw
        fl = s.flag_dicts[s.flag_code[j]]
        assert type(fl) is dict and fl == t.flags, raw
    # codes are numbered by first appearance and every object is used
    for codes, objs in (
        (s.route_code, s.route_keys),
        (s.segment_code, s.segments),
        (s.flag_code, s.flag_dicts),
    ):
        firsts = list(dict.fromkeys(codes))
        assert firsts == list(range(len(objs)))
    assert len(set(s.route_keys)) == len(s.route_keys), "one code per distinct route key"
    EXERCISED["messages"] += len(values)
    EXERCISED["fast"] += len(s.fast)
    return s


# ---- realistic events ----------------------------------------------------------------------------------


def _simulated(preset: str, n: int, seed: int) -> list[bytes]:
    from watcher.sim.presets import PRESETS, STRATEGY_PRESETS
    from watcher.sim.traffic import generate

    base = {**PRESETS, **STRATEGY_PRESETS}[preset]
    s = dataclasses.replace(base, seed=seed, duration_s=min(base.duration_s, 900.0))
    return list(itertools.islice(generate(s), n))


@pytest.fixture(scope="module")
def realistic() -> list[bytes]:
    from watcher.sim.presets import PRESETS, STRATEGY_PRESETS

    presets = [p for p in ("healthy", "demo") if p in PRESETS] + list(STRATEGY_PRESETS)[:3]
    out: list[bytes] = []
    for k, name in enumerate(presets):
        out += _simulated(name, 2_500, seed=11 + k)
    return out


def test_realistic_events_are_fast_and_exact(realistic: list[bytes]) -> None:
    turns = [i for i, raw in enumerate(realistic) if b'"watcher.turn/v1"' in raw]
    assert len(turns) > 5_000
    fast_total = 0
    for k in range(0, len(realistic), 2_000):
        batch = realistic[k : k + 2_000]
        s = check(batch)
        fast_total += len(s.fast)
        for i in s.fast:  # deployment markers are never fast
            assert b'"watcher.deployment/v1"' not in batch[i]
    assert fast_total >= 0.99 * len(turns), (
        f"only {fast_total} of {len(turns)} simulator turns took the fast path"
    )


def test_encoded_turns_are_exact() -> None:
    rnd = random.Random(3)
    turns = []
    for i in range(3_000):
        turns.append(
            Turn(
                event_id=f"e{i}",
                ts=round(1.7e9 + rnd.random() * 1e6, rnd.choice([0, 1, 3, 6])),
                agent_id=rnd.choice(["a", "bot", "é-bot"]),
                environment=rnd.choice(["prod", "dev", ""]),
                version=f"v{rnd.randrange(5)}",
                arm=rnd.choice([None, "baseline", "canary", "shadow", "live"]),
                conversation_id=f"c{i // 3}",
                turn=rnd.randrange(0, 10 ** rnd.randrange(1, 19)),
                segment=rnd.choice([{}, {"tier": "gold"}, {"lang": "日本語", "tier": "x" * 64}]),
                latency_ms=rnd.choice([None, round(rnd.random() * 900, 1), rnd.random() * 900, 0.0, 5.0]),
                quality=rnd.choice([None, round(rnd.random(), 3), 1.0, 0.0, rnd.random()]),
                escalated=rnd.random() < 0.3,
                error=rnd.random() < 0.3,
                compliance_violation=rnd.random() < 0.3,
                flags=rnd.choice([{}, {"new_prompt": "on"}]),
                tokens_in=rnd.choice([None, 5]),
                tokens_out=rnd.choice([None, 7]),
                cost_usd=rnd.choice([None, 0.0021, rnd.random()]),
                trace_id=rnd.choice([None, "4bf92f3577b34da6a3ce929d0e0e4736", "t" * 64]),
            )
        )
    values = [encode_turn(t) for t in turns]
    s = check(values)
    # msgspec writes shortest round-trip floats: those with <= 15 digits take the fast path
    assert len(s.fast) > 0.5 * len(values)


# ---- generated messages: boundary values, odd spellings, random order and whitespace --------------------

_WS = ["", "", "", " ", "\n", "\t", "\r\n  "]
_BAD_WS = ["\x0b", "\xa0", "\x00", "\x0c"]
_IDS = [
    "a",
    "e1",
    "x" * 128,
    "x" * 129,
    "é" * 128,
    "é" * 129,
    "\U0001f600" * 128,
    "\U0001f600" * 129,
    "",
    "c-ø-1",
    "日本",
    "\u2028",
    'a"b',
    "a\\b",
    "tab\tin",
    "a\x00b",
    "a\x1fb",
    "\x7f",
    "\ud800",
]
_RAW_STRINGS = [
    b'"a\\nb"',
    b'"\\u0041"',
    b'"\\/"',
    b'"\xff"',
    b'"\xed\xa0\x80"',
    b'"\xc0\xaf"',
    b'"\xe0\x80\xaf"',
    b'"\xf4\x90\x80\x80"',
    b'"\xf0\x9f\x98"',
    b'"\xc3"',
    b'"\xc3\xa9"',
    b'"\xef\xbf\xbf"',
    b'"\xf4\x8f\xbf\xbf"',
    b'"\xee\x80\x80"',
    b'"\xed\x9f\xbf"',
    b'"\xf0\x90\x80\x80"',
]
_TS_STRINGS = [
    "2026-11-27T08:00:00.242Z",
    "2026-11-27T08:00:00Z",
    "2020-01-01T00:00:00.5Z",
    "2020-01-01T00:00:00.123456Z",
    "2020-01-01T00:00:00.1234567Z",
    "2020-01-01T00:00:00.Z",
    "2020-01-01t00:00:00Z",
    "2020-01-01T00:00:00z",
    "2020-01-01 00:00:00Z",
    "2020-01-01T00:00:60Z",
    "2020-01-01T24:00:00Z",
    "2020-01-01T23:60:00Z",
    "2020-01-01T00:00:00",
    "2020-01-01T00:00:00+05:30",
    "2020-01-01T00:00:00-00:00",
    "2020-01-01T00:00:00+23:59",
    "2020-01-01T00:00:00+24:00",
    "2020-01-01T00:00:00+05:60",
    "2020-01-01T00:00:00+0530",
    "2000-02-29T12:00:00Z",
    "1900-02-29T12:00:00Z",
    "2024-02-29T23:59:59.999999Z",
    "2023-02-29T00:00:00Z",
    "2023-04-31T00:00:00Z",
    "2023-13-01T00:00:00Z",
    "2023-00-01T00:00:00Z",
    "2023-01-00T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "0000-12-31T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "1970-01-01T00:00:00Z",
    "1969-12-31T23:59:59.999999Z",
    "2255-06-05T23:47:34.740992Z",
    "2255-06-05T23:47:34.740993Z",
    "1684-07-28T00:12:25.259008Z",
    "1684-07-28T00:12:25.259007Z",
    "2020-01-01T00:00:00.000000Z",
    "2020-1-01T00:00:00Z",
    "2020-01-01T00:00:00.5",
    "2020-01-01T00:00:00+05:30x",
    "2020-01-01T00:00:00ZZ",
    "２０２０-01-01T00:00:00Z",
    "",
]
_FLOATS = [
    "0",
    "0.0",
    "-0",
    "-0.0",
    "1",
    "1.5",
    "1e2",
    "1E+2",
    "1e-5",
    "1e22",
    "1e23",
    "1.5e-22",
    "1.5e-23",
    "123456789012345",
    "1234567890123456",
    "0.000123456789012345",
    "0.1",
    "0.3",
    "1e308",
    "1e309",
    "1e-400",
    "1.",
    ".5",
    "01",
    "-1",
    "+1",
    "NaN",
    "Infinity",
    "true",
    '"1"',
    "null",
    "1.0e",
    "1e+",
    "0x10",
    "999999999999999999999",
    "2.5e-3",
    "12.30000",
    "1.000000000000000000001",
    "7e-10",
    "9007199254740993",
]
_UNIT = [
    "0",
    "1",
    "1.0",
    "1.00000000000001",
    "0.5",
    "1e0",
    "10e-1",
    "2",
    "-0.1",
    "0.999999999999999",
    "null",
    "0e5",
    "1e-1",
    "100e-2",
]
_INTS = [
    "0",
    "1",
    "42",
    "999999999999999999",
    "9223372036854775807",
    "9223372036854775808",
    "-1",
    "-0",
    "1.0",
    "1e2",
    "null",
    '"3"',
    "00",
    "true",
    "18446744073709551616",
]
_BOOLS = ["true", "false", "null", "0", "1", '"true"', "True", "tru", "falsey"]
_ARMS = [
    "null",
    '"baseline"',
    '"canary"',
    '"shadow"',
    '"live"',
    '"Canary"',
    '""',
    "1",
    '"canary "',
    '"can\\u0061ry"',
]
_SCHEMAS = [
    '"watcher.turn/v1"',
    '"watcher.turn/v2"',
    '"watcher.deployment/v1"',
    "null",
    '"watcher.turn/v1 "',
    '"watcher.turn\\/v1"',
]


def _js(s: str) -> str:
    """A JSON string with the characters as they are (no escapes except the required ones)."""
    return json.dumps(s, ensure_ascii=False)


def _obj(rnd: random.Random, n: int, vlen: int = 3, dup: bool = False) -> str:
    keys = [f"k{i}" for i in range(n)]
    if dup and keys:
        keys[-1] = keys[0]
    body = ",".join(f"{_js(k)}:{_js('v' * vlen if rnd.random() < 0.5 else 'é' * vlen)}" for k in keys)
    return "{" + body + "}"


def _segment(rnd: random.Random) -> str:
    return rnd.choice(
        [
            "{}",
            '{"tier":"gold"}',
            '{ "a" : "b" , "c":"d" }',
            _obj(rnd, 16),
            _obj(rnd, 17),
            _obj(rnd, 3, 64),
            _obj(rnd, 3, 65),
            _obj(rnd, 3, dup=True),
            '{"a":1}',
            '{"a":{"b":"c"}}',
            "[]",
            "null",
            '{"a":"b",}',
            '{"":""}',
            '{"a" "b"}',
            '{"lang":"日本語"}',
            '{"a":"\\n"}',
            '{"\\u0061":"b"}',
            '{"a":null}',
            "{",
        ]
    )


def _flags(rnd: random.Random) -> str:
    return rnd.choice(
        [
            "{}",
            '{"new_prompt":"on"}',
            _obj(rnd, 40),
            _obj(rnd, 20),
            _obj(rnd, 2, dup=True),
            "null",
            '{"a":1}',
            "[]",
            '{"a":"' + "x" * 300 + '"}',
        ]
    )


def _ts(rnd: random.Random) -> str:
    r = rnd.random()
    if r < 0.35:
        return _js(rnd.choice(_TS_STRINGS))
    if r < 0.55:
        return rnd.choice(
            [
                "0",
                "-0",
                "-0.0",
                "1700000000",
                "1700000000.123",
                "-62135596800",
                "-62135596801",
                "-62135596800.0",
                "253402300799.999",
                "253402300800",
                "253402300799",
                "1.7e9",
                "1.7E9",
                "1700000000.12345678",
                "1e400",
                "-1.5",
                "17000000001234567",
                '"1700000000"',
                "null",
            ]
        )
    if r < 0.8:  # a random valid RFC 3339 stamp
        dt = datetime(1, 1, 1) + timedelta(seconds=rnd.randrange(0, 315_537_897_600))
        frac = rnd.choice(["", "." + str(rnd.randrange(10**6)).zfill(6)[: rnd.randrange(1, 8)]])
        zone = rnd.choice(
            ["Z", "+00:00", f"{rnd.choice('+-')}{rnd.randrange(24):02d}:{rnd.randrange(60):02d}"]
        )
        return _js(dt.strftime("%Y-%m-%dT%H:%M:%S").zfill(19) + frac + zone)
    return repr(round(rnd.uniform(-6.2e10, 2.5e11), rnd.randrange(0, 7)))


def _clean(rnd: random.Random, field: str) -> bytes:
    """A value the contract accepts, often a boundary one."""
    if field == "trace_id" and rnd.random() < 0.2:
        return b"null"
    if field in _RAW_OK:
        top = 256 if field == "conversation_id" else 64 if field == "trace_id" else 128
        text = rnd.choice(
            [
                "a",
                "e1",
                "support-bot",
                "v41",
                "x" * top,
                "é" * top,
                "\U0001f600" * top,
                "c-ø-1",
                "日本",
                "\u2028",
                "\x7f",
                "é" * (top - 1) + "x",
            ]
            + (["", "prod"] if field == "environment" else [])
            + (["4bf92f3577b34da6a3ce929d0e0e4736"] if field == "trace_id" else [])
        )
        return _js(text).encode()
    if field == "ts":
        return rnd.choice(
            [
                _js(
                    rnd.choice(
                        [
                            "2000-02-29T12:00:00Z",
                            "2024-02-29T23:59:59.999999Z",
                            "1970-01-01T00:00:00Z",
                            "2020-01-01T00:00:00+05:30",
                            "2020-01-01T00:00:00-23:59",
                            "2020-01-01T00:00:00.1Z",
                        ]
                    )
                ),
                _ts_valid(rnd),
                _ts_valid(rnd),
                rnd.choice(
                    ["0", "1700000000", "1700000000.123", "-62135596800", "253402300799.999", "1.7e9", "-1.5"]
                ),
            ]
        ).encode()
    if field == "arm":
        return rnd.choice(["null", '"baseline"', '"canary"', '"shadow"', '"live"']).encode()
    if field in ("turn", "tokens_in", "tokens_out"):
        n = str(rnd.randrange(0, 10 ** rnd.randrange(1, 19)))
        return (rnd.choice([n, "null"]) if field != "turn" else n).encode()
    if field in ("latency_ms", "cost_usd", "quality"):
        if field == "quality":
            text = rnd.choice(
                [
                    "0",
                    "1",
                    "1.0",
                    "0.5",
                    "null",
                    "1e0",
                    "10e-1",
                    repr(round(rnd.random(), rnd.randrange(1, 15))),
                ]
            )
        else:
            text = rnd.choice(
                [
                    "0",
                    "0.0",
                    "1e2",
                    "null",
                    "203.2",
                    "0.002300",
                    "1E-3",
                    f"{rnd.randrange(10 ** rnd.randrange(1, 15))}.{rnd.randrange(10)}",
                    f"{rnd.randrange(1, 10**6)}e{rnd.randrange(-16, 17)}",
                ]
            )
        return text.encode()
    if field in ("escalated", "error", "compliance_violation"):
        return rnd.choice([b"true", b"false"])
    if field == "segment":
        return rnd.choice(
            [
                "{}",
                '{"tier":"gold"}',
                '{ "a" : "b" , "c":"d" }',
                _obj(rnd, 16),
                _obj(rnd, 3, 64),
                '{"":""}',
                '{"lang":"日本語"}',
            ]
        ).encode()
    if field == "flags":
        return rnd.choice(["{}", '{"new_prompt":"on"}', _obj(rnd, 20)]).encode()
    if field == "schema":
        return b'"watcher.turn/v1"'
    raise AssertionError(field)


def _ts_valid(rnd: random.Random) -> str:
    dt = datetime(1700, 1, 1) + timedelta(seconds=rnd.randrange(0, 550 * 365 * 86400))
    frac = rnd.choice(["", "." + str(rnd.randrange(10**6)).zfill(6)[: rnd.randrange(1, 7)]])
    zone = rnd.choice(["Z", "+00:00", f"{rnd.choice('+-')}{rnd.randrange(24):02d}:{rnd.randrange(60):02d}"])
    return _js(f"{dt:%Y-%m-%dT%H:%M:%S}{frac}{zone}")


def _value(rnd: random.Random, field: str) -> bytes:
    return (
        _value_text(rnd, field)
        if field in _RAW_OK and rnd.random() < 0.05
        else _value_text(rnd, field, raw_strings=False)
    )


_RAW_OK = {"event_id", "agent_id", "version", "conversation_id", "environment", "trace_id"}


def _value_text(rnd: random.Random, field: str, raw_strings: bool = True) -> bytes:
    if raw_strings:  # invalid or escaped UTF-8 spelled as bytes
        return rnd.choice(_RAW_STRINGS)
    return _text(rnd, field).encode("utf-8", "surrogatepass")


def _text(rnd: random.Random, field: str) -> str:
    if rnd.random() < 0.04:  # the wrong kind of value
        return rnd.choice(["null", "true", "1", '"x"', "{}", "[]", '"\\u0000"'])
    if field in _RAW_OK:
        if rnd.random() < 0.8:
            return _js(
                rnd.choice(["a", "e1", "support-bot", "v41", "prod", "staging", "c-1"])
                + (str(rnd.randrange(1000)) if field in ("event_id", "conversation_id") else "")
            )
        return _js(rnd.choice(_IDS + ["x" * 256, "x" * 257]))
    if field == "ts":
        return _ts(rnd)
    if field == "arm":
        return rnd.choice(_ARMS)
    if field in ("turn", "tokens_in", "tokens_out"):
        return rnd.choice(_INTS) if rnd.random() < 0.5 else str(rnd.randrange(0, 10 ** rnd.randrange(1, 19)))
    if field in ("latency_ms", "cost_usd"):
        if rnd.random() < 0.5:
            return rnd.choice(_FLOATS)
        return (
            f"{rnd.randrange(10 ** rnd.randrange(1, 17))}{rnd.choice(['', '.' + str(rnd.randrange(1000))])}"
            f"{rnd.choice(['', '', 'e' + str(rnd.randrange(-30, 30)), 'E+3'])}"
        )
    if field == "quality":
        return rnd.choice(_UNIT) if rnd.random() < 0.6 else repr(round(rnd.random(), rnd.randrange(1, 17)))
    if field in ("escalated", "error", "compliance_violation"):
        return rnd.choice(_BOOLS) if rnd.random() < 0.3 else rnd.choice(["true", "false"])
    if field == "segment":
        return _segment(rnd)
    if field == "flags":
        return _flags(rnd)
    if field == "schema":
        return rnd.choice(_SCHEMAS)
    raise AssertionError(field)


_REQUIRED = ["event_id", "ts", "agent_id", "version", "conversation_id"]
_OPTIONAL = [
    "environment",
    "arm",
    "turn",
    "segment",
    "latency_ms",
    "quality",
    "escalated",
    "error",
    "compliance_violation",
    "flags",
    "tokens_in",
    "tokens_out",
    "cost_usd",
    "trace_id",
    "schema",
]


def message(rnd: random.Random) -> bytes:
    """A Turn-like message: half of them valid, the others with one or two odd parts."""
    fields = [f for f in _REQUIRED if rnd.random() > 0.01] + [f for f in _OPTIONAL if rnd.random() < 0.6]
    rnd.shuffle(fields)
    odd = set(rnd.sample(fields, min(len(fields), rnd.choice([0, 0, 0, 1, 1, 2]))))
    pairs = [(f, _value(rnd, f) if f in odd else _clean(rnd, f)) for f in fields]
    r = rnd.random() if odd else 1.0
    if r < 0.03:
        pairs.append((rnd.choice(fields or ["ts"]), b'"dup"'))
    elif r < 0.06:
        pairs.append(("unknown", b"1"))
    elif r < 0.08:
        pairs.insert(0, ("Event_id", b'"x"'))
    spaced = rnd.random() < 0.5

    def ws() -> str:
        return rnd.choice(_WS) if spaced else ""

    parts = [(ws() + "{").encode()]
    for k, (f, v) in enumerate(pairs):
        parts += [
            (ws() + _js(f) + ws() + ":" + ws()).encode(),
            v,
            (ws() + ("," if k < len(pairs) - 1 else "")).encode(),
        ]
    parts.append((ws() + "}" + ws()).encode())
    out = b"".join(parts)
    r = rnd.random() if odd else 1.0
    if r < 0.02:
        out += rnd.choice(_BAD_WS).encode("utf-8")
    elif r < 0.03:
        out += b"{}"
    elif r < 0.04:
        out = b"\xef\xbb\xbf" + out  # BOM
    elif r < 0.05:
        out = b"[" + out + b"]"
    return out


def test_generated_messages_are_sound() -> None:
    rnd = random.Random(20240501)
    values = [message(rnd) for _ in range(12_000)]
    fast = 0
    for k in range(0, len(values), 1_000):
        fast += len(check(values[k : k + 1_000]).fast)
    # a real mix: plenty of both (a scanner that sends all to slow, or one that accepts junk, shows here)
    assert 0.15 * len(values) < fast < 0.9 * len(values)


@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.randoms(use_true_random=False), st.integers(1, 40))
def test_generated_batches_hypothesis(rnd: random.Random, n: int) -> None:
    check([message(rnd) for _ in range(n)])


# ---- byte-level mutations -------------------------------------------------------------------------------


def mutate(rnd: random.Random, raw: bytes) -> bytes:
    b = bytearray(raw)
    for _ in range(rnd.choice([1, 1, 1, 2, 3])):
        op = rnd.randrange(7)
        i = rnd.randrange(len(b) + 1) if b else 0
        if op == 0 and b:  # flip a byte to anything
            b[min(i, len(b) - 1)] = rnd.randrange(256)
        elif op == 1:  # insert a structural or odd byte
            b[i:i] = bytes([rnd.choice(b'{}[]:,"\\ \t\n0123456789.eE+-tfnul\x00\x1f\x7f\x80\xc3\xed\xff')])
        elif op == 2 and b:
            del b[min(i, len(b) - 1)]
        elif op == 3:
            del b[i:]
        elif op == 4 and b:  # duplicate a slice (repeats keys, values, separators)
            j = rnd.randrange(len(b))
            lo, hi = sorted((i, j))
            b[hi:hi] = b[lo:hi]
        elif op == 5 and b:  # change a digit
            digits = [k for k, c in enumerate(b) if 48 <= c <= 57]
            if digits:
                b[rnd.choice(digits)] = rnd.choice(b"0123456789")
        elif op == 6 and b:  # flip one bit
            k = min(i, len(b) - 1)
            b[k] ^= 1 << rnd.randrange(8)
    return bytes(b)


def test_mutations_are_sound(realistic: list[bytes]) -> None:
    rnd = random.Random(77)
    seeds = realistic[:3000] + [message(rnd) for _ in range(1000)]
    values = [mutate(rnd, rnd.choice(seeds)) for _ in range(12_000)]
    fast = 0
    for k in range(0, len(values), 2_000):
        fast += len(check(values[k : k + 2_000]).fast)
    assert fast > 1_000  # digit changes and harmless edits stay fast: the check had rows to compare


# ---- unknown keys: skipped values, validated as msgspec validates them -------------------------------
#
# msgspec's Decoder(Turn) ignores a key that is no field (forward compatibility) but still parses its
# value with its skipping parser: grammar only (no number range, duplicate keys fine), \u escapes must
# not leave a lone surrogate, raw control bytes are refused; invalid UTF-8 is NOT checked there. The
# scanner takes such messages fast, except where it is deliberately stricter (invalid UTF-8, nesting
# deeper than 32, an escape in the unknown key). Every generated part carries what it must do:
#   OK: fast;  BAD: msgspec rejects (so slow);  STRICT: msgspec accepts, the scanner declines;
#   SLOW: the scanner declines, msgspec may do either.

OK, STRICT, SLOW, BAD = 0, 1, 2, 3  # a message is as bad as its worst part
SKIP_DEPTH = 32

_UNK_STR_OK = [
    b"",
    b"abc",
    b"trace-0af7651916cd43dd8448eb211c80319c",
    "é日本\U0001f600".encode(),
    b"\x7f",
    b"'",
    b'\\"',
    b"\\\\",
    b"\\/",
    b"\\b\\f\\n\\r\\t",
    b"\\u0000",
    b"\\u00e9",
    b"\\uABCD",
    b"\\uffff",
    b"\\uD7FF",
    b"\\uE000",
    b"\\ud83d\\ude00",
    b"\\uDBFF\\uDFFF",
    b"x" * 300,
    b"\xef\xbf\xbf",
    b"\xf4\x8f\xbf\xbf",
]
_UNK_STR_BAD = [
    b"\\ud800 ",  # (pieces are bad whatever follows them: a lone surrogate at the end is below)
    b"\\ud800x123456",
    b"\\udc00",
    b"\\uDFFF",
    b"\\ud800\\ud800",
    b"\\ud800\\u0041",
    b"\\ud800\\n",
    b"\\u12 ",
    b"\\u12G4",
    b"\\uzzzz",
    b"\\a",
    b"\\'",
    b"\\x41",
    b"\\U0041",
    b"\x00",
    b"\x01",
    b"\t",
    b"\n",
    b"\x1f",
]
_UNK_STR_STRICT = [  # invalid UTF-8: msgspec does not check it in a skipped string, the scanner does
    b"\xff",
    b"\xc3 ",
    b"\xc3x",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\xe0\x80\xaf",
    b"\xf4\x90\x80\x80",
    b"\xf0\x9f\x98 ",
    b"x\x80",
]
_UNK_NUM_OK = [
    b"0",
    b"-0",
    b"1",
    b"-1",
    b"12.5",
    b"-0.0",
    b"0.000001",
    b"1e5",
    b"1E+5",
    b"1e-5",
    b"-0.0e-0",
    b"2.5E05",
    b"1e999",
    b"-1e999",
    b"1e-999",
    b"1.5e400",
    b"9" * 400,
    b"-" + b"9" * 400,
    b"1e" + b"9" * 50,
    b"123456789012345678901234567890.123456789012345678901234567890",
    b"9223372036854775808",
    b"18446744073709551616",
]
_UNK_NUM_BAD = [
    b"01",
    b"-01",
    b"00",
    b"-",
    b"1.",
    b".5",
    b"1e",
    b"1e+",
    b"1E-",
    b"+1",
    b"1.e5",
    b"1e5.5",
    b"0x10",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1 2",
    b"--1",
    b"1_000",
]
_UNK_LIT_OK = [b"true", b"false", b"null"]
_UNK_LIT_BAD = [b"nul", b"nulll", b"True", b"tru", b"falsee", b"NULL", b"t", b"undefined", b"'x'"]
_UNK_KEYS_OK = [
    b"span_id",
    b"tenant",
    b"meta",
    b"x",
    b"",
    b"Ts",
    b"ts ",
    b" ts",
    b"event_idx",
    b"EVENT_ID",
    b"schema_version",
    b"latency-ms",
    b"_",
    b"a" * 200,
    "日本".encode(),
    "é".encode(),
    b"\x7f",
    b"\xf0\x9f\x98\x80",
]
_UNK_KEYS_STRICT = [b"\\u0078", b"tr\\nace", b"\\/", b"\xff", b"\xc3", b"\xed\xa0\x80"]
_UNK_KEYS_SLOW = [b"\\u0074s", b"ev\\u0065nt_id", b"\\u0073chema"]  # escaped field names
_UNK_KEYS_BAD = [b"\x00", b"a\x01", b"\\ud800", b"\\q"]


def _unk_ws(rnd: random.Random) -> tuple[bytes, int]:
    if rnd.random() < 0.004:
        return rnd.choice([b"\x0b", b"\x0c", b"\xc2\xa0", b"\x00"]), BAD
    return rnd.choice([b"", b"", b"", b" ", b"\n", b"\t", b"\r\n  "]), OK


def _unk_str(rnd: random.Random, pieces: int = 3) -> tuple[bytes, int]:
    parts, kind = [], OK
    for _ in range(rnd.randrange(pieces + 1)):
        r = rnd.random()
        pool, k = (
            (_UNK_STR_OK, OK) if r < 0.94 else (_UNK_STR_BAD, BAD) if r < 0.97 else (_UNK_STR_STRICT, STRICT)
        )
        parts.append(rnd.choice(pool))
        kind = max(kind, k)
    return b'"' + b"".join(parts) + b'"', kind


def _unk_key(rnd: random.Random) -> tuple[bytes, int]:
    r = rnd.random()
    if r < 0.9:
        return _js_bytes(rnd.choice(_UNK_KEYS_OK)), OK
    if r < 0.94:
        return _js_bytes(rnd.choice(_UNK_KEYS_STRICT)), STRICT
    if r < 0.97:
        return _js_bytes(rnd.choice(_UNK_KEYS_SLOW)), SLOW
    return _js_bytes(rnd.choice(_UNK_KEYS_BAD)), BAD


def _js_bytes(content: bytes) -> bytes:
    return b'"' + content + b'"'


def _nested(depth: int, kind: str) -> bytes:
    """``depth`` containers around a number, all arrays, all objects or alternating."""
    opens, closes = [], []
    for i in range(depth):
        arr = kind == "array" or (kind == "mixed" and i % 2 == 0)
        opens.append(b"[" if arr else b'{"k":')
        closes.append(b"]" if arr else b"}")
    return b"".join(opens) + b"1" + b"".join(reversed(closes))


def _unk_value(rnd: random.Random, depth: int = 0) -> tuple[bytes, int]:
    """A JSON value of any kind (mostly valid) and what the scanner must do with it."""
    r = rnd.random()
    if r < 0.25:
        return _unk_str(rnd)
    if r < 0.4:
        return (rnd.choice(_UNK_NUM_OK), OK) if rnd.random() < 0.95 else (rnd.choice(_UNK_NUM_BAD), BAD)
    if r < 0.5:
        return (rnd.choice(_UNK_LIT_OK), OK) if rnd.random() < 0.95 else (rnd.choice(_UNK_LIT_BAD), BAD)
    if r < 0.53 and depth == 0:  # deep nesting around the limit
        d = rnd.choice([SKIP_DEPTH - 1, SKIP_DEPTH, SKIP_DEPTH + 1, SKIP_DEPTH + 2, 200])
        return _nested(d, rnd.choice(["array", "object", "mixed"])), OK if d <= SKIP_DEPTH else STRICT
    if depth >= 4:
        return b"null", OK
    is_obj = r >= 0.76
    items, kind = [], OK
    for _ in range(rnd.choice([0, 0, 1, 2, 3, 5])):
        w1, k1 = _unk_ws(rnd)
        v, kv = _unk_value(rnd, depth + 1)
        w2, k2 = _unk_ws(rnd)
        if is_obj:
            key, kk = _unk_key(rnd)
            # inside a skipped object every key is skipped: escapes are fine there
            kk = OK if kk in (STRICT, SLOW) and b"\\" in key else kk
            items.append(w1 + key + w2 + b":" + v)
            kind = max(kind, k1, k2, kk, kv)
        else:
            items.append(w1 + v + w2)
            kind = max(kind, k1, k2, kv)
    body = b",".join(items)
    if rnd.random() < 0.02:  # a broken container
        broken = rnd.choice(
            [
                b"[1,]",
                b"[,1]",
                b"[1 2]",
                b"[1:2]",
                b"[",
                b'{"a":1,}',
                b"{1:2}",
                b'{"a" 1}',
                b'{"a":}',
                b"{'a':1}",
                b'{"a":1',
                b'{"a"}',
                b"[}",
                b"{]",
                b'{,"a":1}',
            ]
        )
        return broken, BAD
    ws, kw = _unk_ws(rnd)
    return ((b"{" + ws + body + b"}") if is_obj else (b"[" + ws + body + b"]")), max(kind, kw)


def message_with_unknown(rnd: random.Random) -> tuple[bytes, int]:
    """A clean turn with 1-6 unknown fields placed first, last or between known fields."""
    fields = _REQUIRED + [f for f in _OPTIONAL if rnd.random() < 0.5]
    rnd.shuffle(fields)
    pairs: list[tuple[bytes, bytes]] = [(_js(f).encode(), _clean(rnd, f)) for f in fields]
    kind = OK
    for _ in range(rnd.choice([1, 1, 2, 3, 6])):
        key, kk = _unk_key(rnd)
        value, kv = _unk_value(rnd)
        where = rnd.choice(["first", "last", "between"])
        pos = 0 if where == "first" else len(pairs) if where == "last" else rnd.randrange(1, len(pairs))
        pairs.insert(pos, (key, value))
        kind = max(kind, kk, kv)
        if rnd.random() < 0.1:  # the same unknown key again (msgspec skips both)
            value, kv = _unk_value(rnd)
            pairs.insert(rnd.randrange(len(pairs) + 1), (key, value))
            kind = max(kind, kv)
    spaced = rnd.random() < 0.5
    ws = (lambda: rnd.choice(_WS).encode()) if spaced else (lambda: b"")
    out = ws() + b"{" + b",".join(ws() + k + ws() + b":" + ws() + v + ws() for k, v in pairs) + b"}" + ws()
    return out, kind


def _msgspec_accepts(raw: bytes) -> bool:
    try:
        DECODER.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):  # the latter: e.g. bad UTF-8 in an escaped "schema"
        return False
    return True


def test_unknown_fields_generated() -> None:
    rnd = random.Random(4242)
    made = [message_with_unknown(rnd) for _ in range(12_000)]
    values = [raw for raw, _ in made]
    fast: set[int] = set()
    for k in range(0, len(values), 1_000):
        fast.update(k + i for i in check(values[k : k + 1_000]).fast)
    counts = {OK: 0, STRICT: 0, SLOW: 0, BAD: 0}
    for i, (raw, kind) in enumerate(made):
        counts[kind] += 1
        if kind == OK:
            assert i in fast, f"slow but every unknown field is plain JSON msgspec skips: {raw!r}"
        else:
            assert i not in fast, raw
        if kind == BAD:
            assert not _msgspec_accepts(raw), f"msgspec accepts a part labelled BAD: {raw!r}"
        elif kind == STRICT:
            assert _msgspec_accepts(raw), f"msgspec rejects a part labelled STRICT: {raw!r}"
    assert min(counts.values()) > 100 and counts[OK] > 0.4 * len(made), counts


def test_unknown_fields_mutated() -> None:
    rnd = random.Random(99)
    made = (message_with_unknown(rnd) for _ in range(4_000))
    seeds = [raw for raw, kind in made if kind == OK]  # fast before the mutation
    values = [mutate(rnd, rnd.choice(seeds)) for _ in range(10_000)]
    fast = 0
    for k in range(0, len(values), 2_000):
        fast += len(check(values[k : k + 2_000]).fast)
    assert fast > 1_000


def test_unknown_fields_in_mixed_batches() -> None:
    # mixed batches: the key-order guess carried from message to message meets unknown keys anywhere
    rnd = random.Random(7)
    for _ in range(200):
        batch = [message_with_unknown(rnd)[0] if rnd.random() < 0.5 else message(rnd) for _ in range(30)]
        check(batch)


_META = b'"meta":{"a":[1,2.5,{"b":null}],"c":"x\\"y"}'


def test_realistic_events_with_unknown_fields_are_fast(realistic: list[bytes]) -> None:
    rnd = random.Random(12)
    turns = [raw for raw in realistic if b'"watcher.turn/v1"' in raw]
    values = []
    for i, raw in enumerate(turns):
        assert raw[:1] == b"{" and raw.rstrip()[-1:] == b"}"
        trace = b'"trace_id":"%032x",' % rnd.getrandbits(128)
        body = raw.rstrip()[1:-1]
        if i % 3 == 0:  # trace_id first, meta last
            values.append(b"{" + trace + body + b"," + _META + b"}")
        elif i % 3 == 1:  # both first
            values.append(b"{" + trace + _META + b"," + body + b"}")
        else:  # both in the middle, after the second field
            a, b = body.split(b',"ts":', 1)
            values.append(b"{" + a + b"," + trace + _META + b',"ts":' + b + b"}")
    fast = 0
    for k in range(0, len(values), 2_000):
        s = check(values[k : k + 2_000])
        fast += len(s.fast)
        assert s.trace_id is not None and all(t is not None and len(t) == 32 for t in s.trace_id)
    assert fast >= 0.99 * len(values), f"only {fast} of {len(values)} turns with unknown fields were fast"


@pytest.mark.parametrize(
    "extra",
    [
        b'"span_id":"00f067aa0ba902b7"',
        _META,
        b'"x":1e999,"y":-1e-999,"z":' + b"9" * 400,
        b'"x":"\\ud83d\\ude00\\u0000\\/\\b"',
        b'"x":1,"x":"again","x":{"x":[]}',  # a repeated unknown key: msgspec skips each
        b'"x":{"a":1,"a":2}',
        b'"":null',
        b'"x":[]',
        b'"x":{}',
        b'"x" : [ 1 , { "a" : null } , [ ] ]',
        b'"x":' + _nested(SKIP_DEPTH, "array"),
        b'"x":' + _nested(SKIP_DEPTH, "object"),
        b'"Event_id":"x","ts ":1,"schema_version":2',
        '"日本":"é","\x7f":true'.encode(),
    ],
)
def test_unknown_fields_taken(extra: bytes) -> None:
    for raw in (b"{" + extra + b"," + BASE + b',"ts":0}', b"{" + BASE + b',"ts":0,' + extra + b"}"):
        s = check([raw])
        assert s.fast == [0], raw
        assert s.event_id == ["e"] and s.route_keys == [("a", "prod", "v", None)]


@pytest.mark.parametrize(
    "extra, msgspec_accepts",
    [
        (b'"x":"\\ud800"', False),  # lone surrogates
        (b'"x":"\\udc00"', False),
        (b'"x":"\\ud800\\u0041"', False),
        (b'"x":"\\q"', False),
        (b'"x":"a\x01"', False),
        (b'"x":01', False),
        (b'"x":1.', False),
        (b'"x":NaN', False),
        (b'"x":[1,]', False),
        (b'"x":{"a":1,}', False),
        (b'"x":nul', False),
        (b'"x":' + _nested(SKIP_DEPTH + 1, "array"), True),  # deliberately stricter: depth
        (b'"x":"\xff"', True),  # invalid UTF-8: msgspec does not check it in a skipped value
        (b'"\xff":1', True),
        (b'"\\u0078":1', True),  # an escaped key
        (b'"\\u0074s":1', True),  # ... which may spell a field name (here ts again: last wins)
    ],
)
def test_unknown_fields_left_to_msgspec(extra: bytes, msgspec_accepts: bool) -> None:
    raw = b"{" + BASE + b',"ts":0,' + extra + b"}"
    assert not check([raw]).fast
    assert _msgspec_accepts(raw) is msgspec_accepts


def test_enough_messages_were_checked() -> None:
    # runs after the tests above (file order): the soundness claim rests on >= 20,000 messages
    assert EXERCISED["messages"] >= 20_000, EXERCISED


# ---- targeted rules ------------------------------------------------------------------------------------

BASE = b'"event_id":"e","agent_id":"a","version":"v","conversation_id":"c"'


def one(extra: bytes) -> tuple[bool, Scan]:
    s = check([b"{" + BASE + b"," + extra + b"}"])
    return bool(s.fast), s


@pytest.mark.parametrize(
    "ts, expected",
    [
        (b'"2020-01-01T00:00:00.5Z"', 1577836800.5),
        (b'"2020-01-01T00:00:00.05Z"', 1577836800.05),
        (b'"2020-01-01T05:30:00+05:30"', 1577836800.0),
        (b'"2019-12-31T23:00:00-01:00"', 1577836800.0),
        (b'"2020-01-01T00:00:00-00:00"', 1577836800.0),
        (b'"2000-02-29T00:00:00Z"', 951782400.0),
        (b'"1969-12-31T23:59:59.999999Z"', -1e-06),
        (b"1577836800", 1577836800.0),
        (b"1.5e9", 1.5e9),
        (b"-62135596800", -62135596800.0),
    ],
)
def test_timestamps_taken(ts: bytes, expected: float) -> None:
    fast, s = one(b'"ts":' + ts)
    assert fast and s.ts == [expected]


@pytest.mark.parametrize(
    "ts",
    [
        b'"2020-01-01t00:00:00Z"',
        b'"2020-01-01T00:00:00z"',
        b'"2020-01-01 00:00:00Z"',
        b'"2020-01-01T00:00:00.1234567Z"',
        b'"2020-01-01T00:00:60Z"',
        b'"2020-01-01T00:00:00"',
        b'"1900-02-29T00:00:00Z"',
        b'"2020-01-01T00:00:00+24:00"',
        b'"0001-01-01T00:00:00Z"',  # |us| >= 2^53
        b"-0",
        b"-0.0",
        b"253402300800",
        b"-62135596801",
        b"1e400",
        b"1700000000.12345678901",  # more digits than the scanner converts
        b"null",
        b'"x"',
    ],
)
def test_timestamps_left_to_msgspec(ts: bytes) -> None:
    fast, _ = one(b'"ts":' + ts)
    assert not fast


@pytest.mark.parametrize(
    "extra",
    [
        b'"ts":0,"\\u0078":1',  # an escaped key (it could spell a field name)
        b'"ts":0,"ts":1',
        b'"ts":0,"turn":1.0',
        b'"ts":0,"turn":-0',
        b'"ts":0,"latency_ms":-0',
        b'"ts":0,"quality":1.00000000000001',
        b'"ts":0,"escalated":null',
        b'"ts":0,"environment":null',
        b'"ts":0,"segment":{"a":"1","a":"2"}',
        b'"ts":0,"arm":"Canary"',
        b'"ts":0,"schema":"watcher.turn/v2"',
        b'"ts":0,"event_id":"\\u0065"',
        b'"ts":0,"turn":9223372036854775807',
        b'"ts":0,"segment":{"a":"' + b"x" * 65 + b'"}',
        b'"ts":0,"tokens_in":1e2',
        b'"ts":0,"cost_usd":1e309',
    ],
)
def test_unusual_messages_are_slow(extra: bytes) -> None:
    fast, _ = one(extra)
    assert not fast


@pytest.mark.parametrize(
    "extra",
    [
        b'"ts":1700000000.1234567',
        b'"ts":1795766400.123456789',
        b'"ts":0,"latency_ms":1234567890123456',
        b'"ts":0,"latency_ms":0.30000000000000004',
        b'"ts":0,"quality":0.7333333333333333',
        b'"ts":0,"quality":9.999999999999999e-1',
        b'"ts":0,"latency_ms":1e23',  # 10^23 is no exact double: the exact case does not apply
    ],
)
def test_numbers_of_16_to_19_digits_are_fast_and_exact(extra: bytes) -> None:
    """A double's shortest form has up to 17 digits (an OTLP turn's score, a computed average): such
    numbers are converted by a correctly rounding strtod, and ``check`` holds each to msgspec's."""
    fast, _ = one(extra)
    assert fast


def test_columns_of_a_full_message() -> None:
    raw = (
        b' {"schema":"watcher.turn/v1", "event_id":"e-1","ts":"2026-11-27T08:00:00.242Z","agent_id":"bot",'
        b'"environment":"staging","version":"v2","arm":"canary","conversation_id":"c-9","turn":3,'
        b'"segment":{"tier":"gold","lang":"fr"},"latency_ms":203.2,"quality":0.718,"escalated":true,'
        b'"error":false,"compliance_violation":true,"flags":{"p":"on"},"tokens_in":488,"tokens_out":null,'
        b'"cost_usd":0.0023}\n'
    )
    s = check([raw])
    assert s.fast == [0] and s.slow == []
    assert s.latency == [203.2] and s.quality == [0.718] and s.turn == [3] and s.bits == bytes([5])
    assert s.route_keys == [("bot", "staging", "v2", "canary")]
    assert s.segments == [{"tier": "gold", "lang": "fr"}] and s.flag_dicts == [{"p": "on"}]
    # defaults: environment prod, arm None, turn 0, NaN for absent numbers, {} for absent objects
    s = check([b"{" + BASE + b',"ts":0}'])
    assert s.route_keys == [("a", "prod", "v", None)] and s.turn == [0] and s.bits == b"\x00"
    assert (
        math.isnan(s.latency[0]) and math.isnan(s.quality[0]) and s.segments == [{}] and s.flag_dicts == [{}]
    )


def test_random_stamps_and_numbers_are_fast_and_bitwise_equal() -> None:
    rnd = random.Random(5)
    values = []
    for i in range(4_000):
        dt = datetime(1700, 1, 1) + timedelta(seconds=rnd.randrange(0, 550 * 365 * 86400))
        frac = "." + str(rnd.randrange(10**6)).zfill(6)[: rnd.randrange(1, 7)] if i % 3 else ""
        off = rnd.randrange(-23 * 60 - 59, 23 * 60 + 60)
        zone = "Z" if i % 5 == 0 else f"{'+' if off >= 0 else '-'}{abs(off) // 60:02d}:{abs(off) % 60:02d}"
        mant = rnd.randrange(10 ** rnd.randrange(1, 16))
        exp = rnd.randrange(-22, 23) if i % 2 else 0
        lat = f"{mant}e{exp}" if i % 4 else f"{mant // 1000}.{mant % 1000:03d}"
        q = f"0.{rnd.randrange(10**14):014d}"
        values.append(
            b"{"
            + BASE
            + f',"ts":"{dt:%Y-%m-%dT%H:%M:%S}{frac}{zone}","latency_ms":{lat},"quality":{q}}}'.encode()
        )
    s = check(values)
    assert len(s.fast) == len(values)


# ---- robustness: no crash, no leak ----------------------------------------------------------------------


class BytesSub(bytes):
    pass


def test_odd_inputs_do_not_crash() -> None:
    valid = b"{" + BASE + b',"ts":0}'
    values: list[Any] = [
        None,
        "text",
        3,
        bytearray(valid),
        memoryview(valid),
        BytesSub(valid),
        b"",
        b" ",
        b"{",
        b"}",
        valid,
        b"[" * 100_000,
        b"{" + b'"a":{' * 50_000,
        b"{" + BASE + b',"ts":0' + b" " * 1_000_000 + b"}",
        b'{"event_id":"' + b"x" * 2_000_000,
        valid[:-1],
        b"\x00" * 64,
        valid + b"\x00",
        b"{" + BASE + b',"ts":0,"segment":' + b'{"a":' * 10_000 + b"}",
    ]
    s = check(values)
    assert s.fast == [10]  # the exact bytes only: not bytearray, memoryview or a bytes subclass
    assert check([]).fast == []
    assert check([b'{"event_id":"' + b"x" * 2_000_000 + b'"}', b"[" * 1_000_000], max_bytes=10**8).fast == []
    # the size limit: a message of exactly max_bytes is allowed
    assert check([valid], max_bytes=len(valid)).fast == [0]
    assert check([valid], max_bytes=len(valid) - 1).fast == []
    assert check([valid], max_bytes=-1).fast == []
    assert check((valid, valid)).fast == [0, 1]  # any sequence
    with pytest.raises(TypeError):
        _turnscan.scan([valid])  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _turnscan.scan(None, 10)
    with pytest.raises(TypeError):
        _turnscan.scan([valid], "10")


def test_no_leak_over_many_scans(realistic: list[bytes]) -> None:
    # b"{ ", not b"{": one-byte bytes are interpreter-wide singletons whose reference count moves
    # with whatever else the process runs
    batch = realistic[:500] + [b"{ ", None, b'{"a":1}']
    refs_in = [sys.getrefcount(v) for v in batch if v is not None]
    consts = ["prod", "baseline", "canary", "shadow", "live"]
    for _ in range(20):
        _turnscan.scan(batch, MAX)
    gc.collect()
    # common interned strings: other code holds and drops references to them too (a collection run
    # in between frees some), so what is checked is that 330 scans do not add one reference each
    refs_const = [sys.getrefcount(sys.intern(c)) for c in consts]
    tracemalloc.start()
    try:
        for _ in range(30):
            _turnscan.scan(batch, MAX)
        first, _ = tracemalloc.get_traced_memory()
        for _ in range(300):
            out = _turnscan.scan(batch, MAX)
            del out
        second, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert second - first < 64 * 1024, (first, second)
    assert [sys.getrefcount(v) for v in batch if v is not None] == refs_in
    grown = [sys.getrefcount(sys.intern(c)) - before for c, before in zip(consts, refs_const)]
    assert all(g < 100 for g in grown), grown


def test_results_do_not_share_state_across_calls(realistic: list[bytes]) -> None:
    batch = realistic[:200]
    a = _turnscan.scan(batch, MAX)
    b = _turnscan.scan(batch, MAX)
    assert a == b
    assert all(x is not y for x, y in zip(a[10], b[10]))  # fresh route tuples per call
    route = a[10][0]
    n = sys.getrefcount(route)
    for _ in range(50):
        _turnscan.scan(batch, MAX)
    assert sys.getrefcount(route) == n


# ---- interning ------------------------------------------------------------------------------------------


def test_interning_shares_objects() -> None:
    def msg(i: int, agent: str, version: str, seg: str, arm: str = '"canary"', ws: str = "") -> bytes:
        return (
            (
                f'{{"event_id":"e{i}","ts":{i},"agent_id":"{agent}","version":"{version}","arm":{arm},'
                f'"conversation_id":"c{i}","segment":{seg}}}'
            )
            .replace(",", "," + ws)
            .encode()
        )

    values = [
        msg(0, "a", "v1", '{"t":"g"}'),
        msg(1, "a", "v1", '{"t":"g"}'),
        msg(2, "a", "v2", '{"t":"s"}'),
        msg(3, "b", "v1", '{"t":"g"}'),
        msg(4, "a", "v1", '{"t":"g"}', arm="null"),
        msg(5, "a", "v1", '{"t":"g"}'),
        msg(6, "a", "v1", '{ "t":"g"}', ws=" "),
        msg(7, "a", "v2", "{}"),
    ]
    values.append(
        b'{"event_id":"e8","ts":8,"agent_id":"a","version":"v1","arm":"canary","conversation_id":"c8"}'
    )
    s = check(values)
    assert len(s.fast) == len(values)
    assert s.route_code == [0, 0, 1, 2, 3, 0, 0, 1, 0]
    assert s.route_keys == [
        ("a", "prod", "v1", "canary"),
        ("a", "prod", "v2", "canary"),
        ("b", "prod", "v1", "canary"),
        ("a", "prod", "v1", None),
    ]
    # one dict per distinct raw text: rows 0, 1, 3, 4, 5 share one object; row 6 spells it with a space
    assert s.segment_code == [0, 0, 1, 0, 0, 0, 2, 3, 3]
    assert s.segments[0] == s.segments[2] == {"t": "g"} and s.segments[0] is not s.segments[2]
    assert s.segments[3] == {}  # "{}" and an absent segment share the empty dict
    assert s.flag_code == [0] * 9 and s.flag_dicts == [{}]


def test_interning_tables_grow_and_stay_exact() -> None:
    rnd = random.Random(9)
    values = []
    for i in range(6_000):
        a, v, seg = rnd.randrange(60), rnd.randrange(50), rnd.randrange(3_000)
        values.append(
            f'{{"event_id":"e{i}","ts":{i},"agent_id":"a{a}","version":"v{v}","conversation_id":"c",'
            f'"segment":{{"s":"{seg}"}}}}'.encode()
        )
    s = check(values)
    assert len(s.fast) == len(values)
    assert len(s.route_keys) == len({(k[0], k[2]) for k in s.route_keys}) > 1_000
    assert len(s.segments) == len({d["s"] for d in s.segments}) > 2_000
    for j, i in enumerate(s.fast):
        assert s.segments[s.segment_code[j]] == json.loads(values[i])["segment"]
