from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest

from tests.support.turns import T, overall, random_turn
from watcher.errors import CheckpointError
from watcher.state import MetricsState, SeriesKey, SeriesSnapshot
from watcher.state.metrics import LN, OTHER
from watcher.stats.sketch import DEFAULT_LAYOUT

ALPHA = DEFAULT_LAYOUT.alpha


# ---- a naive per-event reference -------------------------------------------------------------------
class Reference:
    def __init__(
        self, window_seconds: float, window_buckets: int, max_values: int, max_keys: int = 16
    ) -> None:
        self.width = window_seconds / window_buckets
        self.buckets = window_buckets
        self.max_values, self.max_keys = max_values, max_keys
        self.events: dict[SeriesKey, list[T]] = defaultdict(list)
        self.since_reset: dict[SeriesKey, int] = defaultdict(int)
        self.keys: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.values: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        self.watermark: float | None = None

    def add(self, t: T, arm: str) -> None:
        a, e = t.agent_id, t.environment
        keys = [(a, e, t.version, arm, "", "")]
        for k, v in (t.segment or {}).items():
            if not k:
                continue
            if k not in self.keys[a, e]:
                if len(self.keys[a, e]) >= self.max_keys:
                    continue
                self.keys[a, e].add(k)
            vals = self.values[a, e, k]
            if v not in vals and len(vals) < self.max_values:
                vals.add(v)
            keys.append((a, e, t.version, arm, k, v if v in vals else OTHER))
        for key in keys:
            self.events[key].append(t)
        self.watermark = t.ts if self.watermark is None else max(self.watermark, t.ts)

    def reset(self, agent: str, env: str) -> None:
        for key, evs in self.events.items():
            if key[:2] == (agent, env):
                self.since_reset[key] = len(evs)

    def selected(self, key: SeriesKey, window: str) -> list[T]:
        evs = self.events[key]
        if window == "cumulative":
            return evs[self.since_reset[key] :]
        assert self.watermark is not None
        lo = math.floor(self.watermark / self.width) - self.buckets + 1
        return [t for t in evs if math.floor(t.ts / self.width) >= lo]


def assert_matches(got: SeriesSnapshot, evs: list[T]) -> None:
    assert got.turns == len(evs)
    assert got.conversations == sum(t.turn == 0 for t in evs)
    assert got.events == {
        "escalation": sum(t.escalated for t in evs),
        "error": sum(t.error for t in evs),
        "compliance": sum(t.compliance_violation for t in evs),
    }
    if evs:
        for name, n in got.events.items():
            assert got.rates[name] == pytest.approx(n / len(evs), abs=1e-12)
        assert got.first_ts == min(t.ts for t in evs) and got.last_ts == max(t.ts for t in evs)
    else:
        assert set(got.rates.values()) == {None} and got.first_ts is got.last_ts is None
    qs = np.array([t.quality for t in evs if t.quality is not None])
    assert got.quality_n == len(qs)
    if len(qs):
        assert got.quality_mean == pytest.approx(qs.mean(), abs=1e-9)
    else:
        assert got.quality_mean is None
    if len(qs) >= 2:
        assert got.quality_std == pytest.approx(qs.std(ddof=1), abs=1e-9)
    else:
        assert got.quality_std is None
    lat = np.array([t.latency_ms for t in evs if t.latency_ms is not None])
    assert got.latency_n == len(lat)
    for q, value in ((0.5, got.latency_p50_ms), (0.95, got.latency_p95_ms), (0.99, got.latency_p99_ms)):
        if len(lat) == 0:
            assert value is None
        else:
            exact = float(np.quantile(lat, q, method="lower"))
            assert value is not None and abs(value - exact) <= ALPHA * exact * (1 + 1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_reference_on_random_batches(seed: int) -> None:
    rng = random.Random(seed)
    st = MetricsState(window_seconds=60.0, window_buckets=6, max_segment_values=5)
    ref = Reference(60.0, 6, 5)
    ts = 1_000.0
    for step in range(40):
        batch, arms = [], []
        for _ in range(rng.choice([0, 1, 7, 40, 150])):
            ts += rng.expovariate(5.0) if rng.random() < 0.98 else rng.uniform(30, 120)  # with gaps
            late = rng.random() < 0.1
            t = random_turn(rng, ts - rng.uniform(0, 150) if late else ts)
            batch.append(t)
            arms.append(rng.choice(["baseline", "canary"]))
        st.update(batch, arms)
        for t, arm in zip(batch, arms):
            ref.add(t, arm)
        if step == 25:
            st.reset_cumulative("a", "prod")
            ref.reset("a", "prod")
        if step % 8 == 7 or step == 39:
            assert st.watermark == ref.watermark
            assert set(st.keys()) == set(ref.events)
            for key in st.keys():
                for window in ("cumulative", "recent"):
                    got = st.snapshot(key, window)  # type: ignore[arg-type]
                    assert_matches(got, ref.selected(key, window))


def test_order_of_events_does_not_matter() -> None:
    rng = random.Random(9)
    turns = [random_turn(rng, 1000.0 + rng.uniform(0, 200)) for _ in range(600)]
    arms = [rng.choice(["baseline", "canary"]) for _ in turns]
    # no folding here: folding admits values in arrival order, so it may differ in another order
    one = MetricsState(window_seconds=60.0, max_segment_values=1000)
    one.update(turns, arms)
    two = MetricsState(window_seconds=60.0, max_segment_values=1000)
    order = list(range(len(turns)))
    rng.shuffle(order)
    for i in range(0, len(order), 37):
        idx = order[i : i + 37]
        two.update([turns[j] for j in idx], [arms[j] for j in idx])
    assert set(one.keys()) == set(two.keys())
    for key in one.keys():
        for window in ("cumulative", "recent"):
            a, b = one.snapshot(key, window), two.snapshot(key, window)  # type: ignore[arg-type]
            assert a.quality_mean == pytest.approx(b.quality_mean, abs=1e-12)  # sums in another order
            assert a.quality_std == pytest.approx(b.quality_std, abs=1e-12)
            no_quality = {"quality_mean": None, "quality_std": None}
            assert replace(a, **no_quality) == replace(b, **no_quality)


# ---- the recent window ------------------------------------------------------------------------------
def test_window_drops_old_buckets_and_counts_late_events_in_cumulative_only() -> None:
    st = MetricsState(window_seconds=300.0, window_buckets=10)  # 30 s buckets
    assert st.watermark is None
    st.update([T(ts=0.0, latency_ms=10.0), T(ts=29.0, latency_ms=20.0)], ["baseline"] * 2)
    assert st.snapshot(overall(), "recent").turns == 2
    st.update([T(ts=290.0)], ["baseline"])  # bucket 9: buckets 0..9 are all in the window
    assert st.snapshot(overall(), "recent").turns == 3
    st.update([T(ts=300.0)], ["baseline"])  # bucket 10 recycles ring position 0 (bucket 0 leaves)
    recent = st.snapshot(overall(), "recent")
    assert (recent.turns, recent.first_ts, recent.last_ts) == (2, 290.0, 300.0)
    assert st.watermark == 300.0
    st.update([T(ts=5.0, escalated=True)], ["baseline"])  # late: bucket 0 already left the window
    assert st.snapshot(overall(), "recent").turns == 2
    cum = st.snapshot(overall())
    assert (cum.turns, cum.events["escalation"], cum.first_ts, cum.last_ts) == (5, 1, 0.0, 300.0)
    st.update([T(ts=35.0, escalated=True)], ["baseline"])  # late but bucket 1 is still in the window
    recent = st.snapshot(overall(), "recent")
    assert (recent.turns, recent.events["escalation"], recent.first_ts) == (3, 1, 35.0)
    assert st.watermark == 300.0  # a late event never moves the watermark back


def test_window_empties_when_event_time_moves_far_ahead() -> None:
    st = MetricsState(window_seconds=60.0, window_buckets=6)
    st.update([T(ts=100.0, quality=0.5, segment={"intent": "x"})], ["baseline"])
    st.update([T(ts=10_000.0, agent_id="other")], ["baseline"])  # only another agent's traffic
    recent = st.snapshot(overall(), "recent")
    assert recent.turns == 0 and recent.quality_mean is None and recent.latency_p50_ms is None
    assert recent.rates["escalation"] is None and recent.first_ts is None
    assert st.snapshot(overall()).turns == 1
    # the ring position of bucket 1 is reused by a much later bucket: no stale data may leak in
    st.update([T(ts=10_000.0 + 60.0 * 1000 + 10.0)], ["baseline"])
    assert st.snapshot(overall(), "recent").turns == 1


def test_batch_spanning_several_buckets_and_late_ones() -> None:
    st = MetricsState(window_seconds=100.0, window_buckets=10)
    ts = [0.0, 5.0, 15.0, 95.0, 150.0, 151.0]
    st.update([T(ts=t) for t in ts], ["baseline"] * len(ts))
    # watermark 151 -> bucket 15; window buckets 6..15 -> only 95, 150, 151
    recent = st.snapshot(overall(), "recent")
    assert (recent.turns, recent.first_ts) == (3, 95.0)
    assert st.snapshot(overall()).turns == 6


# ---- segments -------------------------------------------------------------------------------------------
def test_one_series_per_segment_key_and_value() -> None:
    st = MetricsState()
    st.update(
        [
            T(ts=1.0, segment={"intent": "billing", "language": "de"}),
            T(ts=2.0, segment={"intent": "billing"}),
            T(ts=3.0, segment={}),
        ],
        ["canary"] * 3,
    )
    assert sorted(st.keys()) == sorted(
        [
            overall(arm="canary"),
            ("bot", "prod", "v1", "canary", "intent", "billing"),
            ("bot", "prod", "v1", "canary", "language", "de"),
        ]
    )
    assert st.snapshot(("bot", "prod", "v1", "canary", "intent", "billing")).turns == 2
    assert st.snapshot(overall(arm="canary")).turns == 3


def test_segment_values_fold_into_other_per_agent_env_key() -> None:
    st = MetricsState(max_segment_values=3)
    turns = [T(ts=float(i), segment={"intent": f"i{i}"}, version=f"v{i % 2}") for i in range(6)]
    turns.append(T(ts=9.0, agent_id="other", segment={"intent": "i5"}))
    st.update(turns, ["baseline"] * len(turns))
    intents = {(k[0], k[2], k[5]) for k in st.keys() if k[4] == "intent"}
    assert intents == {
        ("bot", "v0", "i0"),
        ("bot", "v1", "i1"),
        ("bot", "v0", "i2"),
        ("bot", "v1", OTHER),
        ("bot", "v0", OTHER),
        ("other", "v1", "i5"),
    }
    assert st.snapshot(("bot", "prod", "v1", "baseline", "intent", OTHER)).turns == 2  # i3, i5
    # admitted values stay admitted; new ones keep folding, in later batches and other versions too
    st.update(
        [T(ts=10.0, segment={"intent": "i1"}, version="v0"), T(ts=11.0, segment={"intent": "i9"})],
        ["baseline"] * 2,
    )
    assert st.snapshot(("bot", "prod", "v0", "baseline", "intent", "i1")).turns == 1
    assert st.snapshot(("bot", "prod", "v1", "baseline", "intent", OTHER)).turns == 3


def test_segment_keys_beyond_the_cap_are_not_tracked() -> None:
    st = MetricsState(max_segment_keys=2)
    turns = [T(ts=1.0, segment={"a": "1", "b": "1"}), T(ts=2.0, segment={"c": "1", "a": "2"})]
    st.update(turns, ["baseline"] * 2)
    assert {k[4] for k in st.keys()} == {"", "a", "b"}
    assert st.snapshot(overall()).turns == 2


def test_none_and_odd_segments_are_tolerated() -> None:
    from types import MappingProxyType

    st = MetricsState()
    st.update(
        [
            T(ts=1.0, segment=None),
            T(ts=2.0, segment=MappingProxyType({"intent": "x"})),
            T(ts=3.0, segment={"": "empty key"}),
        ],
        ["baseline"] * 3,
    )
    assert sorted(st.keys()) == [overall(), ("bot", "prod", "v1", "baseline", "intent", "x")]


# ---- None fields, empty batches, errors -------------------------------------------------------------------
def test_none_fields_and_empty_batch() -> None:
    st = MetricsState()
    st.update([], [])
    assert st.keys() == [] and st.watermark is None
    assert st.summary_frame().empty and st.traffic_share("bot", "prod") == {}
    st.update([T(ts=1.0, latency_ms=None, quality=None, turn=3)], ["baseline"])
    snap = st.snapshot(overall())
    assert (snap.turns, snap.conversations, snap.latency_n, snap.quality_n) == (1, 0, 0, 0)
    assert snap.latency_p50_ms is snap.latency_p99_ms is snap.quality_mean is snap.quality_std is None
    assert snap.rates["escalation"] == 0.0
    with pytest.raises(ValueError):
        st.update([T(ts=1.0)], [])
    with pytest.raises(KeyError):
        st.snapshot(overall(version="nope"))
    with pytest.raises(ValueError):
        st.snapshot(overall(), "hourly")  # type: ignore[arg-type]


# ---- lifecycle --------------------------------------------------------------------------------
def test_reset_cumulative_only_touches_that_agent_env() -> None:
    st = MetricsState()
    st.update(
        [T(ts=1.0, segment={"intent": "x"}), T(ts=2.0, environment="stg"), T(ts=3.0, agent_id="z")],
        ["baseline"] * 3,
    )
    st.reset_cumulative("bot", "prod")
    assert st.snapshot(overall()).turns == 0
    assert st.snapshot(("bot", "prod", "v1", "baseline", "intent", "x")).turns == 0
    assert st.snapshot(overall(), "recent").turns == 1  # the window is kept
    assert st.snapshot(overall(env="stg")).turns == 1 and st.snapshot(overall(agent="z")).turns == 1
    st.update([T(ts=4.0, quality=0.25, latency_ms=50.0)], ["baseline"])
    snap = st.snapshot(overall())
    assert (snap.turns, snap.first_ts, snap.quality_mean) == (1, 4.0, 0.25)
    assert snap.latency_p50_ms == pytest.approx(50.0, rel=ALPHA)


def test_forget_version_removes_its_series_and_slots_are_reused_clean() -> None:
    st = MetricsState(window_seconds=60.0)
    old = [T(ts=float(i), version="v1", segment={"intent": "x"}, escalated=True) for i in range(100)]
    st.update(old + [T(ts=1.0, version="v2")], ["baseline"] * 100 + ["canary"])
    st.forget_version("bot", "prod", "v1")
    assert st.keys() == [overall(version="v2", arm="canary")]
    st.update([T(ts=50.0, version="v3", segment={"intent": "x"})], ["canary"])
    for window in ("cumulative", "recent"):
        snap = st.snapshot(overall(version="v3", arm="canary"), window)  # type: ignore[arg-type]
        assert (snap.turns, snap.events["escalation"], snap.latency_n) == (1, 0, 1)
        snap = st.snapshot(("bot", "prod", "v3", "canary", "intent", "x"), window)  # type: ignore[arg-type]
        assert (snap.turns, snap.events["escalation"]) == (1, 0)
    st.update([T(ts=51.0, version="v1")], ["baseline"])  # a forgotten version may come back, from zero
    assert st.snapshot(overall()).turns == 1


def test_many_series_grow_the_storage() -> None:
    st = MetricsState()
    turns = [T(ts=1.0, version=f"v{i}", segment={"intent": f"i{i % 7}"}) for i in range(300)]
    st.update(turns, ["baseline"] * 300)
    assert len(st.keys()) == 600
    assert all(st.snapshot(k).turns == 1 for k in st.keys())


# ---- reads ------------------------------------------------------------------------------------------------
def test_traffic_share_and_summary_frame() -> None:
    st = MetricsState()
    turns = [
        T(ts=float(i), version="v2" if i % 4 == 0 else "v1", segment={"intent": "x"}) for i in range(100)
    ]
    turns.append(T(ts=1.0, agent_id="other"))
    st.update(turns, ["canary" if t.version == "v2" else "baseline" for t in turns])
    share = st.traffic_share("bot", "prod")
    assert share == {("v1", "baseline"): 0.75, ("v2", "canary"): 0.25}
    assert st.traffic_share("bot", "prod", "recent") == share
    frame = st.summary_frame()
    assert list(frame.columns) == [
        "agent",
        "environment",
        "version",
        "arm",
        "segment",
        "turns",
        "conversations",
        "quality_mean",
        "latency_p50_ms",
        "latency_p95_ms",
        "latency_p99_ms",
        "escalation_rate",
        "error_rate",
        "compliance_rate",
        "share",
    ]
    assert len(frame) == len(st.keys()) == 5
    row = frame[(frame.version == "v2") & (frame.segment == "intent=x")].iloc[0]
    assert row.turns == 25 and row.share == 0.25
    assert frame[frame.agent == "other"].iloc[0].share == 1.0
    assert st.sketch(overall()).count == 75


# ---- checkpoint --------------------------------------------------------------------------------
def test_state_round_trip_is_exact_and_json_safe() -> None:
    rng = random.Random(5)
    st = MetricsState(window_seconds=60.0, window_buckets=6, max_segment_values=4)
    batches = []
    ts = 0.0
    for _ in range(12):
        batch = []
        for _ in range(80):
            ts += rng.expovariate(4.0)
            batch.append(random_turn(rng, ts))
        batches.append((batch, [rng.choice(["baseline", "canary"]) for _ in batch]))
    for b in batches[:8]:
        st.update(*b)
    d = st.to_state()
    assert d["v"] == 1
    restored = MetricsState.from_state(json.loads(json.dumps(d, allow_nan=False)))
    assert restored.to_state() == d
    for key in st.keys():
        for window in ("cumulative", "recent"):
            assert restored.snapshot(key, window) == st.snapshot(key, window)  # type: ignore[arg-type]
    for b in batches[8:]:  # and both continue identically (folding state included)
        st.update(*b)
        restored.update(*b)
    assert restored.to_state() == st.to_state()


def test_bad_state_is_a_checkpoint_error() -> None:
    d = MetricsState().to_state()
    with pytest.raises(CheckpointError):
        MetricsState.from_state({**d, "v": 99})
    with pytest.raises(CheckpointError):
        MetricsState.from_state({k: v for k, v in d.items() if k != "series"})


@pytest.mark.parametrize("cells", [0, 128])  # a dense and a sparse series
def test_ring_sketch_saturates_instead_of_wrapping(cells: int) -> None:
    # Reaching 2**32 latencies in one ring bucket takes hours of one frozen timestamp: fake the count.
    st = MetricsState(sparse_max_cells=cells)
    st.update([T(ts=1.0, latency_ms=10.0)], ["baseline"])
    slot = st._index[overall()]
    pos = 0
    st._wstats[slot, pos, LN] = 2.0**32
    st.update([T(ts=2.0, latency_ms=10.0)], ["baseline"])
    assert st.sketch(overall(), "recent").count == 1  # the second latency was not added to the ring
    assert st.sketch(overall()).count == 2  # the cumulative sketch (int64) still counts it


def test_take_dirty_names_the_agents_whose_figures_may_have_changed() -> None:
    """/metrics redoes only these agents' series: a missing one would be exposed stale."""
    st = MetricsState(window_seconds=300.0, window_buckets=10)  # 30 s buckets
    st.update([T(ts=0.0), T(ts=100.0, agent_id="late")], ["baseline"] * 2)
    assert st.take_dirty() == {("bot", "prod"), ("late", "prod")}
    assert st.take_dirty() == set()
    st.update([T(ts=200.0, agent_id="other")], ["baseline"])  # bot's and late's turns stay in the window
    assert st.take_dirty() == {("other", "prod")}
    # bucket 0 leaves the window: bot's recent figures change though no batch touched it
    st.update([T(ts=320.0, agent_id="other")], ["baseline"])
    assert st.take_dirty() == {("other", "prod"), ("bot", "prod")}
    assert st.snapshot(overall(), "recent").turns == 0
    st.reset_cumulative("late", "prod")
    assert st.take_dirty() == {("late", "prod")}
    st.forget_version("other", "prod", "v1")
    assert st.take_dirty() == {("other", "prod")}
    # a restored state is new to its readers, in both checkpoint forms
    assert MetricsState.from_state(st.to_state()).take_dirty() == {("bot", "prod"), ("late", "prod")}
    parts = MetricsState.from_parts(st.meta_state(), [st.agent_state(a, e) for a, e in st.agents()])
    assert parts.take_dirty() == {("bot", "prod"), ("late", "prod")}


def test_series_of_is_one_agents_series_in_the_order_of_keys() -> None:
    st = MetricsState()
    st.update(
        [T(ts=1.0, segment={"intent": "a"}), T(ts=2.0, agent_id="other"), T(ts=3.0, version="v2")],
        ["baseline", "baseline", "canary"],
    )
    mine = [k for k in st.keys() if k[:2] == ("bot", "prod")]
    assert st.series_of("bot", "prod") == mine and len(mine) == 3
    st.forget_version("bot", "prod", "v1")
    assert st.series_of("bot", "prod") == [("bot", "prod", "v2", "canary", "", "")]
    assert st.series_of("nobody", "prod") == []
