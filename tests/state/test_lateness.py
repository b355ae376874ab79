"""Allowed lateness: out-of-order turns within it are counted where they belong, later ones are
dead-lettered as too_late with their bytes, and the watermarks survive a checkpoint."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from tests.support.state import roundtrip
from watcher.config import load_settings
from watcher.contract.decode import decode_batch
from watcher.contract.dedup import Deduplicator
from watcher.contract.schema import RejectReason
from watcher.engine import Engine
from watcher.kafka.deadletter import FileDeadLetters
from watcher.kafka.messages import FileSource
from watcher.service.compose import build_daemon
from watcher.service.markers import NullMarkerPublisher
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate
from watcher.state.lateness import LatenessFilter
from watcher.storage.decisions import MemoryDecisionLog

T0 = 1_795_766_400.0


def turn(
    eid: str,
    ts: float,
    *,
    agent: str = "bot",
    conv: str | None = None,
    n: int = 0,
    rfc: bool = False,
    quality: float = 0.8,
) -> bytes:
    stamp: Any = ts
    if rfc:  # the RFC 3339 form: the bytes dead-lettered must be these, not a re-encoding
        from watcher.contract.verdicts import rfc3339

        stamp = rfc3339(ts)
    return json.dumps(
        {
            "schema": "watcher.turn/v1",
            "event_id": eid,
            "ts": stamp,
            "agent_id": agent,
            "version": "v1",
            "conversation_id": conv or f"c-{eid}",
            "turn": n,
            "latency_ms": 100.0,
            "quality": quality,
        }
    ).encode()


def engine(lateness: float | None = 3600.0, **state: Any) -> Engine:
    overrides = {"state.allowed_lateness_s": lateness, **{f"state.{k}": v for k, v in state.items()}}
    return Engine(load_settings(environ={}, overrides=overrides))


def overall(agent: str = "bot") -> tuple[str, str, str, str, str, str]:
    return (agent, "prod", "v1", "live", "", "")


# -- the filter ---------------------------------------------------------------------------------------
def test_too_late_turns_are_rejected_with_their_bytes_and_origin() -> None:
    raws = [
        turn("a", T0 + 7200),
        b"not json",
        turn("b", T0, rfc=True),
        turn("c", T0 + 5000),
        turn("d", T0 + 3600),
        turn("e", T0 + 3599.5),
    ]
    origins = [f"t/0@{i}" for i in range(len(raws))]
    batch = decode_batch(raws, Deduplicator(), origins=origins)
    f = LatenessFilter(3600.0)
    assert f.apply(batch, raws, origins) == 2
    assert [t.event_id for t in batch.turns] == ["a", "c", "d"]  # d: exactly the allowed lateness is in
    assert list(batch.columns.ts) == [T0 + 7200, T0 + 5000, T0 + 3600]  # the shared columns follow
    late = [r for r in batch.rejected if r.reason is RejectReason.TOO_LATE]
    assert [(r.raw, r.origin) for r in late] == [(raws[2], "t/0@2"), (raws[5], "t/0@5")]
    assert "7200 s behind" in late[0].detail and "allowed lateness is 3600 s" in late[0].detail
    assert [r.reason for r in batch.rejected][0] is RejectReason.NOT_JSON  # other rejections untouched
    assert f.marks == {"bot": T0 + 7200}


def test_the_cut_does_not_depend_on_batch_boundaries() -> None:
    rng = random.Random(7)
    stream = []
    ts = T0
    for i in range(400):
        ts += rng.uniform(0, 30)
        late = rng.random() < 0.2
        stream.append(turn(f"e{i}", ts - (rng.uniform(0, 2000) if late else 0), agent=rng.choice("xyz")))
    results = []
    for size in (1, 7, 64, 400):
        f, dedup, kept = LatenessFilter(600.0), Deduplicator(), []
        for i in range(0, len(stream), size):
            raws = stream[i : i + size]
            batch = decode_batch(raws, dedup)
            f.apply(batch, raws)
            kept.extend(t.event_id for t in batch.turns)
        results.append(kept)
    assert 0 < len(stream) - len(results[0]) < 80  # some, not all, were too late
    assert all(r == results[0] for r in results)


def test_watermarks_are_per_agent() -> None:
    """A partition (agent) that lags behind the others in event time is not judged by their clock."""
    raws = [
        turn("a1", T0 + 86_400, agent="ahead"),
        turn("b1", T0, agent="behind"),
        turn("b2", T0 + 10, agent="behind"),
        turn("a2", T0 + 80_000, agent="ahead"),
    ]
    batch = decode_batch(raws, Deduplicator())
    f = LatenessFilter(3600.0)
    assert f.apply(batch, raws) == 1
    assert [t.event_id for t in batch.turns] == ["a1", "b1", "b2"]
    assert f.marks == {"ahead": T0 + 86_400, "behind": T0 + 10}


def test_no_limit_and_pruning() -> None:
    raws = [turn("a", T0 + 1e6), turn("b", T0)]
    batch = decode_batch(raws, Deduplicator())
    assert LatenessFilter(None).apply(batch, raws) == 0 and len(batch.turns) == 2
    f = LatenessFilter(60.0, max_agents=4)
    for i in range(5):
        raws = [turn(f"p{i}", T0 + i, agent=f"agent{i}")]
        f.apply(decode_batch(raws, Deduplicator()), raws)
    assert sorted(f.marks) == ["agent3", "agent4"]  # the oldest watermarks were forgotten
    with pytest.raises(ValueError):
        LatenessFilter(-1.0)


def test_escaped_event_ids_are_still_found() -> None:
    eid = 'caf\u00e9/"1"'
    raw = (
        b'{"schema":"watcher.turn/v1","event_id":"caf\\u00e9\\/\\"1\\"","ts":%d,"agent_id":"bot",'
        b'"version":"v1","conversation_id":"c"}' % int(T0)
    )
    raws = [turn("new", T0 + 9999), raw]
    batch = decode_batch(raws, Deduplicator())
    assert batch.turns[1].event_id == eid
    assert LatenessFilter(10.0).apply(batch, raws) == 1
    assert batch.rejected[0].raw == raw


# -- in the engine --------------------------------------------------------------------------------------
def test_engine_counts_out_of_order_turns_and_dead_letters_too_late_ones() -> None:
    e = engine(3600.0, window_seconds=300.0, window_buckets=10)
    r = e.process(
        [
            turn("now", T0 + 4000),
            turn("in-window", T0 + 3850),
            turn("old", T0 + 1000),
            turn("too-late", T0 + 399, quality=0.1),
        ]
    )
    assert r.turns == 3 and [x.reason for x in r.rejected] == [RejectReason.TOO_LATE]
    cumulative = e.state.snapshot(overall(), "cumulative")
    recent = e.state.snapshot(overall(), "recent")
    assert cumulative.turns == 3 and cumulative.conversations == 3  # out of order, within lateness: counted
    assert cumulative.first_ts == T0 + 1000
    assert recent.turns == 2 and recent.first_ts == T0 + 3850  # "old" left the window: cumulative only
    assert cumulative.quality_mean == pytest.approx(0.8)  # the too-late turn's quality is nowhere


def test_judge_and_state_count_a_locally_shuffled_stream_like_the_ordered_one() -> None:
    lines = list(generate(dataclasses.replace(PRESETS["demo"], duration_s=300.0, conversations_per_s=8.0)))
    markers = [ln for ln in lines if b"watcher.deployment" in ln]
    turns = [ln for ln in lines if b"watcher.deployment" not in ln]
    rng = random.Random(3)
    shuffled = []
    for i in range(0, len(turns), 200):  # out of order within ~25 s of event time
        block = turns[i : i + 200]
        rng.shuffle(block)
        shuffled.extend(block)
    ordered, mixed = engine(), engine()
    for e, stream in ((ordered, turns), (mixed, shuffled)):
        e.process(markers)
        for i in range(0, len(stream), 500):
            assert not e.process(stream[i : i + 500]).rejected
    for key in ordered.state.keys():
        a, b = ordered.state.snapshot(key), mixed.state.snapshot(key)
        assert (a.turns, a.conversations, a.events) == (b.turns, b.conversations, b.events), key
        assert a.quality_mean == pytest.approx(b.quality_mean)
    (rid,) = ordered.judges
    conversations = [
        e.judges[rid].cum[0, :, :, 0].sum() for e in (ordered, mixed)
    ]  # slice "all", field 0: conversations
    assert conversations[0] == conversations[1] > 1000


def test_the_watermarks_survive_a_checkpoint() -> None:
    first = engine(600.0)
    first.process([turn("a", T0 + 5000), turn("b", T0 + 100, agent="other")])
    restored = engine(600.0)
    restored.load_state(roundtrip(first.to_state()))  # as the checkpoint stores it
    assert restored.lateness.marks == first.lateness.marks
    late = [turn("c", T0 + 4000), turn("d", T0 + 4500)]
    assert [x.raw for x in restored.process(late).rejected] == [late[0]]  # as the first run would have
    assert [x.raw for x in first.process(late).rejected] == [late[0]]
    old = first.to_state()
    del old["engine"]["lateness"]  # a checkpoint written before allowed lateness existed still restores
    engine(600.0).load_state(old)


def test_the_lateness_setting_is_validated() -> None:
    from watcher.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_settings(environ={"WATCHER_STATE__ALLOWED_LATENESS_S": "-5"})
    assert info.value.field == "state.allowed_lateness_s"
    assert (
        load_settings(environ={"WATCHER_STATE__ALLOWED_LATENESS_S": "null"}).state.allowed_lateness_s is None
    )
    assert load_settings(environ={}).state.allowed_lateness_s == 3600.0


# -- in the daemon ------------------------------------------------------------------------------------
async def test_daemon_dead_letters_and_counts_too_late_turns(tmp_path: Path) -> None:
    lines = [turn("a", T0 + 9000), turn("late", T0, rfc=True), turn("b", T0 + 9001)]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    registry = CollectorRegistry()
    settings = load_settings(
        environ={},
        overrides={"http.port": 0, "outbox.path": str(tmp_path / "o.sqlite"), "checkpoint.enabled": False},
    )
    daemon = build_daemon(
        settings,
        registry=registry,
        source=FileSource(path),
        decision_log=MemoryDecisionLog(),
        dead_letters=FileDeadLetters(tmp_path / "dead.jsonl"),
        marker_publisher=NullMarkerPublisher(),
    )
    assert await asyncio.wait_for(daemon.run(asyncio.Event()), 30) == 0
    (dead,) = [json.loads(x) for x in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert dead["reason"] == "too_late" and dead["origin"] == "file/0@2"
    assert base64.b64decode(dead["raw_b64"]) == lines[1]
    assert registry.get_sample_value("watcher_events_rejected_total", {"reason": "too_late"}) == 1
    assert daemon.engine.state.snapshot(overall()).turns == 2


def test_columns_of_the_kept_turns_match_a_fresh_extraction() -> None:
    raws = [turn(f"e{i}", T0 + (i * 100 if i % 3 else 0), conv=f"c{i % 4}", n=i) for i in range(30)]
    batch = decode_batch(raws, Deduplicator())
    _ = batch.columns.latency, batch.columns.quality  # extracted before the cut: sliced, not re-read
    LatenessFilter(500.0).apply(batch, raws)
    cols = batch.columns
    fresh = type(cols)(batch.turns)
    for name in ("ts", "latency", "quality", "first_turn"):
        assert np.array_equal(getattr(cols, name), getattr(fresh, name)), name
    assert cols.conversation_id == fresh.conversation_id and cols.route_keys == fresh.route_keys


# -- too early ---------------------------------------------------------------------------------------
YEAR_2099 = 4_070_908_800.0


def test_one_far_future_turn_does_not_silence_its_agent() -> None:
    # issue #15, 9: one turn stamped in 2099 moved the agent's watermark there; every later turn of
    # the agent was too late
    f = LatenessFilter(3600.0, max_future_s=3600.0)
    first = [turn("a", T0), turn("b", T0 + 10)]
    assert f.apply(decode_batch(first, Deduplicator()), first, now=T0 + 20) == 0
    raws = [turn("future", YEAR_2099), turn("c", T0 + 30), turn("d", T0 + 40)]
    batch = decode_batch(raws, Deduplicator())
    assert f.apply(batch, raws, now=T0 + 50) == 1
    assert [t.event_id for t in batch.turns] == ["c", "d"]
    (reject,) = batch.rejected
    assert reject.reason is RejectReason.TOO_EARLY and reject.raw == raws[0]
    assert "ahead of watcher's clock" in reject.detail and "state.max_future_s" in reject.detail
    assert f.marks["bot"] == T0 + 40
    later = [turn("e", T0 + 60)]
    assert f.apply(decode_batch(later, Deduplicator()), later, now=T0 + 70) == 0  # not too late


def test_a_stream_ahead_of_the_clock_or_after_a_silence_is_not_too_early() -> None:
    f = LatenessFilter(3600.0, max_future_s=3600.0)
    # a demo whose event time runs 10x faster than the clock, or a machine whose clock is behind:
    # the latest event time accepted moves with the stream
    for i in range(30):
        raws = [turn(f"s{i}", T0 + 1200.0 * i)]
        assert f.apply(decode_batch(raws, Deduplicator()), raws, now=T0 - 86_400.0) == 0
    # the whole stream silent for three days, then traffic again: the clock moved on too
    raws = [turn("after", T0 + 30 * 1200.0 + 3 * 86_400.0)]
    assert f.apply(decode_batch(raws, Deduplicator()), raws, now=T0 + 4 * 86_400.0) == 0
    # a first batch is compared with its own median: one outlier in it is still caught
    g = LatenessFilter(3600.0, max_future_s=3600.0)
    raws = [turn("x", T0), turn("y", T0 + 5), turn("z", YEAR_2099)]
    batch = decode_batch(raws, Deduplicator())
    assert g.apply(batch, raws, now=T0 - 86_400.0) == 1 and batch.rejected[0].reason is RejectReason.TOO_EARLY
    restored = LatenessFilter(3600.0, max_future_s=3600.0)
    restored.load_state(json.loads(json.dumps(g.to_state())))
    assert restored.latest == T0 + 5 and restored.marks == g.marks
