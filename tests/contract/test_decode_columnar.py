"""The columnar decode path gives exactly what the object path gives: batch by batch, and engine-wide.

Run with the Python reference scanner (always) and with the C scanner when it is built (under CI it
must be). The reference scanner is sound by construction, so these tests check the plumbing; the C
scanner's own soundness is tests/test_turnscan.py's job, and these tests check it once more end to end.
"""

from __future__ import annotations

import dataclasses
import random
import types
from typing import Any

import msgspec
import numpy as np
import pytest

from watcher.config import load_settings
from watcher.contract import RATE_METRICS
from watcher.contract import columnar as decode_columnar
from watcher.contract.columnar import LazyTurns, reference_scan
from watcher.contract.columns import renumber
from watcher.contract.decode import DecodedBatch, decode_batch
from watcher.contract.dedup import Deduplicator
from watcher.engine import Engine
from watcher.sim.presets import PRESETS, STRATEGY_PRESETS
from watcher.sim.traffic import generate

SCANNERS = ["reference", "native"]


@pytest.fixture(params=SCANNERS)
def scanner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "native":
        native = decode_columnar.default_scanner() if decode_columnar.available() else None
        if native is None:
            import os

            if os.environ.get("CI"):
                pytest.fail("the C scanner watcher.contract._turnscan is not built (CI builds it)")
            pytest.skip("watcher.contract._turnscan is not built")
    else:
        monkeypatch.setattr(decode_columnar, "_native", types.SimpleNamespace(scan=reference_scan))
    return str(request.param)


def _object_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_columnar, "_native", None)


def _turn(i: int, **over: Any) -> dict[str, Any]:
    t: dict[str, Any] = {
        "schema": "watcher.turn/v1",
        "event_id": f"e{i}",
        "ts": 1_700_000_000.0 + i * 0.5,
        "agent_id": "bot" if i % 5 else "other-bot",
        "environment": "prod",
        "conversation_id": f"c{i // 3}",
        "turn": i % 3,
        "version": "v2" if i % 4 == 0 else "v1",
        "arm": "canary" if i % 4 == 0 else "baseline",
        "segment": {"intent": ["billing", "tech", "other"][i % 3], "language": ["en", "fr"][i % 2]},
        "latency_ms": 100.0 + i,
        "quality": (i % 10) / 10,
        "escalated": i % 7 == 0,
        "error": i % 11 == 0,
        "compliance_violation": i % 13 == 0,
    }
    t.update(over)
    return {k: v for k, v in t.items() if v is not _DROP}


_DROP = object()


def _mixed_batch(rng: random.Random, n: int, start: int) -> list[Any]:
    """Valid turns in every accepted form, duplicates, markers and rejects, shuffled."""
    out: list[Any] = []
    for i in range(start, start + n):
        kind = rng.random()
        if kind < 0.70:
            t = _turn(i)
        elif kind < 0.75:
            t = _turn(i, ts=f"2023-11-14T22:{i % 60:02d}:{(i * 7) % 60:02d}.{i % 1000:03d}+01:00")
        elif kind < 0.80:
            t = _turn(i, latency_ms=None, quality=_DROP, arm=_DROP, environment=_DROP, segment=_DROP)
        elif kind < 0.84:
            t = _turn(i, flags={"new_router": rng.choice(["on", "off"])})
        elif kind < 0.88:
            t = _turn(rng.randrange(max(start, 1)))  # a duplicate id (maybe of an earlier batch)
        elif kind < 0.91:
            out.append(
                msgspec.json.encode(
                    {
                        "schema": "watcher.deployment/v1",
                        "event_id": f"d{i}",
                        "ts": 1_700_000_000.0 + i,
                        "agent_id": "bot",
                        "action": "paused",
                    }
                )
            )
            continue
        elif kind < 0.95:
            out.append(rng.choice([b"{", b"[]", b'{"event_id": 3}', None, b"\xff\xfe", b'{"ts": NaN}']))
            continue
        else:
            t = _turn(i, quality=1.5 if i % 2 else -1)  # out of range
        out.append(msgspec.json.encode(t))
    return out


def _same(a: DecodedBatch, b: DecodedBatch) -> None:
    assert list(a.turns) == list(b.turns)
    assert a.deployments == b.deployments
    assert a.duplicates == b.duplicates
    assert [(r.reason, r.detail, r.raw, r.origin) for r in a.rejected] == [
        (r.reason, r.detail, r.raw, r.origin) for r in b.rejected
    ]
    ca, cb = a.columns, b.columns
    for name in ("ts", "latency", "quality", "first_turn", "route_code"):
        np.testing.assert_array_equal(getattr(ca, name), getattr(cb, name), err_msg=name)
    for m in RATE_METRICS:
        np.testing.assert_array_equal(ca.event(m.name), cb.event(m.name), err_msg=m.name)
    for name in ("conversation_id", "segment", "flags", "route_keys"):
        assert getattr(ca, name) == getattr(cb, name), name
    np.testing.assert_array_equal(ca.route_first, cb.route_first)


def test_batches_decode_the_same_on_both_paths(scanner: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    batches = [_mixed_batch(rng, rng.randrange(1, 300), k * 1000) for k in range(40)]
    origins = [[f"t/0@{k}-{i}" for i in range(len(b))] for k, b in enumerate(batches)]
    fast_dedup, slow_dedup = Deduplicator(capacity=500), Deduplicator(capacity=500)
    columnar = [decode_batch(b, fast_dedup, origins=o) for b, o in zip(batches, origins)]
    assert any(isinstance(c.turns, LazyTurns) for c in columnar), "the columnar path was never taken"
    _object_path(monkeypatch)
    objects = [decode_batch(b, slow_dedup, origins=o) for b, o in zip(batches, origins)]
    for c, o in zip(columnar, objects):
        _same(c, o)


def test_a_valid_turn_the_scanner_does_not_read_sends_the_batch_to_the_object_path(
    scanner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    odd = msgspec.json.encode(_turn(2)).replace(b'"e2"', b'"\\u00652"')  # an escape: valid, not scanned
    if scanner == "reference":  # the reference reads everything msgspec reads: make it decline this one

        def declining(values: list[Any], max_bytes: int) -> Any:
            return reference_scan([None if v is odd else v for v in values], max_bytes)

        monkeypatch.setattr(decode_columnar, "_native", types.SimpleNamespace(scan=declining))
    batch = decode_batch([msgspec.json.encode(_turn(1)), odd, msgspec.json.encode(_turn(3))], Deduplicator())
    assert not isinstance(batch.turns, LazyTurns)
    assert [t.event_id for t in batch.turns] == ["e1", "e2", "e3"]


def test_lazy_turns_decode_on_demand_and_keep_float_ts(scanner: str) -> None:
    raws = [
        msgspec.json.encode(_turn(i, ts="2023-11-14T22:13:20.250Z" if i == 1 else 5.0 + i)) for i in range(6)
    ]
    batch = decode_batch(raws, Deduplicator())
    turns = batch.turns
    assert isinstance(turns, LazyTurns) and len(turns) == 6
    assert turns[1].ts == 1700000000.25 and type(turns[1].ts) is float
    assert turns[-1].event_id == "e5"
    with pytest.raises(IndexError):
        turns[6]
    assert [t.event_id for t in turns[2:4]] == ["e2", "e3"]
    sub = turns.take(np.array([5, 0]))
    assert [t.event_id for t in sub] == ["e5", "e0"]
    assert turns == list(turns) and turns != list(turns)[:-1]


def test_columns_taken_keep_route_codes_in_order_of_first_appearance(scanner: str) -> None:
    raws = [msgspec.json.encode(_turn(i)) for i in range(40)]
    cols = decode_batch(raws, Deduplicator()).columns
    idx = np.array([i for i in range(40) if i % 4], np.intp)  # drops every v2 turn
    sub = cols.take(idx)
    assert [tuple(k) for k in sub.route_keys] == list(
        dict.fromkeys(
            (("other-bot" if i % 5 == 0 else "bot"), "prod", "v1", "baseline") for i in idx.tolist()
        )
    )
    assert sub.route_code[0] == 0 and np.all(np.diff(np.maximum.accumulate(sub.route_code)) <= 1)
    assert sub.segment == [cols.segment[i] for i in idx.tolist()]


def test_renumber_orders_codes_by_first_appearance() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        keys = [f"k{j}" for j in range(rng.integers(1, 8))]
        code = rng.integers(0, len(keys), rng.integers(0, 30))
        new, new_keys = renumber(code, keys)
        assert [new_keys[c] for c in new.tolist()] == [keys[c] for c in code.tolist()]
        assert new_keys == list(dict.fromkeys(keys[c] for c in code.tolist()))


def _engine_run(lines: list[bytes], batch: int) -> tuple[dict[str, Any], list[Any], list[Any]]:
    engine = Engine(load_settings(environ={}))
    decisions, rejected = [], []
    for k in range(0, len(lines), batch):
        r = engine.process(lines[k : k + batch])
        decisions += [d.to_dict() for d in r.decisions]
        rejected += [(x.reason, x.detail) for x in r.rejected]
    return engine.to_state(), decisions, rejected


@pytest.mark.parametrize("preset", ["demo", "flag_errors_x4", "blue_green_regression"])
def test_the_engine_ends_in_the_same_state_on_both_paths(
    scanner: str, preset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = {**PRESETS, **STRATEGY_PRESETS}[preset]
    scenario = dataclasses.replace(base, duration_s=min(base.duration_s, base.switch_s + 1500.0))
    lines = list(generate(scenario))
    rng = random.Random(11)
    lines += [lines[rng.randrange(len(lines))] for _ in range(50)]  # redelivered duplicates
    lines.insert(len(lines) // 2, lines[10].replace(b'"ts":"', b'"ts":"1'))  # a bad timestamp
    state, decisions, rejected = _engine_run(lines, 1000)
    _object_path(monkeypatch)
    state_o, decisions_o, rejected_o = _engine_run(lines, 1000)
    assert decisions == decisions_o and rejected == rejected_o
    assert msgspec.json.encode(state) == msgspec.json.encode(state_o)
    if preset == "demo":
        assert decisions, "the demo's regression is found (otherwise this compares two idle engines)"


def test_a_batch_of_turns_with_fields_outside_the_contract_is_decoded_once_per_message(
    scanner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unknown fields are part of the contract (ignored): when the scanner declines such turns, each
    is decoded by msgspec once on the object path, plus one cheap check, not classified twice first."""
    raws = [msgspec.json.encode(_turn(i, trace_id=f"t{i}")) for i in range(50)]
    calls = []
    real = decode_columnar.reference_scan

    def declining(values: list[Any], max_bytes: int) -> Any:
        calls.append(len(values))
        return real([None] * len(values), max_bytes)  # everything slow

    monkeypatch.setattr(decode_columnar, "_native", types.SimpleNamespace(scan=declining))
    classified = []
    import watcher.contract.decode as decode_module

    real_slow = decode_module._decode_slow
    monkeypatch.setattr(
        decode_module, "_decode_slow", lambda *a, **k: classified.append(1) or real_slow(*a, **k)
    )
    batch = decode_batch(raws, Deduplicator())
    assert calls == [50] and not classified
    assert [t.event_id for t in batch.turns] == [f"e{i}" for i in range(50)]


def test_fields_outside_the_contract_stay_on_the_columnar_path(scanner: str) -> None:
    """The contract ignores unknown fields; the scanner skips them (validated), so the batch stays fast."""
    raws = [
        msgspec.json.encode(_turn(i, trace_id=f"t{i}", meta={"a": [1, 2.5, {"b": None}], "c": 'x"y'}))
        for i in range(20)
    ]
    batch = decode_batch(raws, Deduplicator())
    assert isinstance(batch.turns, LazyTurns)
    assert [t.event_id for t in batch.turns] == [f"e{i}" for i in range(20)]


def test_columns_are_writable_arrays_as_on_the_object_path(scanner: str) -> None:
    cols = decode_batch([msgspec.json.encode(_turn(i)) for i in range(8)], Deduplicator()).columns
    for name in ("ts", "latency", "quality", "first_turn", "route_code"):
        assert getattr(cols, name).flags.writeable, name
    for m in RATE_METRICS:
        assert cols.event(m.name).flags.writeable, m.name
