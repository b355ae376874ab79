"""Per-series statistics: the state every other analysis reads.

A *series* is ``(agent_id, environment, version, arm, segment_key, segment_value)``; the overall series
of a version has the segment ``("", "")``. Each turn updates its overall series and one series per
``segment`` key. Per series we keep counters, quality sums, a latency sketch and first/last event
time, twice: *cumulative* (since the series appeared or since ``reset_cumulative``) and over a *recent*
window in event time.

Why it looks the way it does (this is the hot path, budget ~1 µs per event):

* All series live in a few preallocated numpy matrices indexed by a *slot* (one row per series), so a
  batch is applied with a handful of vectorised operations instead of per-event method calls.
* A batch becomes a *fan-out* matrix: one row per turn, the slots of its overall series and of one
  series per segment key. It is built from C-level ``map``/``zip`` with one ``dict.get`` per turn for
  (agent, env, version, arm) and one per segment key for the value, looked up in interning tables;
  a small ``[overall code, value code] -> slot`` table does the rest. Python code runs only for
  values and series never seen before.
* Sums per series are ``np.bincount``s over the flattened fan-out (a few ns per turn x series);
  latency buckets go straight into the series' sketch rows with one ``np.add.at`` per batch.
* The recent window is a ring of ``window_buckets`` event-time buckets of width
  ``window_seconds / window_buckets`` keyed by ``floor(ts / width)``. The watermark is the max ``ts``
  seen; the window holds the buckets ``(cur - window_buckets, cur]`` with ``cur`` the watermark's
  bucket, so it spans between ``window_seconds - width`` and ``window_seconds``. A ring position is
  recycled lazily, per series, when a newer bucket lands on it; reads ignore positions that left the
  window. A late event whose bucket already left the window counts in the cumulative part only. The
  result does not depend on the order of events within or across batches.

Memory per series is small and fixed except for the latency sketches, which stay sparse while a series
is quiet and become dense rows once it is busy (``watcher.state.sketches``, docs/state.md). The
number of series is bounded: segment values per (agent, env, key) beyond
``max_segment_values`` fold into ``"__other__"``, and segment keys per (agent, env) beyond
``max_segment_keys`` are not tracked (their turns still count in the overall series).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from watcher.contract import RATE_METRICS, TurnColumns
from watcher.errors import CheckpointError
from watcher.state.sketches import SketchStore
from watcher.stats import (
    DEFAULT_LAYOUT,
    QuantileSketch,
    SketchLayout,
    array_from_state,
    array_to_state,
    cells_to_state,
    dense_counts,
)

if TYPE_CHECKING:
    import pandas as pd

SeriesKey = tuple[str, str, str, str, str, str]
Window = Literal["cumulative", "recent"]
OTHER = "__other__"
STATE_VERSION = 1

# Columns of the counter matrices. Counts are float64 (exact up to 2**53) so that one matrix holds them all.
# After the fixed ones, one per rate metric of the catalogue: the turns with its event.
TURNS, CONV, QN, QSUM, QSQ, LN = range(6)
EVENT_COL = {m.name: LN + 1 + i for i, m in enumerate(RATE_METRICS)}
NSTAT = LN + 1 + len(RATE_METRICS)
_NO_BUCKET = -(2**62)  # ring position never used
_U32_MAX = float(np.iinfo(np.uint32).max)
_QUANTILES = (0.5, 0.95, 0.99)  # of a snapshot
_VALUE_CACHE_LIMIT = 4096  # distinct raw values of one segment key kept in the lookup cache
_TRASH = 0  # slot 0 is never a series: fan-out entries for "no series" land there and are never read

_G_KEY = attrgetter("agent_id", "environment", "version")


@dataclass(frozen=True)
class SeriesSnapshot:
    """One series' statistics over one window; ``None`` where there is no data."""

    turns: int
    conversations: int
    quality_n: int
    quality_mean: float | None
    quality_std: float | None  # sample standard deviation (n - 1); None below 2 scores
    latency_n: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    events: dict[str, int]  # per rate metric of the catalogue: turns with its event
    rates: dict[str, float | None]  # ... and their share of the turns
    first_ts: float | None
    last_ts: float | None


def _snapshot(stats: np.ndarray, first: float, last: float, quantiles: list[float | None]) -> SeriesSnapshot:
    turns, qn = int(stats[TURNS]), int(stats[QN])
    mean = float(stats[QSUM] / qn) if qn else None
    std = None
    if qn >= 2:
        # Quality is in [0, 1], so the sum-of-squares form loses nothing that matters here.
        var = (float(stats[QSQ]) - float(stats[QSUM]) ** 2 / qn) / (qn - 1)
        std = math.sqrt(max(var, 0.0))
    p50, p95, p99 = quantiles

    return SeriesSnapshot(
        turns=turns,
        conversations=int(stats[CONV]),
        quality_n=qn,
        quality_mean=mean,
        quality_std=std,
        latency_n=int(stats[LN]),
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        latency_p99_ms=p99,
        events={name: int(stats[col]) for name, col in EVENT_COL.items()},
        rates={name: float(stats[col] / turns) if turns else None for name, col in EVENT_COL.items()},
        first_ts=float(first) if turns else None,
        last_ts=float(last) if turns else None,
    )


@dataclass(slots=True)
class _Events:
    """A batch as columns, plus the series slots of each turn (``fan``, one row per turn)."""

    fan: np.ndarray
    ts: np.ndarray
    conv: np.ndarray
    lat: np.ndarray
    q: np.ndarray
    events: list[np.ndarray]  # per rate metric (``EVENT_COL`` order): the turns with its event

    def subset(self, sel: np.ndarray) -> _Events:
        return _Events(
            self.fan[sel],
            self.ts[sel],
            self.conv[sel],
            self.lat[sel],
            self.q[sel],
            [e[sel] for e in self.events],
        )

    def series_sums(self, cap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Dense per-slot sums ``(cap, NSTAT)`` and first/last ts ``(cap,)`` of this batch.

        ``bincount`` over the flattened fan-out is a few ns per (turn, series) pair; the rare flags
        only cost the turns that carry them.
        """
        fan, width = self.fan, self.fan.shape[1]
        sums = np.empty((cap, NSTAT))

        def count(mask: np.ndarray | None) -> np.ndarray:
            return np.bincount((fan if mask is None else fan[mask]).ravel(), minlength=cap)

        qmask = ~np.isnan(self.q)
        qv = np.repeat(self.q[qmask], width)
        qfan = fan[qmask].ravel()
        sums[:, TURNS] = count(None)
        sums[:, CONV] = count(self.conv)
        sums[:, QN] = np.bincount(qfan, minlength=cap)
        sums[:, QSUM] = np.bincount(qfan, weights=qv, minlength=cap)
        sums[:, QSQ] = np.bincount(qfan, weights=qv * qv, minlength=cap)
        sums[:, LN] = count(~np.isnan(self.lat))
        for col, event in zip(EVENT_COL.values(), self.events):
            sums[:, col] = count(event)
        first = np.full(cap, np.inf)
        last = np.full(cap, -np.inf)
        flat = fan.ravel()
        tsw = np.repeat(self.ts, width)
        np.fmin.at(first, flat, tsw)
        np.fmax.at(last, flat, tsw)
        return sums, first, last

    def sketch_targets(self, layout: SketchLayout) -> tuple[np.ndarray, np.ndarray]:
        """Slot and sketch bucket of every (turn with a latency, series) pair."""
        lmask = ~np.isnan(self.lat)
        tgt = self.fan[lmask]
        bix = np.repeat(layout.index(self.lat[lmask]), tgt.shape[1])
        return tgt.ravel(), bix


class _Codes:
    """Interns the distinct values of one column so that a batch maps to codes with one C-level
    ``dict.get`` per turn. For a segment key, ``lut[overall code, value code]`` caches the series
    slot (-1 = not resolved yet). A cache only: it can be dropped at any time."""

    __slots__ = ("codes", "values", "lut")

    def __init__(self) -> None:
        self.codes: dict[Any, int] = {None: 0}  # code 0: the turn has no value for this key
        self.values: list[Any] = [None]
        self.lut = np.full((0, 0), -1, dtype=np.intp)

    def learn(self, items: list[Any], code: np.ndarray) -> np.ndarray:
        for i in np.flatnonzero(code < 0).tolist():
            c = self.codes.get(items[i])
            if c is None:
                c = self.codes[items[i]] = len(self.values)
                self.values.append(items[i])
            code[i] = c
        return code

    def ensure_lut(self, rows: int) -> None:
        old_r, old_c = self.lut.shape
        if rows <= old_r and len(self.values) <= old_c:
            return
        lut = np.full((max(rows, 2 * old_r, 8), max(len(self.values), 2 * old_c, 8)), -1, dtype=np.intp)
        lut[:old_r, :old_c] = self.lut
        lut[:, 0] = _TRASH
        self.lut = lut


class MetricsState:
    """Per-series statistics, cumulative and over a recent event-time window, updated per batch."""

    # One row per series slot, grown together by ``_alloc``: the cumulative statistics, first and last
    # event times (``_c*``), and per ring bucket the window's (``_w*``; ``_wid``: the bucket each ring
    # position holds, ``_NO_BUCKET`` when empty). The latency sketches, cumulative and per ring bucket,
    # are in ``_sk``: sparse for a quiet series, dense rows for a busy one (``watcher.state.sketches``).
    _cstats: np.ndarray
    _cfirst: np.ndarray
    _clast: np.ndarray
    _wid: np.ndarray
    _wstats: np.ndarray
    _wfirst: np.ndarray
    _wlast: np.ndarray

    def __init__(
        self,
        *,
        window_seconds: float = 300.0,
        window_buckets: int = 10,
        max_segment_values: int = 50,
        max_segment_keys: int = 16,
        layout: SketchLayout = DEFAULT_LAYOUT,
        sparse_max_cells: int = 128,
    ) -> None:
        if not window_seconds > 0 or window_buckets < 1 or max_segment_values < 1 or max_segment_keys < 0:
            raise ValueError("window_seconds > 0, window_buckets >= 1, max_segment_values >= 1 required")
        self.window_seconds = float(window_seconds)
        self.window_buckets = int(window_buckets)
        self.max_segment_values = int(max_segment_values)
        self.max_segment_keys = int(max_segment_keys)
        self.layout = layout
        self._width = self.window_seconds / self.window_buckets
        self.watermark: float | None = None
        self._index: dict[SeriesKey, int] = {}
        self._by_agent: dict[tuple[str, str], dict[SeriesKey, None]] = {}  # (agent, env) -> its series
        self._touched: set[tuple[str, str]] = set()  # agents changed since ``take_touched``
        # the exposition's own record (``take_dirty``), apart from the checkpoints'
        self._dirty: set[tuple[str, str]] = set()
        self._dirty_low = _NO_BUCKET + 1  # the window's lowest bucket at the last ``take_dirty``
        # (agent, env, version) -> event time of its latest turn: retired and idle versions leave the state
        self._version_last: dict[tuple[str, str, str], float] = {}
        self._free: list[int] = []
        self._seg_keys: dict[tuple[str, str], set[str]] = {}
        self._seg_values: dict[tuple[str, str, str], set[str]] = {}
        self._hot_keys: tuple[str, ...] = ()  # segment keys present in the previous batch
        self._reset_caches()
        self._sk = SketchStore(layout.n_buckets, self.window_buckets, sparse_max_cells)
        self._cap = 0
        self._alloc(64)

    # ---- storage -------------------------------------------------------------------------------
    def _alloc(self, cap: int) -> None:
        b, old = self.window_buckets, self._cap

        def grow(name: str, shape: tuple[int, ...], fill: float, dtype: type) -> np.ndarray:
            new: np.ndarray = np.full((cap, *shape), fill, dtype=dtype)
            if old:
                new[:old] = getattr(self, name)
            return new

        self._cstats = grow("_cstats", (NSTAT,), 0.0, np.float64)
        self._cfirst = grow("_cfirst", (), np.inf, np.float64)
        self._clast = grow("_clast", (), -np.inf, np.float64)
        self._wid = grow("_wid", (b,), _NO_BUCKET, np.int64)
        self._wstats = grow("_wstats", (b, NSTAT), 0.0, np.float64)
        self._wfirst = grow("_wfirst", (b,), np.inf, np.float64)
        self._wlast = grow("_wlast", (b,), -np.inf, np.float64)
        self._sk.grow_slots(cap)
        self._free.extend(range(cap - 1, max(old, _TRASH + 1) - 1, -1))
        self._cap = cap

    def _clear_cumulative(self, slots: Any) -> None:
        self._cstats[slots] = 0.0
        self._cfirst[slots] = np.inf
        self._clast[slots] = -np.inf
        self._sk.clear_cumulative(slots)

    def _slot_for(self, key: SeriesKey) -> int:
        slot = self._index.get(key)
        if slot is None:
            if not self._free:
                self._alloc(self._cap + self._cap // 2)
            slot = self._index[key] = self._free.pop()
            self._by_agent.setdefault((key[0], key[1]), {})[key] = None
        return slot

    def _fold(self, agent: str, env: str, key: str, value: str) -> str | None:
        """The segment value a series is kept under; None when the key itself is not tracked."""
        keys = self._seg_keys.setdefault((agent, env), set())
        if key not in keys:
            if len(keys) >= self.max_segment_keys:
                return None
            keys.add(key)
        values = self._seg_values.setdefault((agent, env, key), set())
        if value in values:
            return value
        if len(values) < self.max_segment_values:
            values.add(value)
            return value
        return OTHER

    def _reset_caches(self) -> None:
        self._overall = _Codes()  # ((agent, env, version), arm) -> code
        self._oslot = np.zeros(8, dtype=np.intp)  # overall code -> series slot
        self._n_oslots = 1  # codes resolved so far (code 0, "no value", is never an overall key)
        self._values: dict[str, _Codes] = {}  # per segment key

    def _oslot_of(self, ocode: np.ndarray, table: _Codes) -> np.ndarray:
        if len(table.values) > self._n_oslots:
            if len(table.values) > len(self._oslot):
                grown = np.zeros(2 * len(table.values), dtype=np.intp)
                grown[: self._n_oslots] = self._oslot[: self._n_oslots]
                self._oslot = grown
            for o in range(self._n_oslots, len(table.values)):
                (agent, env, version), arm = table.values[o]
                self._oslot[o] = self._slot_for((agent, env, version, arm, "", ""))
            self._n_oslots = len(table.values)
        return self._oslot[ocode]

    def _values_of(self, key: str) -> _Codes:
        vt = self._values.get(key)
        if vt is None or len(vt.values) > _VALUE_CACHE_LIMIT:  # high-cardinality values: start afresh
            vt = self._values[key] = _Codes()
        return vt

    def _segment_slot(self, okey: tuple[Any, ...], key: str, value: Any) -> int:
        (agent, env, version), arm = okey
        folded = self._fold(agent, env, key, str(value)) if key else None
        return _TRASH if folded is None else self._slot_for((agent, env, version, arm, key, folded))

    def _fan_out(self, turns: Sequence[Any], arms: Sequence[str], cols: TurnColumns) -> np.ndarray:
        """``(n, 1 + keys)`` matrix: the series slots each turn updates (overall first)."""
        n = len(turns)
        # Decoded as columns, the batch numbers its distinct segments (``segment_code``): each key's
        # values are then looked up once per distinct segment and gathered per turn.
        coded = cols.coded("segment")
        segs = coded[0] if coded is not None else cols.segment
        try:
            seg_keys, seg_cols = self._segment_columns(segs)
        except TypeError:  # a segment that is None or a non-dict mapping: normalise, then the fast path
            segs = [dict(s) if s else {} for s in segs]
            seg_keys, seg_cols = self._segment_columns(segs)
        fan = np.empty((n, 1 + len(seg_keys)), dtype=np.intp)
        if len(self._overall.values) > _VALUE_CACHE_LIMIT:
            self._reset_caches()
        # One dict lookup per turn for (agent, env, version, arm), driven from C. The key tuples are not
        # kept in a list: thousands of live tuples per batch cost more in garbage-collector passes than
        # building them (measured: 350 vs 190 ns per turn).
        table = self._overall
        routed = cols.routed
        if routed is not None and routed[0] is arms:
            # the registry resolved one arm per route key: look up the distinct keys only
            okeys = [((a, e, v), arm) for (a, e, v, _), arm in zip(cols.route_keys, routed[1])]
            kcode = np.fromiter(map(table.codes.get, okeys, repeat(-1)), dtype=np.intp, count=len(okeys))
            if (kcode < 0).any():  # distinct keys are in order of first appearance, as per turn
                kcode = table.learn(okeys, kcode)
            ocode = kcode[cols.route_code]
        else:
            gkeys = zip(map(_G_KEY, turns), arms)
            ocode = np.fromiter(map(table.codes.get, gkeys, repeat(-1)), dtype=np.intp, count=n)
            if (ocode < 0).any():
                ocode = table.learn(list(zip(map(_G_KEY, turns), arms)), ocode)
        fan[:, 0] = self._oslot_of(ocode, table)
        self._seen_versions(table.values, ocode, cols.ts)
        for j, (key, col) in enumerate(zip(seg_keys, seg_cols), start=1):
            vt = self._values_of(key)
            vcode = np.fromiter(map(vt.codes.get, col, repeat(-1)), dtype=np.intp, count=len(col))
            if (vcode < 0).any():
                vcode = vt.learn(col, vcode)
            if coded is not None:
                vcode = vcode[coded[1]]
            vt.ensure_lut(len(table.values))
            slots = vt.lut[ocode, vcode]
            if (slots < 0).any():  # (version, value) pairs never seen: resolve their series once
                # in order of first occurrence, so that folding admits values in event order
                new = slots < 0
                for o, v in dict.fromkeys(zip(ocode[new].tolist(), vcode[new].tolist())):
                    vt.lut[o, v] = self._segment_slot(table.values[o], key, vt.values[v])
                slots = vt.lut[ocode, vcode]
            fan[:, j] = slots
        return fan

    def _seen_versions(self, values: list[Any], ocode: np.ndarray, ts: np.ndarray) -> None:
        """Note the batch's agents (for checkpoints) and each version's latest turn: per distinct
        (agent, env, version, arm) of the batch, not per turn."""
        codes, inv = np.unique(ocode, return_inverse=True)
        latest = np.full(len(codes), -np.inf)
        np.fmax.at(latest, inv, ts)
        seen = self._version_last
        for o, t in zip(codes.tolist(), latest.tolist()):
            key = values[o][0]  # (agent, env, version)
            self._touched.add(key[:2])
            self._dirty.add(key[:2])
            if t > seen.get(key, -math.inf):
                seen[key] = t

    def version_last(self) -> dict[tuple[str, str, str], float]:
        """(agent, environment, version) -> event time of its latest turn (read-only)."""
        return self._version_last

    def _segment_columns(self, segs: list[Any]) -> tuple[tuple[str, ...], list[list[Any]]]:
        """Segment keys present in the batch and each key's value per turn (None where absent)."""
        n, total = len(segs), sum(map(len, segs))
        keys = self._hot_keys
        cols = [list(map(dict.get, segs, repeat(k))) for k in keys]
        found = [n - c.count(None) for c in cols]
        if sum(found) != total:  # a key absent from the previous batch: find this batch's keys
            keys = tuple(dict.fromkeys(chain.from_iterable(segs)))
            cols = [list(map(dict.get, segs, repeat(k))) for k in keys]
            found = [n - c.count(None) for c in cols]
        if all(found):
            self._hot_keys = keys
            return keys, cols
        self._hot_keys = tuple(k for k, f in zip(keys, found) if f)
        return self._hot_keys, [c for c, f in zip(cols, found) if f]

    # ---- update --------------------------------------------------------------------------------
    def update(self, turns: Sequence[Any], arms: Sequence[str], columns: TurnColumns | None = None) -> None:
        """Apply one batch of turns (``arms[i]`` is the resolved arm of ``turns[i]``).

        ``columns`` are the batch's shared columns (``DecodedBatch.columns``); built here if absent.
        """
        n = len(turns)
        if len(arms) != n:
            raise ValueError(f"{n} turns but {len(arms)} arms")
        if n == 0:
            return
        cols = columns if columns is not None else TurnColumns(turns)
        fan = self._fan_out(turns, arms, cols)
        ts = cols.ts
        ev = _Events(
            fan=fan,
            ts=ts,
            conv=cols.first_turn,
            lat=cols.latency,
            q=cols.quality,
            events=[cols.event(name) for name in EVENT_COL],
        )
        sums, first, last = ev.series_sums(self._cap)
        self._cstats += sums
        np.fmin(self._cfirst, first, out=self._cfirst)
        np.fmax(self._clast, last, out=self._clast)
        tgt, bix = ev.sketch_targets(self.layout)
        self._sk.promote_busy(sums[:, LN])
        self._sk.add(tgt, bix, None)

        # the recent window, in event time
        finite = np.isfinite(ts)
        if not finite.any():
            return
        batch_max = float(ts[finite].max())
        if self.watermark is None or batch_max > self.watermark:
            self.watermark = batch_max
        lo = math.floor(self.watermark / self._width) - self.window_buckets + 1
        bids = np.floor(np.where(finite, ts, -np.inf) / self._width)
        b0 = bids[0]
        if b0 >= lo and (bids == b0).all():  # the usual case: the whole batch falls in one bucket
            self._add_window(int(b0), sums, first, last, tgt, bix)
            return
        for b in np.unique(bids[bids >= lo]).tolist():
            sub = ev.subset(bids == b)
            sums, first, last = sub.series_sums(self._cap)
            tgt, bix = sub.sketch_targets(self.layout)
            self._add_window(int(b), sums, first, last, tgt, bix)

    def _add_window(
        self,
        bucket: int,
        sums: np.ndarray,
        first: np.ndarray,
        last: np.ndarray,
        tgt: np.ndarray,
        bix: np.ndarray,
    ) -> None:
        pos = bucket % self.window_buckets
        slots = np.flatnonzero(sums[:, TURNS])
        stale = slots[self._wid[slots, pos] != bucket]
        if len(stale):  # recycle: this ring position still holds a bucket that left the window
            self._wid[stale, pos] = bucket
            self._wstats[stale, pos] = 0.0
            self._wfirst[stale, pos] = np.inf
            self._wlast[stale, pos] = -np.inf
            self._sk.clear_ring(stale, pos)
        self._wstats[slots, pos] += sums[slots]
        self._wfirst[slots, pos] = np.fmin(self._wfirst[slots, pos], first[slots])
        self._wlast[slots, pos] = np.fmax(self._wlast[slots, pos], last[slots])
        full = slots[self._wstats[slots, pos, LN] >= _U32_MAX]
        if len(full):  # saturate instead of wrapping (only reachable when ts stops advancing for hours)
            keep = ~np.isin(tgt, full)
            tgt, bix = tgt[keep], bix[keep]
        self._sk.add(tgt, bix, pos)

    # ---- reads ---------------------------------------------------------------------------------
    def keys(self) -> list[SeriesKey]:
        return list(self._index)

    def _window_positions(self, slot: int) -> np.ndarray:
        if self.watermark is None:
            return np.zeros(self.window_buckets, dtype=bool)
        lo = math.floor(self.watermark / self._width) - self.window_buckets + 1
        return self._wid[slot] >= lo

    def _parts(
        self, key: SeriesKey, window: Window
    ) -> tuple[np.ndarray, float, float, int, np.ndarray | None]:
        """One series' statistics, first and last event time over ``window``, its slot, and the ring
        positions in the window (None: the cumulative part)."""
        slot = self._index.get(key)
        if slot is None:
            raise KeyError(key)
        if window == "cumulative":
            return self._cstats[slot], float(self._cfirst[slot]), float(self._clast[slot]), slot, None
        if window != "recent":
            raise ValueError(f"window must be 'cumulative' or 'recent', got {window!r}")
        p = self._window_positions(slot)
        return (
            self._wstats[slot, p].sum(axis=0),
            float(self._wfirst[slot, p].min(initial=np.inf)),
            float(self._wlast[slot, p].max(initial=-np.inf)),
            slot,
            p,
        )

    def snapshot(self, key: SeriesKey, window: Window = "cumulative") -> SeriesSnapshot:
        """Statistics of one series; ``KeyError`` for an unknown key."""
        stats, first, last, slot, positions = self._parts(key, window)
        return _snapshot(stats, first, last, self._sk.quantiles(slot, positions, self.layout, _QUANTILES))

    def sketch(self, key: SeriesKey, window: Window = "cumulative") -> QuantileSketch:
        """A copy of one series' latency sketch (for tests that need more than three quantiles)."""
        _, _, _, slot, positions = self._parts(key, window)
        counts = self._sk.cumulative(slot) if positions is None else self._sk.window(slot, positions)
        return QuantileSketch.from_counts(counts, self.layout)

    def traffic_share(
        self, agent_id: str, environment: str, window: Window = "cumulative"
    ) -> dict[tuple[str, str], float]:
        """Share of the agent/env's turns per (version, arm), from the overall series."""
        turns = {
            (k[2], k[3]): self._parts(k, window)[0][TURNS]
            for k in self._index
            if k[0] == agent_id and k[1] == environment and k[4] == "" and k[5] == ""
        }
        total = sum(turns.values())
        return {va: float(t / total) for va, t in turns.items()} if total else {}

    def summary_frame(self, window: Window = "cumulative") -> pd.DataFrame:
        """One row per series (replay's table); ``share`` is the series' share of the turns of the
        same agent, environment and segment across versions and arms."""
        import pandas as pd  # lazily: pandas costs a second of start-up, only reports need it

        columns = [
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
            *(f"{name}_rate" for name in EVENT_COL),
            "share",
        ]
        rows = []
        for key in sorted(self._index):
            s = self.snapshot(key, window)
            rows.append(
                {
                    "agent": key[0],
                    "environment": key[1],
                    "version": key[2],
                    "arm": key[3],
                    "segment": f"{key[4]}={key[5]}" if key[4] else "",
                    "turns": s.turns,
                    "conversations": s.conversations,
                    "quality_mean": s.quality_mean,
                    "latency_p50_ms": s.latency_p50_ms,
                    "latency_p95_ms": s.latency_p95_ms,
                    "latency_p99_ms": s.latency_p99_ms,
                    **{f"{name}_rate": rate for name, rate in s.rates.items()},
                }
            )
        frame = pd.DataFrame(rows, columns=columns[:-1])
        if frame.empty:
            return pd.DataFrame(columns=columns)
        group_total = frame.groupby(["agent", "environment", "segment"])["turns"].transform("sum")
        frame["share"] = (frame["turns"] / group_total.where(group_total > 0)).astype(float)
        return frame

    # ---- lifecycle -----------------------------------------------------------------------------
    def reset_cumulative(self, agent_id: str, environment: str) -> None:
        """Zero the cumulative part of every series of the agent/env (the recent window is kept)."""
        slots = [self._index[k] for k in self._by_agent.get((agent_id, environment), ())]
        self._clear_cumulative(slots)
        self._touched.add((agent_id, environment))
        self._dirty.add((agent_id, environment))

    def forget_version(self, agent_id: str, environment: str, version: str) -> None:
        """Drop every series of a version (retired versions leave /metrics)."""
        self._version_last.pop((agent_id, environment, version), None)
        mine = self._by_agent.get((agent_id, environment), {})
        gone = [k for k in mine if k[2] == version]
        slots = [self._index.pop(k) for k in gone]
        for k in gone:
            del mine[k]
        if not mine:
            self._by_agent.pop((agent_id, environment), None)
        self._touched.add((agent_id, environment))
        self._dirty.add((agent_id, environment))
        self._clear_cumulative(slots)
        self._wid[slots] = _NO_BUCKET
        self._sk.free(slots)
        self._free.extend(slots)
        self._reset_caches()  # cached codes may point at the freed slots

    # ---- checkpoint ----------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        series = []
        for key, slot in self._index.items():
            window = []
            for p in np.flatnonzero(self._window_positions(slot)):
                window.append(
                    {
                        "bucket": int(self._wid[slot, p]),
                        "stats": self._wstats[slot, p].tolist(),
                        "first": _ts_out(self._wfirst[slot, p]),
                        "last": _ts_out(self._wlast[slot, p]),
                        "sketch": _cells_out(self._sk.cells(slot, int(p))),
                    }
                )
            series.append(
                {
                    "key": list(key),
                    "stats": self._cstats[slot].tolist(),
                    "first": _ts_out(self._cfirst[slot]),
                    "last": _ts_out(self._clast[slot]),
                    "sketch": _cells_out(self._sk.cells(slot, None)),
                    "window": window,
                }
            )
        return {
            "v": STATE_VERSION,
            "window_seconds": self.window_seconds,
            "window_buckets": self.window_buckets,
            "max_segment_values": self.max_segment_values,
            "max_segment_keys": self.max_segment_keys,
            "layout": self.layout.to_state(),
            "watermark": self.watermark,
            "segment_keys": [[a, e, sorted(ks)] for (a, e), ks in self._seg_keys.items()],
            "segment_values": [[a, e, k, sorted(vs)] for (a, e, k), vs in self._seg_values.items()],
            "series": series,
        }

    @classmethod
    def _from_settings(cls, d: dict[str, Any], version: int) -> MetricsState:
        """An empty state with the settings and watermark a checkpoint recorded (either form)."""
        if d.get("v") != version:
            raise CheckpointError(f"unsupported metrics state version {d.get('v')!r}")
        st = cls(
            window_seconds=d["window_seconds"],
            window_buckets=d["window_buckets"],
            max_segment_values=d["max_segment_values"],
            max_segment_keys=d["max_segment_keys"],
            layout=SketchLayout(**d["layout"]),
        )
        st.watermark = d["watermark"]
        return st

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> MetricsState:
        try:
            st = cls._from_settings(d, STATE_VERSION)
            st._seg_keys = {(a, e): set(ks) for a, e, ks in d["segment_keys"]}
            st._seg_values = {(a, e, k): set(vs) for a, e, k, vs in d["segment_values"]}
            nb, b = st.layout.n_buckets, st.window_buckets
            for s in d["series"]:
                slot = st._slot_for(tuple(s["key"]))
                # a checkpoint from before a rate metric was added holds fewer columns: its counts start at 0
                st._cstats[slot, : len(s["stats"])] = s["stats"]
                st._cfirst[slot], st._clast[slot] = _ts_in(s["first"], np.inf), _ts_in(s["last"], -np.inf)
                ring = np.zeros((1, b, nb), dtype=np.uint32)
                for w in s["window"]:
                    p = w["bucket"] % b
                    st._wid[slot, p] = w["bucket"]
                    st._wstats[slot, p, : len(w["stats"])] = w["stats"]
                    st._wfirst[slot, p] = _ts_in(w["first"], np.inf)
                    st._wlast[slot, p] = _ts_in(w["last"], -np.inf)
                    ring[0, p] = dense_counts(w["sketch"], nb)
                st._sk.load([slot], dense_counts(s["sketch"], nb)[None], ring)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"invalid metrics state: {exc!r}") from exc
        if st.watermark is not None:  # the one-document form did not record each version's latest turn
            st._version_last = dict.fromkeys((k[:3] for k in st._index), float(st.watermark))
        st._dirty = set(st._by_agent)
        return st

    # ---- checkpoint by agent -------------------------------------------------------------------
    # An incremental checkpoint stores each (agent, environment)'s series apart, as arrays (raw bytes):
    # only the agents a batch touched are written again.
    def agents(self) -> list[tuple[str, str]]:
        """The (agent, environment)s with series."""
        return list(self._by_agent)

    def series_of(self, agent_id: str, environment: str) -> list[SeriesKey]:
        """One (agent, environment)'s series (in the order of ``keys``): per batch, instead of a pass
        over every series of every agent."""
        return list(self._by_agent.get((agent_id, environment), ()))

    def take_touched(self) -> set[tuple[str, str]]:
        """The (agent, environment)s whose series changed since the last call (and forget them)."""
        touched, self._touched = self._touched, set()
        return touched

    def take_dirty(self) -> set[tuple[str, str]]:
        """The (agent, environment)s whose figures may differ from what the last call's caller saw
        (``/metrics`` redoes only their series): a batch touched them, a version left, their
        cumulative part was reset, the state was restored, or a bucket of their recent window left it
        as event time moved on (a series nobody touches changes then too)."""
        dirty, self._dirty = self._dirty, set()
        low = self._window_low()
        if low != self._dirty_low:
            left = ((self._wid >= self._dirty_low) & (self._wid < low)).any(axis=1)
            slots = set(np.flatnonzero(left).tolist())
            if slots:
                dirty.update(k[:2] for k, s in self._index.items() if s in slots)
            self._dirty_low = low
        return dirty

    def meta_state(self) -> dict[str, Any]:
        return {
            "v": 2,
            "window_seconds": self.window_seconds,
            "window_buckets": self.window_buckets,
            "max_segment_values": self.max_segment_values,
            "max_segment_keys": self.max_segment_keys,
            "layout": self.layout.to_state(),
            "watermark": self.watermark,
        }

    def agent_state(self, agent: str, env: str) -> dict[str, Any]:
        """One (agent, environment)'s series: keys, and their rows of every matrix (window positions
        that left the window are written empty)."""
        keys = list(self._by_agent.get((agent, env), ()))
        slots = np.fromiter((self._index[k] for k in keys), np.intp, len(keys))
        wid = self._wid[slots]
        stale = wid < self._window_low()
        wstats, wfirst, wlast = self._wstats[slots], self._wfirst[slots], self._wlast[slots]
        if stale.any():
            wid[stale], wstats[stale], wfirst[stale], wlast[stale] = _NO_BUCKET, 0.0, np.inf, -np.inf
        # the sketches as the cells of the dense arrays, without building them (most series are sparse)
        nb, n, sk, slot_list = self.layout.n_buckets, len(keys), self._sk, slots.tolist()
        seg_keys = sorted(self._seg_keys.get((agent, env), ()))
        last, versions = self._version_last, dict.fromkeys(k[2] for k in keys)
        return {
            "agent": agent,
            "environment": env,
            "keys": [list(k[2:]) for k in keys],
            "segment_keys": seg_keys,
            "segment_values": {k: sorted(self._seg_values.get((agent, env, k), ())) for k in seg_keys},
            "version_last": {v: last[(agent, env, v)] for v in versions if (agent, env, v) in last},
            "stats": array_to_state(self._cstats[slots]),
            "first": array_to_state(self._cfirst[slots]),
            "last": array_to_state(self._clast[slots]),
            "sketch": cells_to_state((n, nb), np.int64, *sk.flat_cells(slot_list, None)),
            "wid": array_to_state(wid),
            "wstats": array_to_state(wstats),
            "wfirst": array_to_state(wfirst),
            "wlast": array_to_state(wlast),
            "wsk": cells_to_state((n, self.window_buckets, nb), np.uint32, *sk.flat_cells(slot_list, ~stale)),
        }

    def _window_low(self) -> int:
        if self.watermark is None:
            return _NO_BUCKET + 1
        return math.floor(self.watermark / self._width) - self.window_buckets + 1

    @classmethod
    def from_parts(cls, meta: dict[str, Any], agents: Iterable[dict[str, Any]]) -> MetricsState:
        """The inverse of ``meta_state`` and every ``agent_state``."""
        try:
            st = cls._from_settings(meta, 2)
            for d in agents:
                a, e = d["agent"], d["environment"]
                if d["segment_keys"]:
                    st._seg_keys[(a, e)] = set(d["segment_keys"])
                for k, vs in d["segment_values"].items():
                    st._seg_values[(a, e, k)] = set(vs)
                for v, t in d.get("version_last", {}).items():
                    st._version_last[(a, e, v)] = float(t)
                keys = [(a, e, *k) for k in d["keys"]]
                slots = np.fromiter((st._slot_for(k) for k in keys), np.intp, len(keys))
                for name in ("stats", "first", "last", "wid", "wstats", "wfirst", "wlast"):
                    getattr(st, _MATRIX[name])[slots] = array_from_state(d[name])
                sketch, wsk = array_from_state(d["sketch"]), array_from_state(d["wsk"])
                if sketch.shape != (len(keys), st.layout.n_buckets) or wsk.shape[:1] != (len(keys),):
                    raise ValueError(
                        f"sketch arrays of shape {sketch.shape}, {wsk.shape} for {len(keys)} series"
                    )
                st._sk.load(slots.tolist(), sketch, wsk)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"invalid metrics state: {exc!r}") from exc
        st._touched.clear()
        st._dirty = set(st._by_agent)
        return st

    @property
    def nbytes(self) -> int:
        """Bytes held by the per-slot matrices (all allocated slots, used or free) and the sketches
        (dense rows allocated, and an estimate of the sparse ones)."""
        return sum(getattr(self, a).nbytes for a in _MATRIX.values()) + self._sk.nbytes

    def dense_series(self) -> int:
        """How many series hold dense sketch rows (the busy ones; the rest are sparse)."""
        return sum(self._sk.is_dense(slot) for slot in self._index.values())


# the matrix behind each array of ``agent_state``
_MATRIX = {
    "stats": "_cstats",
    "first": "_cfirst",
    "last": "_clast",
    "wid": "_wid",
    "wstats": "_wstats",
    "wfirst": "_wfirst",
    "wlast": "_wlast",
}


def _cells_out(cells: tuple[list[int], list[int]]) -> dict[str, list[int]]:
    return {"i": cells[0], "c": cells[1]}  # the form of ``sparse_counts``


def _ts_out(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None  # ±inf = "no event yet" is not JSON


def _ts_in(x: float | None, empty: float) -> float:
    return empty if x is None else float(x)


__all__ = ["OTHER", "MetricsState", "SeriesKey", "SeriesSnapshot", "Window"]
