"""A log-bucketed quantile sketch (the DDSketch idea), written for watcher's latency series.

Bucket ``i`` covers ``(γ^(i-1), γ^i]`` with ``γ = (1 + α) / (1 - α)``; a quantile is answered with the
bucket's "relative midpoint" ``2γ^i / (γ + 1)``, which is within a relative ``α`` of every value the
bucket can hold. Buckets are a fixed-size numpy ``int64`` array over a bounded range, so the memory of
a sketch is known in advance (``nbytes``) and two sketches merge by adding arrays:

* values below ``min_value`` (default 0.01 ms, including 0 and negatives) go to a *zero bucket* and are
  answered as ``0.0``;
* values above ``max_value`` (default 1 hour) are clamped into the *top bucket* and are answered as
  about ``max_value`` — read such a quantile as "at least an hour";
* NaN values are ignored (a turn without a latency is not a latency of 0).

With the defaults (α = 0.01, 0.01 ms … 3 600 000 ms) a sketch has 987 buckets: 7 896 bytes.

``SketchLayout`` holds the bucket geometry and the vectorised pieces (``index``, ``quantiles``) that
``watcher.state`` applies to its own count matrices; ``QuantileSketch`` is the stand-alone object.

>>> s = QuantileSketch()
>>> s.add_many(np.array([10.0, 20.0, 30.0, 40.0]))
>>> s.count, round(s.quantile(0.5))
(4, 20)
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import numpy as np

from watcher.errors import CheckpointError

STATE_VERSION = 1

__all__ = ["DEFAULT_LAYOUT", "QuantileSketch", "SketchLayout", "dense_counts", "sparse_counts"]


@dataclass(frozen=True)
class SketchLayout:
    """The bucket geometry shared by every sketch that may be merged with another."""

    alpha: float = 0.01
    min_value: float = 0.01
    max_value: float = 3_600_000.0
    gamma: float = field(init=False)
    n_buckets: int = field(init=False)
    _inv_log_gamma: float = field(init=False, repr=False)
    _offset: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 0.0 < self.min_value < self.max_value or not math.isfinite(self.max_value):
            raise ValueError(f"need 0 < min_value < max_value < inf, got {self.min_value}, {self.max_value}")
        gamma = (1.0 + self.alpha) / (1.0 - self.alpha)
        inv = 1.0 / math.log(gamma)
        lo = math.ceil(math.log(self.min_value) * inv)
        hi = math.ceil(math.log(self.max_value) * inv)
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "_inv_log_gamma", inv)
        # Array slot 0 is the zero bucket; slot j >= 1 is log-bucket (lo + j - 1).
        object.__setattr__(self, "_offset", lo - 1)
        object.__setattr__(self, "n_buckets", hi - lo + 2)

    @property
    def nbytes(self) -> int:
        """Bytes of one sketch's count array (int64)."""
        return self.n_buckets * 8

    def index(self, values: np.ndarray) -> np.ndarray:
        """Array slot of each value (NaN must be filtered out by the caller)."""
        v = np.asarray(values, dtype=np.float64)
        # Clamping before the log keeps log(0) and log(negative) out (no warnings, no NaN).
        logs = np.log(np.clip(v, self.min_value, self.max_value))
        idx = np.ceil(logs * self._inv_log_gamma).astype(np.intp)
        idx -= self._offset
        # Rounding at the range edges must not step outside the regular buckets.
        np.clip(idx, 1, self.n_buckets - 1, out=idx)
        idx[v < self.min_value] = 0
        return idx

    def value_of(self, slot: int) -> float:
        """The value a quantile in ``slot`` is answered with."""
        if slot <= 0:
            return 0.0
        i = slot + self._offset
        return float(2.0 * self.gamma**i / (self.gamma + 1.0))

    def quantiles(self, counts: np.ndarray, qs: Sequence[float]) -> list[float | None]:
        """Quantiles of the distribution held in ``counts``; ``None`` for an empty sketch.

        The rank convention is numpy's ``method="lower"``: the answer is within ``α`` (relative) of
        the order statistic ``x[floor(q * (n - 1))]``.
        """
        cum = np.cumsum(counts)
        return self._ranked(
            cum, int(cum[-1]) if len(cum) else 0, qs, lambda rank: np.searchsorted(cum, rank, "right")
        )

    def cell_quantiles(
        self, buckets: Sequence[int], counts: Sequence[int], qs: Sequence[float]
    ) -> list[float | None]:
        """``quantiles`` of the counts whose nonzero buckets (ascending) and counts are given, without
        the dense array: the same answers (the first bucket whose running count passes the rank)."""
        cum = list(accumulate(counts))
        return self._ranked(cum, cum[-1] if cum else 0, qs, lambda rank: buckets[bisect_right(cum, rank)])

    def _ranked(
        self, cum: Any, total: int, qs: Sequence[float], bucket_of: Callable[[int], Any]
    ) -> list[float | None]:
        if total == 0:
            return [None for _ in qs]
        out: list[float | None] = []
        for q in qs:
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"quantile must be in [0, 1], got {q}")
            out.append(self.value_of(int(bucket_of(math.floor(q * (total - 1))))))
        return out

    def to_state(self) -> dict[str, float]:
        return {"alpha": self.alpha, "min_value": self.min_value, "max_value": self.max_value}


DEFAULT_LAYOUT = SketchLayout()


def sparse_counts(counts: np.ndarray) -> dict[str, list[int]]:
    """JSON-safe sparse form of a count array: only the nonzero buckets."""
    nz = np.flatnonzero(counts)
    return {"i": nz.tolist(), "c": counts[nz].tolist()}


def dense_counts(sparse: dict[str, list[int]], n_buckets: int) -> np.ndarray:
    counts = np.zeros(n_buckets, dtype=np.int64)
    idx = np.asarray(sparse.get("i", []), dtype=np.intp)
    if len(idx) and (idx.min() < 0 or idx.max() >= n_buckets):
        raise CheckpointError("sketch bucket index out of range")
    counts[idx] = np.asarray(sparse.get("c", []), dtype=np.int64)
    return counts


class QuantileSketch:
    """Mergeable quantile sketch with relative accuracy ``alpha`` and a fixed memory footprint."""

    __slots__ = ("_counts", "_count", "layout")

    def __init__(self, layout: SketchLayout = DEFAULT_LAYOUT) -> None:
        self.layout = layout
        self._counts = np.zeros(layout.n_buckets, dtype=np.int64)
        self._count = 0

    @classmethod
    def from_counts(cls, counts: np.ndarray, layout: SketchLayout = DEFAULT_LAYOUT) -> QuantileSketch:
        """A sketch over a copy of ``counts`` (e.g. a row of ``watcher.state``'s matrices)."""
        if counts.shape != (layout.n_buckets,):
            raise ValueError(f"expected {layout.n_buckets} buckets, got shape {counts.shape}")
        s = cls(layout)
        s._counts[:] = counts
        s._count = int(counts.sum())
        return s

    @property
    def count(self) -> int:
        return self._count

    @property
    def counts(self) -> np.ndarray:
        """Read-only view of the bucket counts."""
        view = self._counts.view()
        view.flags.writeable = False
        return view

    @property
    def nbytes(self) -> int:
        return int(self._counts.nbytes)

    def add(self, value: float) -> None:
        self.add_many(np.array([value], dtype=np.float64))

    def add_many(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[~np.isnan(v)]
        if len(v) == 0:
            return
        self._counts += np.bincount(self.layout.index(v), minlength=self.layout.n_buckets)
        self._count += len(v)

    def merge(self, other: QuantileSketch) -> None:
        if other.layout != self.layout:
            raise ValueError("cannot merge sketches with different layouts")
        self._counts += other._counts
        self._count += other._count

    def quantile(self, q: float) -> float | None:
        return self.layout.quantiles(self._counts, (q,))[0]

    def quantiles(self, qs: Sequence[float]) -> list[float | None]:
        return self.layout.quantiles(self._counts, qs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantileSketch):
            return NotImplemented
        return self.layout == other.layout and bool(np.array_equal(self._counts, other._counts))

    def __repr__(self) -> str:
        return f"QuantileSketch(count={self._count}, alpha={self.layout.alpha})"

    def to_state(self) -> dict[str, Any]:
        return {"v": STATE_VERSION, "layout": self.layout.to_state(), **sparse_counts(self._counts)}

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> QuantileSketch:
        if d.get("v") != STATE_VERSION:
            raise CheckpointError(f"unsupported sketch state version {d.get('v')!r}")
        layout = SketchLayout(**d["layout"])
        return cls.from_counts(dense_counts(d, layout.n_buckets), layout)
