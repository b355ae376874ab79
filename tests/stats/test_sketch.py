from __future__ import annotations

import json
import math

import numpy as np
import pytest

from watcher.errors import CheckpointError
from watcher.stats.sketch import DEFAULT_LAYOUT, QuantileSketch, SketchLayout

QS = (0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)


def _sketch(values: np.ndarray, layout: SketchLayout = DEFAULT_LAYOUT) -> QuantileSketch:
    s = QuantileSketch(layout)
    s.add_many(values)
    return s


def test_default_layout_is_fixed_and_small() -> None:
    assert DEFAULT_LAYOUT.gamma == pytest.approx(1.01 / 0.99)
    assert DEFAULT_LAYOUT.n_buckets == 987  # 985 log buckets for 0.01 ms .. 1 h, + zero bucket (+ rounding)
    assert QuantileSketch().nbytes == DEFAULT_LAYOUT.nbytes == 987 * 8


@pytest.mark.parametrize("seed,sigma", [(0, 0.5), (1, 1.0), (2, 2.0)])
def test_relative_error_within_alpha_on_lognormal(seed: int, sigma: float) -> None:
    x = np.random.default_rng(seed).lognormal(mean=6.0, sigma=sigma, size=20_000)
    s = _sketch(x)
    assert s.count == len(x)
    for q in QS:
        exact = float(np.quantile(x, q, method="lower"))
        got = s.quantile(q)
        assert got is not None
        assert abs(got - exact) <= DEFAULT_LAYOUT.alpha * exact * (1 + 1e-9), (q, got, exact)


def test_close_to_interpolated_quantiles_on_dense_data() -> None:
    x = np.random.default_rng(7).lognormal(5.0, 1.0, size=200_000)
    s = _sketch(x)
    for q in (0.5, 0.95, 0.99):
        exact = float(np.quantile(x, q))
        assert s.quantile(q) == pytest.approx(exact, rel=DEFAULT_LAYOUT.alpha + 1e-3)


def test_small_samples_each_value_within_alpha() -> None:
    s = _sketch(np.array([10.0, 20.0, 30.0, 40.0]))
    for q, exact in ((0.0, 10.0), (0.5, 20.0), (0.75, 30.0), (1.0, 40.0)):
        assert abs(s.quantile(q) - exact) <= 0.01 * exact  # type: ignore[operator]


def test_zero_bucket_and_top_bucket() -> None:
    s = _sketch(np.array([0.0, -5.0, 0.001, 0.0099]))
    assert s.count == 4
    assert s.quantile(0.0) == 0.0 and s.quantile(1.0) == 0.0
    top = _sketch(np.array([5e6, 1e9, np.inf]))
    # clamped into the top bucket: answered as about max_value (read: "at least an hour")
    assert top.quantile(0.5) == pytest.approx(DEFAULT_LAYOUT.max_value, rel=0.01)
    edge = _sketch(np.array([DEFAULT_LAYOUT.min_value, DEFAULT_LAYOUT.max_value]))
    assert edge.quantile(0.0) == pytest.approx(DEFAULT_LAYOUT.min_value, rel=0.01)
    assert edge.quantile(1.0) == pytest.approx(DEFAULT_LAYOUT.max_value, rel=0.01)


def test_nan_is_ignored_and_empty_is_none() -> None:
    s = _sketch(np.array([np.nan, np.nan]))
    assert s.count == 0
    assert s.quantile(0.5) is None
    s.add_many(np.array([], dtype=float))
    assert s.count == 0
    with pytest.raises(ValueError):
        _sketch(np.array([1.0])).quantile(1.5)


def test_add_many_equals_adding_one_by_one() -> None:
    x = np.random.default_rng(3).lognormal(4, 1.5, 500)
    one = QuantileSketch()
    for v in x:
        one.add(float(v))
    assert one == _sketch(x)


def test_merge_equals_sketch_of_union() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.lognormal(3, 1, 3000), rng.lognormal(7, 0.3, 1000)
    merged = _sketch(a)
    merged.merge(_sketch(b))
    assert merged == _sketch(np.concatenate([a, b]))
    assert merged.count == 4000
    with pytest.raises(ValueError):
        merged.merge(QuantileSketch(SketchLayout(alpha=0.02)))


def test_state_round_trip_is_sparse_json_and_exact() -> None:
    s = _sketch(np.random.default_rng(5).lognormal(6, 1, 1000))
    d = json.loads(json.dumps(s.to_state()))
    assert d["v"] == 1
    assert len(d["i"]) == len(d["c"]) == int(np.count_nonzero(s.counts)) < DEFAULT_LAYOUT.n_buckets
    back = QuantileSketch.from_state(d)
    assert back == s and back.count == s.count
    assert [back.quantile(q) for q in QS] == [s.quantile(q) for q in QS]


def test_bad_state_is_a_checkpoint_error() -> None:
    d = QuantileSketch().to_state()
    with pytest.raises(CheckpointError):
        QuantileSketch.from_state({**d, "v": 2})
    with pytest.raises(CheckpointError):
        QuantileSketch.from_state({**d, "i": [10_000], "c": [1]})


def test_counts_view_is_read_only() -> None:
    s = _sketch(np.array([1.0]))
    with pytest.raises(ValueError):
        s.counts[0] = 5


@pytest.mark.parametrize("alpha", [0.005, 0.01, 0.05])
def test_other_accuracies_keep_their_bound(alpha: float) -> None:
    layout = SketchLayout(alpha=alpha)
    x = np.random.default_rng(8).lognormal(5, 1.5, 5000)  # inside the range
    s = _sketch(x, layout)
    assert (
        layout.n_buckets
        == math.ceil(math.log(layout.max_value) / math.log(layout.gamma))
        - math.ceil(math.log(layout.min_value) / math.log(layout.gamma))
        + 2
    )
    for q in QS:
        exact = float(np.quantile(x, q, method="lower"))
        assert abs(s.quantile(q) - exact) <= alpha * exact * (1 + 1e-9)  # type: ignore[operator]


def test_quantiles_from_cells_are_the_dense_answers() -> None:
    rng = np.random.default_rng(11)
    qs = (0.0, 0.01, 0.5, 0.95, 0.99, 1.0)
    for n in (0, 1, 2, 3, 7, 50, 500):
        counts = np.zeros(DEFAULT_LAYOUT.n_buckets, dtype=np.int64)
        np.add.at(counts, DEFAULT_LAYOUT.index(rng.lognormal(6, 1.5, n)), 1)
        nz = np.flatnonzero(counts)
        got = DEFAULT_LAYOUT.cell_quantiles(nz.tolist(), counts[nz].tolist(), qs)
        assert got == DEFAULT_LAYOUT.quantiles(counts, qs)
    with pytest.raises(ValueError):
        DEFAULT_LAYOUT.cell_quantiles([3], [1], (1.5,))
