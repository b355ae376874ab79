"""Looks on a fixed event-time grid: decisions, their times and their evidence do not depend on
where the stream is cut into batches (replay and the daemon cut it differently)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from watcher.config import load_settings
from watcher.engine import Engine
from watcher.service import replay
from watcher.sim.presets import PRESETS
from watcher.sim.simulate import write_jsonl


def _stream(tmp_path: Path, **kw: object) -> Path:
    scenario = dataclasses.replace(
        PRESETS["demo"],
        duration_s=900.0,
        conversations_per_s=5.0,
        weight_steps=((420.0, 0.3),),  # a marker in the middle of the stream
        **kw,
    )
    path = tmp_path / "stream.jsonl"
    write_jsonl(scenario, path)
    return path


def _records(path: Path, batch_size: int) -> list[str]:
    report, _ = replay(path, batch_size=batch_size)
    return [json.dumps(d, sort_keys=True) for d in report.decisions]


def test_decisions_and_their_evidence_are_the_same_for_every_batch_size(tmp_path: Path) -> None:
    path = _stream(tmp_path)
    reference = _records(path, 1000)
    assert reference, "the demo regression must be decided"
    for size in (7, 113, 4096, 100_000):
        assert _records(path, size) == reference, size
    first = json.loads(reference[0])
    assert first["ts_unix"] % 30 == pytest.approx(0.0, abs=1e-6)  # a grid point: start + k * 30 s


@pytest.mark.slow  # one event per batch: ~20 000 batches, most of this file's time
def test_one_event_per_batch_decides_as_large_batches_do(tmp_path: Path) -> None:
    path = _stream(tmp_path)
    assert _records(path, 1) == _records(path, 1000)


def test_without_the_grid_the_batch_boundaries_show(tmp_path: Path) -> None:
    # evaluate_every_s: 0 looks after every batch: the test above would catch a grid that is not used
    path = _stream(tmp_path)
    settings = load_settings(environ={}, overrides={"judge.evaluate_every_s": 0})
    times = {
        size: [d["ts_unix"] for d in replay(path, settings=settings, batch_size=size)[0].decisions]
        for size in (50, 997)
    }
    assert times[50] != times[997]


def test_a_marker_takes_effect_at_its_event_time_inside_a_batch(tmp_path: Path) -> None:
    path = _stream(tmp_path)
    lines = path.read_bytes().splitlines()
    whole = Engine(load_settings(environ={}))
    whole.process(lines)  # the weight change marker and the turns around it in one batch
    split = Engine(load_settings(environ={}))
    for i in range(0, len(lines), 500):
        split.process(lines[i : i + 500])
    (rid,) = whole.judges
    a, b = whole.judges[rid], split.judges[rid]
    assert a.rhos == b.rhos and len(a.rhos) == 3  # unknown, 0.2, then 0.3 from the marker on
    np.testing.assert_allclose(a.cum, b.cum, rtol=1e-12)  # the same conversations in the same strata
