"""The daemon runs a batch through the engine in pieces and lets the event loop run between them
(issue #13): the same state, decisions and dead letters as one ``Engine.process`` of the batch."""

from __future__ import annotations

import dataclasses

import pytest

from tests.support.loop import run_counting_turns
from watcher.config import load_settings
from watcher.engine import Engine
from watcher.kafka import Message, MessageBatch, Origins
from watcher.service.slices import Slices
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate


def _batch() -> MessageBatch:
    scenario = dataclasses.replace(PRESETS["broken_from_start"], duration_s=900.0, conversations_per_s=4.0)
    lines = list(generate(scenario))
    lines.insert(len(lines) - 7, b'{"not": "an event"}')  # rejected, in the last piece
    return MessageBatch.of(Message(v, "telemetry", 3, 100 + i) for i, v in enumerate(lines))


def test_a_batch_in_pieces_is_the_batch_at_once_and_the_loop_runs_between_them() -> None:
    batch = _batch()
    whole = Engine(load_settings(environ={}))
    expected = whole.process(batch.values, origins=Origins(batch))
    assert expected.decisions and len(expected.rejected) == 1

    sliced = Engine(load_settings(environ={}))
    slices = Slices(slice_s=0.0, smallest=500)  # every piece as small as allowed

    result, ticks = run_counting_turns(slices.process(sliced, batch.values, Origins(batch)))
    pieces = -(-len(batch) // 500)
    assert slices.pieces == pieces > 10 and ticks >= pieces - 1
    assert sorted(sliced.state.keys()) == sorted(whole.state.keys())
    for key in whole.state.keys():  # counts exact; float sums in another order of additions
        for window in ("cumulative", "recent"):
            a, b = sliced.state.snapshot(key, window), whole.state.snapshot(key, window)
            assert (a.turns, a.conversations, a.events, a.latency_p99_ms) == (
                b.turns,
                b.conversations,
                b.events,
                b.latency_p99_ms,
            )
            assert a.quality_mean == pytest.approx(b.quality_mean, rel=1e-12)
    assert [d.to_dict() for d in result.decisions] == [d.to_dict() for d in expected.decisions]  # type: ignore[attr-defined]
    assert result.turns == expected.turns  # type: ignore[attr-defined]
    bad = len(batch) - 8
    assert [r.origin for r in result.rejected] == [f"telemetry/3@{100 + bad}"]  # type: ignore[attr-defined]


def test_pieces_are_sized_from_the_time_per_message() -> None:
    slices = Slices(slice_s=0.02, smallest=64, first_guess_s=20e-6)
    assert slices.size() == 1000
    slices.per_message_s = 200e-6  # a thousand agents' batches
    assert slices.size() == 100
    slices.per_message_s = 1.0
    assert slices.size() == 64


def test_a_slice_of_origins_names_the_messages_of_the_slice() -> None:
    batch = [Message(b"x", "t", 0, 10 + i) for i in range(10)]
    origins = Origins(batch)[3:7]
    assert len(origins) == 4 and list(origins) == ["t/0@13", "t/0@14", "t/0@15", "t/0@16"]
    assert origins[-1] == "t/0@16" and list(origins[1:][:2]) == ["t/0@14", "t/0@15"]
    assert len(Origins(batch)[8:3]) == 0
