"""Quiet series keep sparse sketches, busy ones dense rows (watcher.state.sketches): the numbers are the
same in either form, whatever the stream, the checkpoints and the lifecycle calls."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from tests.support.turns import T, overall, random_turn
from watcher.state import MetricsState
from watcher.stats import DEFAULT_LAYOUT, array_from_state

DENSE, MIXED, SPARSE = 0, 32, 10**9  # sparse_max_cells: dense from the first latency, soon, never


def _states(**kw: float) -> list[MetricsState]:
    return [MetricsState(sparse_max_cells=cells, **kw) for cells in (DENSE, MIXED, SPARSE)]  # type: ignore[arg-type]


def _assert_same(states: list[MetricsState], skip: tuple[str, ...] = ()) -> None:
    first, *rest = states
    for other in rest:
        assert sorted(other.keys()) == sorted(first.keys())
        for key in first.keys():
            for window in ("cumulative", "recent"):
                assert other.snapshot(key, window) == first.snapshot(key, window)  # type: ignore[arg-type]
                assert other.sketch(key, window) == first.sketch(key, window)  # type: ignore[arg-type]
        assert _ordered(other.to_state()) == _ordered(first.to_state())
        for agent, env in first.agents():
            mine, theirs = first.agent_state(agent, env), other.agent_state(agent, env)
            assert {k: v for k, v in theirs.items() if k not in skip} == {
                k: v for k, v in mine.items() if k not in skip
            }


def _ordered(d: dict[str, Any]) -> dict[str, Any]:
    """A state document in one order (a restored state lists its series agent by agent)."""
    series = sorted(d["series"], key=lambda s: s["key"])
    return {
        **d,
        "segment_keys": sorted(d["segment_keys"]),
        "segment_values": sorted(d["segment_values"]),
        "series": series,
    }


def _stream(rng: random.Random, steps: int) -> list[tuple[list[T], list[str]]]:
    """Batches of very uneven size (a quiet tail and busy bursts), late turns and gaps in event time."""
    ts, out = 1_000.0, []
    for _ in range(steps):
        batch = []
        for _ in range(rng.choice([0, 1, 3, 20, 90, 400])):
            ts += rng.expovariate(4.0) if rng.random() < 0.97 else rng.uniform(20, 200)
            batch.append(random_turn(rng, ts - rng.uniform(0, 100) if rng.random() < 0.1 else ts))
        out.append((batch, [rng.choice(["baseline", "canary"]) for _ in batch]))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_default_and_dense_forms_read_the_same(seed: int) -> None:
    rng = random.Random(seed)
    states = _states(window_seconds=60.0, window_buckets=6, max_segment_values=5)
    for step, (batch, arms) in enumerate(_stream(rng, 30)):
        for st in states:
            st.update(batch, arms)
            if step == 12:
                st.reset_cumulative("a", "prod")
            if step == 20:
                st.forget_version("b", "stg", "v1")
        if step % 6 == 5:
            _assert_same(states)
    dense, mixed, sparse = states
    # dense from a series' first latency, both forms in play, never dense
    assert len(dense.keys()) > dense.dense_series() > mixed.dense_series() > 0 == sparse.dense_series()
    assert sparse.nbytes < dense.nbytes / 10


def test_checkpoints_restore_either_form_and_continue_the_same() -> None:
    rng = random.Random(7)
    stream = _stream(rng, 24)
    states = _states(window_seconds=60.0, window_buckets=6)
    for batch, arms in stream[:16]:
        for st in states:
            st.update(batch, arms)
    restored = [
        MetricsState.from_parts(st.meta_state(), (st.agent_state(a, e) for a, e in st.agents()))
        for st in states
    ]
    restored += [MetricsState.from_state(st.to_state()) for st in states]
    everyone = states + restored
    # the one-document form does not record each version's latest turn (it restores the watermark)
    _assert_same(everyone, skip=("version_last",))
    for batch, arms in stream[16:]:
        for st in everyone:
            st.update(batch, arms)
    _assert_same(everyone, skip=("version_last",))


def test_agent_state_sketches_are_the_dense_rows() -> None:
    st = MetricsState(window_seconds=60.0, window_buckets=6, sparse_max_cells=SPARSE)
    for batch, arms in _stream(random.Random(3), 10):
        st.update(batch, arms)
    for agent, env in st.agents():
        d = st.agent_state(agent, env)
        keys = [(agent, env, *k) for k in d["keys"]]
        cum = np.stack([st.sketch(k).counts for k in keys])  # type: ignore[arg-type]
        assert np.array_equal(array_from_state(d["sketch"]), cum)
        ring = array_from_state(d["wsk"])
        assert ring.shape == (len(keys), 6, DEFAULT_LAYOUT.n_buckets) and ring.dtype == np.uint32
        recent = np.stack([st.sketch(k, "recent").counts for k in keys])  # type: ignore[arg-type]
        assert np.array_equal(ring.sum(axis=1), recent)  # positions that left the window are written empty


def test_a_quiet_series_costs_little_and_a_busy_one_gets_dense_rows() -> None:
    st = MetricsState(window_buckets=10)
    before = st.nbytes
    quiet = [T(ts=float(i), version=f"v{i}", segment={"k": str(i)}, latency_ms=100.0 + i) for i in range(200)]
    st.update(quiet, ["baseline"] * 200)
    assert len(st.keys()) == 400 and st.dense_series() == 0
    per_series = (st.nbytes - before) / 400
    assert per_series < 2_500  # was 48,424 bytes (docs/state.md)
    nb = DEFAULT_LAYOUT.n_buckets
    busy = [T(ts=300.0 + i / 100, latency_ms=float(10 + i)) for i in range(500)]  # v1: one quiet turn
    st.update(busy, ["baseline"] * 500)  # > max_cells / 2 latencies in one batch: dense at once
    assert st.dense_series() == 1
    assert st.nbytes - before > 8 * nb + 4 * 10 * nb
    assert st.sketch(overall(version="v0")).count == 1 and st.sketch(overall()).count == 501


def test_many_small_batches_promote_a_series_once_its_cells_outgrow_the_sparse_form() -> None:
    st = MetricsState(sparse_max_cells=40)
    for i in range(30):  # one latency per batch: never busy in a batch, but its distinct buckets add up
        st.update([T(ts=float(i), latency_ms=10.0 * 1.05**i)], ["baseline"])
        assert st.dense_series() == (1 if i >= 20 else 0)  # 2 cells per latency (cumulative + ring)
    assert st.sketch(overall()).count == 30


def test_cells_of_ring_buckets_that_left_the_window_do_not_count_towards_promotion() -> None:
    st = MetricsState(sparse_max_cells=40)  # 30 s ring buckets, 10 of them
    for i in range(40):  # a new ring bucket and a new sketch bucket per batch: the ring holds <= 10 cells
        st.update([T(ts=40.0 * i, latency_ms=10.0 * 1.05**i)], ["baseline"])
        assert st.dense_series() == (1 if i >= 30 else 0)  # 31 cumulative + 10 ring cells > 40
    assert st.sketch(overall()).count == 40
    assert st.sketch(overall(), "recent").count == 7  # ts 1320..1560: buckets 43..52 of 30 s
