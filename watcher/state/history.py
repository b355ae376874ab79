"""Per-version history of conversation-level sufficient statistics: blue-green's reference.

The engine feeds every batch (``VersionHistory.update(turns, arms, cols)``); a blue-green judge reads,
at the switch, what the old (blue) version did in given time windows (``reference``). Per
(agent, environment, version) and time bucket, per segment slice, the fields of ``tracker`` (
conversations, cluster sums of quality and log latency, first events); per bucket, overall only, a
histogram of each conversation's slowest turn (``watcher.stats.latency_bins``; blue-green's latency-tail
reference). A conversation counts in the bucket and version of its first turn.

Sized by information, whatever the number of agents (issue #13): one conversation table for every
agent (rows as conversations arrive), and only the cells that received a conversation exist — a
(version, bucket, slice) row of fields, a (version, bucket, latency bin) count — so a quiet agent's
half hour costs a few hundred bytes, not the ~9.5 KB of a dense bucket. A batch is one vectorised pass
over all its agents: Python runs per distinct conversation, per new cell and per agent with new
conversations, never per agent and batch otherwise.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from watcher.contract import TurnColumns
from watcher.state.slices import ConvRows, SliceMap
from watcher.state.tracker import DAY, F_CONV, LATENCY_MAX, N_FIELDS, SUMS, conv_cols, conversation_deltas
from watcher.stats import N_BINS, array_from_state, array_to_state

__all__ = ["NullHistory", "VersionHistory"]

_STATE_V = 4  # v4: one conversation table and sparse cells for all agents (v3: per agent, dense buckets)
_AEV = operator.itemgetter(0, 1, 2)  # (agent, environment, version) of a route key
_TURN_AEV = operator.attrgetter("agent_id", "environment", "version")
# cell codes: version id << 40 | bucket << 10 | slice (or latency bin): buckets of 30 min until the
# year ~63,000, 2^23 versions over the table's life, 1024 slices or bins
_BUCKET_BITS, _SLOT_BITS = 30, 10
_BUCKET_MASK, _SLOT_MASK = (1 << _BUCKET_BITS) - 1, (1 << _SLOT_BITS) - 1


class _Cells:
    """Sparse ``code -> row`` store: rows of ``shape`` (a cell's fields, or a bucket's histogram),
    allocated as codes arrive (``first`` at first, doubling), freed rows reused."""

    def __init__(self, shape: tuple[int, ...], dtype: type, first: int) -> None:
        self.index: dict[int, int] = {}
        self.values: np.ndarray = np.zeros((first, *shape), dtype)
        self.free: list[int] = list(range(first - 1, -1, -1))

    def __len__(self) -> int:
        return len(self.index)

    def rows(self, codes: list[int]) -> np.ndarray:
        """Rows of ``codes``, allocating (zeroed) rows for codes not seen yet."""
        got = list(map(self.index.get, codes))
        if None in got:
            for i, c in enumerate(codes):
                if got[i] is None:
                    r = self.index.get(c)
                    if r is None:
                        r = self.index[c] = self._take()
                    got[i] = r
        return np.fromiter(got, np.int64, len(got))

    def _take(self) -> int:
        if not self.free:
            size = len(self.values)
            grown = np.zeros((2 * size, *self.values.shape[1:]), self.values.dtype)
            grown[:size] = self.values
            self.values = grown
            self.free = list(range(2 * size - 1, size - 1, -1))
        return self.free.pop()

    def get(self, code: int) -> np.ndarray | None:
        r = self.index.get(code)
        return None if r is None else self.values[r]

    def drop(self, codes: list[int]) -> None:
        for c in codes:
            r = self.index.pop(c, None)
            if r is not None:
                self.values[r] = 0
                self.free.append(r)

    def to_state(self) -> dict[str, Any]:
        codes = np.fromiter(self.index, np.int64, len(self.index))
        rows = np.fromiter(self.index.values(), np.int64, len(self.index))
        return {"codes": array_to_state(codes), "values": array_to_state(self.values[rows])}

    def load(self, d: dict[str, Any]) -> list[int]:
        codes = array_from_state(d["codes"]).tolist()
        self.values[self.rows(codes)] = array_from_state(d["values"])
        return codes


class VersionHistory:
    """Per (agent, environment, version) time buckets of conversation-level sufficient statistics.

    Bounded: ``days`` of ``bucket_s`` buckets per version, ``max_versions`` versions per (agent,
    environment) (the least recently seen is forgotten), ``conversations`` per generation of the
    conversation table shared by all agents (two generations are remembered). Shadow turns are
    skipped (never seen by customers).

    ``min_window`` = (conversations, buckets): what a reference window needs to count (blue-green's
    ``min_ref_conversations`` in its widest window). A bucket that no window of that many consecutive
    buckets around it can fill is dropped once those windows are complete (it could never be part of
    a reference): a quiet agent keeps hours of history, not days.
    """

    def __init__(
        self,
        *,
        bucket_s: float = 1800.0,
        days: int = 4,
        max_versions: int = 3,
        conversations: int = 200_000,
        max_keys: int = 4,
        max_values: int = 12,
        min_window: tuple[int, int] = (0, 1),
    ) -> None:
        self.bucket_s, self.days, self.max_versions = bucket_s, days, max_versions
        self.max_keys, self.max_values = max_keys, max_values
        self.min_window = (int(min_window[0]), max(int(min_window[1]), 1))
        self.maps: dict[tuple[str, str], SliceMap] = {}
        self.seen: dict[tuple[str, str, str], float] = {}  # version -> watermark when last seen
        self.watermark = -math.inf
        self._cap = conversations
        self._width = conv_cols(SliceMap((), max_keys, max_values))  # vid, bucket, bits, slices..., max
        self.conv = ConvRows(conversations, SUMS, self._width)  # keyed by (agent-env code, conversation id)
        self._ae: dict[tuple[str, str], int] = {}  # small integer per (agent, environment)
        self._ids: dict[tuple[str, str, str], int] = {}  # per kept version (hash() is salted)
        self._rev: dict[int, tuple[str, str, str]] = {}
        self._next_id = 0  # version ids are never reused: old conversation rows may still hold one
        self._versions: dict[tuple[str, str], dict[str, None]] = {}  # per agent, in order of last seen
        self.fields = _Cells((N_FIELDS,), np.float64, 256)  # (vid, bucket, slice) -> fields
        self.hist = _Cells((N_BINS,), np.int32, 16)  # (vid, bucket) -> conversations per slowest-turn bin
        self._vb: dict[int, list[int]] = {}  # (vid, bucket) -> its field codes
        self._by_vid: dict[int, set[int]] = {}  # vid -> its (vid, bucket) codes
        self._age: dict[int, set[int]] = {}  # bucket -> its (vid, bucket) codes, for pruning by age
        self._pending: dict[int, list[int]] = {}  # bucket -> (vid, bucket) codes not yet checked for use
        self._nohist: set[int] = set()  # (vid, bucket)s restored from state v1/v2, kept without histogram

    # -- ingestion -------------------------------------------------------------------------------
    def update(self, turns: Sequence[Any], arms: Sequence[str], cols: TurnColumns | None = None) -> None:
        """Add a batch (``arms`` parallel to ``turns``; ``cols``: the batch's shared columns, optional)."""
        if not len(turns):
            return
        cols = cols if cols is not None else TurnColumns(turns)
        if "shadow" in arms:
            cols = cols.take(np.flatnonzero(~cols.arm_is(arms, "shadow")))
            if not cols.n:
                return
        ts = cols.ts
        self.watermark = max(self.watermark, float(ts.max()))
        if cols.built("route_keys"):  # routed: one lookup per route key
            keys = [_AEV(k) for k in cols.route_keys]
            code = cols.route_code
        else:
            index: dict[tuple[str, str, str], int] = {}
            code = np.fromiter(
                (index.setdefault(k, len(index)) for k in map(_TURN_AEV, cols.turns)), np.intp, cols.n
            )
            keys = list(index)
        for key in dict.fromkeys(keys):
            self._see(key)
        vid = np.array([self._ids[k] for k in keys], np.int64)[code]
        ae = np.array([self._ae[k[:2]] for k in keys], np.int64)[code]
        bucket = np.maximum(np.floor(ts / self.bucket_s), 0).astype(np.int64)
        conv = self.conv
        rows, new = conv.rows(list(zip(ae.tolist(), cols.conversation_id)))
        if new.any():
            at = np.flatnonzero(new)
            r = rows[at]
            conv.cols[r, 0], conv.cols[r, 1], conv.cols[r, 2] = vid[at], bucket[at], 0
            if self.max_keys:
                self._slices(cols, at, r, code, keys)
        u, delta, old_mx, new_mx, moved = conversation_deltas(conv, cols, rows, new, self._width - 1)
        self._add(conv.cols[u], delta, old_mx, new_mx, moved)
        self._prune()

    def _see(self, key: tuple[str, str, str]) -> None:
        self.seen[key] = self.watermark
        ae = key[:2]
        if key not in self._ids:
            self._ids[key] = self._next_id
            self._rev[self._next_id] = key
            self._next_id += 1
        if ae not in self._ae:
            self._ae[ae] = len(self._ae)
            self.maps[ae] = SliceMap((), self.max_keys, self.max_values)
        versions = self._versions.setdefault(ae, {})
        versions.pop(key[2], None)
        versions[key[2]] = None  # most recently seen last
        while len(versions) > self.max_versions:
            self._forget((*ae, next(iter(versions))))

    def _forget(self, key: tuple[str, str, str]) -> None:
        """Drop a version and its buckets (the least recently seen of its agent, or retired)."""
        del self._versions[key[:2]][key[2]]
        self.seen.pop(key, None)
        vid = self._ids.pop(key)
        del self._rev[vid]
        for vb in list(self._by_vid.get(vid, ())):
            self._drop(vb)

    def forget_version(self, agent_id: str, environment: str, version: str) -> None:
        """A retired version leaves the history (later turns of it start it afresh)."""
        key = (agent_id, environment, version)
        if key in self._ids:
            self._forget(key)

    def _slices(
        self, cols: TurnColumns, at: np.ndarray, rows: np.ndarray, code: np.ndarray, keys: list[Any]
    ) -> None:
        """Slices of the new conversations ``at`` (rows ``rows``), per agent's own slice map."""
        seg = cols.segment
        ae_of = np.array([self._ae[k[:2]] for k in keys], np.int64)[code[at]]
        for a in np.unique(ae_of).tolist():
            mine = ae_of == a
            sm = self.maps[keys[int(code[at][mine][0])][:2]]
            self.conv.cols[rows[mine], 3 : 3 + self.max_keys] = sm.slices([seg[i] for i in at[mine].tolist()])

    def _add(
        self, c: np.ndarray, delta: np.ndarray, old_mx: np.ndarray, new_mx: np.ndarray, moved: np.ndarray
    ) -> None:
        """Add per-conversation increments into the cells of their (version, bucket, slice)."""
        vb = (c[:, 0] << _BUCKET_BITS) | c[:, 1]
        keep = self._kept(vb, c[:, 1])
        if not keep.all():
            c, delta, vb = c[keep], delta[keep], vb[keep]
            old_mx, new_mx, moved = old_mx[keep], new_mx[keep], moved[keep]
        m = len(vb)
        if not m:
            return
        self._register(np.unique(vb).tolist())
        sl = np.concatenate([np.zeros((m, 1), np.int64), c[:, 3 : 3 + self.max_keys]], axis=1)
        ok = sl >= 0
        codes = ((vb[:, None] << _SLOT_BITS) | sl)[ok]
        u, inv = np.unique(codes, return_inverse=True)
        ul = u.tolist()
        for code in ul:
            if code not in self.fields.index:
                self._vb[code >> _SLOT_BITS].append(code)
        rows = self.fields.rows(ul)[inv]  # (may grow the values: before reading them)
        np.add.at(self.fields.values, rows, np.broadcast_to(delta[:, None, :], (*sl.shape, N_FIELDS))[ok])
        if moved.any():
            was = moved & (old_mx > 0)
            up, down = self.hist.rows(vb[moved].tolist()), self.hist.rows(vb[was].tolist())
            np.add.at(self.hist.values, (up, new_mx[moved] - 1), 1)
            np.add.at(self.hist.values, (down, old_mx[was] - 1), -1)

    def _kept(self, vb: np.ndarray, bucket: np.ndarray) -> np.ndarray:
        """Conversations whose version is still kept and whose bucket is within ``days``."""
        recent = bucket * self.bucket_s >= self.watermark - self.days * DAY - self.bucket_s
        gone = [v for v in np.unique(vb >> _BUCKET_BITS).tolist() if v not in self._rev]
        return recent & ~np.isin(vb >> _BUCKET_BITS, gone) if gone else recent

    def _register(self, vbs: list[int]) -> None:
        """Index (version, bucket)s seen for the first time, for ``reference`` and pruning."""
        for vb in vbs:
            if vb not in self._vb:
                self._vb[vb] = []
                self._by_vid.setdefault(vb >> _BUCKET_BITS, set()).add(vb)
                self._age.setdefault(vb & _BUCKET_MASK, set()).add(vb)
                if self.min_window[0]:
                    self._pending.setdefault(vb & _BUCKET_MASK, []).append(vb)

    def _drop(self, vb: int) -> None:
        codes = self._vb.pop(vb, None)
        if codes is None:
            return
        self.fields.drop(codes)
        self.hist.drop([vb])
        self._nohist.discard(vb)
        for index, key in ((self._by_vid, vb >> _BUCKET_BITS), (self._age, vb & _BUCKET_MASK)):
            mine = index.get(key)
            if mine is not None:
                mine.discard(vb)
                if not mine:
                    del index[key]

    def _prune(self) -> None:
        """Drop buckets older than ``days``, and buckets no reference window could use."""
        oldest = math.floor((self.watermark - self.days * DAY) / self.bucket_s) - 1
        while self._age and (b := min(self._age)) < oldest:
            for vb in list(self._age[b]):
                self._drop(vb)
        need, span = self.min_window
        done = math.floor(self.watermark / self.bucket_s) - span  # the windows around it are complete
        while self._pending and (b := min(self._pending)) <= done:
            for vb in self._pending.pop(b):
                if vb in self._vb and self._best_window(vb, span) < need:
                    self._drop(vb)

    def _best_window(self, vb: int, span: int) -> float:
        """The most conversations any ``span`` consecutive buckets containing ``vb``'s hold."""
        counts = []
        for b in range(vb - span + 1, vb + span):
            row = self.fields.get((b << _SLOT_BITS) | 0) if b >> _BUCKET_BITS == vb >> _BUCKET_BITS else None
            counts.append(0.0 if row is None else float(row[F_CONV]))
        return max(sum(counts[i : i + span]) for i in range(span))

    # -- reads -----------------------------------------------------------------------------------
    def reference(
        self, agent: str, env: str, version: str | None, t0: float, t1: float
    ) -> dict[str, np.ndarray]:
        """Slice name -> summed fields of ``version``'s conversations that started in [t0, t1) (bucket grid);
        ``LATENCY_MAX`` -> their histogram of slowest turns (absent when a bucket has none: state v2)."""
        vid = self._ids.get((agent, env, version or ""))
        if vid is None:
            return {}
        lo, hi = math.floor(t0 / self.bucket_s), math.ceil(t1 / self.bucket_s)
        vbs = [vb for b in range(max(lo, 0), hi) if (vb := (vid << _BUCKET_BITS) | b) in self._vb]
        if not vbs:
            return {}
        sm = self.maps[(agent, env)]
        total = np.zeros((sm.size, N_FIELDS))
        hist = np.zeros(N_BINS, np.int64)
        for vb in vbs:
            for c in self._vb[vb]:
                total[c & _SLOT_MASK] += self.fields.values[self.fields.index[c]]
            h = self.hist.get(vb)
            if h is not None:
                hist += h
        out = {name: total[s] for s, name in sm.names.items()}
        if not self._nohist.intersection(vbs):  # (absent for buckets of state v1/v2: no histogram)
            out[LATENCY_MAX] = hist
        return out

    def versions(self) -> list[tuple[str, str, str]]:
        """The versions kept, (agent, environment, version)."""
        return list(self._ids)

    @property
    def nbytes(self) -> int:
        """Bytes of the numpy arrays (conversation rows and cells, allocated)."""
        arrays = (self.conv.sums, self.conv.cols, self.fields.values, self.hist.values)
        return sum(a.nbytes for a in arrays)

    # -- state -----------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {
            "v": _STATE_V,
            "bucket_s": self.bucket_s,
            "days": self.days,
            "max_versions": self.max_versions,
            "max_keys": self.max_keys,
            "max_values": self.max_values,
            "min_window": list(self.min_window),
            "cap": self._cap,
            "watermark": self.watermark if math.isfinite(self.watermark) else None,
            "maps": [[*k, m.to_state()] for k, m in self.maps.items()],
            "ae": [[*k, i] for k, i in self._ae.items()],
            "ids": [[*k, i] for k, i in self._ids.items()],
            "next_id": self._next_id,
            "seen": [[*k, ts] for k, ts in self.seen.items()],
            "versions": [[*ae, list(vs)] for ae, vs in self._versions.items()],
            "conv": self.conv.to_state(),
            "fields": self.fields.to_state(),
            "hist": self.hist.to_state(),
            "pending": sorted(self._pending),
            "nohist": sorted(self._nohist),
        }

    @classmethod
    def from_state(cls, d: dict[str, Any], min_window: tuple[int, int] | None = None) -> VersionHistory:
        """Restore; states v1-v3 (a table per agent, dense buckets) are converted (``min_window``: the
        pruning rule, which they did not record)."""
        if d.get("v") in (1, 2, 3):
            return _upgrade(d, min_window or (0, 1))
        if d.get("v") != _STATE_V:
            raise ValueError(f"unknown version history state v{d.get('v')!r}")
        h = cls(
            bucket_s=d["bucket_s"],
            days=d["days"],
            max_versions=d["max_versions"],
            conversations=d["cap"],
            max_keys=d["max_keys"],
            max_values=d["max_values"],
            min_window=tuple(d["min_window"]),
        )
        h.watermark = d["watermark"] if d["watermark"] is not None else -math.inf
        h.maps = {(a, e): SliceMap.from_state(m) for a, e, m in d["maps"]}
        h._ae = {(a, e): i for a, e, i in d["ae"]}
        h._ids = {(a, e, v): i for a, e, v, i in d["ids"]}
        h._rev = {i: k for k, i in h._ids.items()}
        h._next_id = d["next_id"]
        h.seen = {(a, e, v): ts for a, e, v, ts in d["seen"]}
        h._versions = {(a, e): dict.fromkeys(vs) for a, e, vs in d["versions"]}
        h.conv = ConvRows.from_state(d["conv"])
        codes = h.fields.load(d["fields"])
        h._register(sorted({c >> _SLOT_BITS for c in codes}))
        for c in codes:
            h._vb[c >> _SLOT_BITS].append(c)
        h.hist.load(d["hist"])
        h._nohist = set(d["nohist"])
        pending = set(d["pending"])
        h._pending = {b: vbs for b, vbs in h._pending.items() if b in pending}
        return h


def _upgrade(d: dict[str, Any], min_window: tuple[int, int]) -> VersionHistory:
    """A history of state v1-v3 (one conversation table per agent, a dense table per version and
    bucket) in today's form: the same references, the same conversations remembered."""
    h = VersionHistory(
        bucket_s=d["bucket_s"],
        days=d["days"],
        max_versions=d["max_versions"],
        conversations=max(d["cap"], 200_000),
        max_keys=d["max_keys"],
        max_values=d["max_values"],
        min_window=min_window,
    )
    h.watermark = d["watermark"] if d["watermark"] is not None else -math.inf
    h.maps = {(a, e): SliceMap.from_state(m) for a, e, m in d["maps"]}
    h._ae = {ae: i for i, ae in enumerate(h.maps)}
    for a, e, v, ts in sorted(d["seen"], key=lambda r: r[3]):
        h.seen[(a, e, v)] = ts
        h._ids[(a, e, v)] = h._next_id
        h._rev[h._next_id] = (a, e, v)
        h._next_id += 1
        h._versions.setdefault((a, e), {})[v] = None
    gids = {i: h._ids.get((a, e, v), -1) for a, e, v, i in d["ids"]}  # forgotten versions: -1, never kept
    width = h._width
    for a, e, c in d["trackers"]:
        old = ConvRows.from_state(c)
        ae = h._ae[(a, e)]
        for table, into in ((old.old, h.conv.old), (old.cur, h.conv.cur)):
            keys = list(table)
            if not keys:
                continue
            rows = np.fromiter(table.values(), np.int64, len(table))
            new_rows = [h.conv._take() for _ in keys]
            cols = np.zeros((len(rows), width), np.int64)
            got = old.cols[rows]
            cols[:, : got.shape[1]] = got
            cols[:, 0] = [gids.get(g, -1) for g in got[:, 0].tolist()]
            h.conv.sums[new_rows], h.conv.cols[new_rows] = old.sums[rows], cols
            for k, r in zip(keys, new_rows):
                into[(ae, k[2] if isinstance(k, tuple) else k)] = r  # v1 keyed rows by (agent, env, id)
    hists = {(a, e, v): t for a, e, v, t in d.get("hists", [])}  # v1, v2 kept no histograms
    for a, e, v, tables in d["buckets"]:
        vid = h._ids.get((a, e, v))
        if vid is None:
            continue
        for b, t in tables.items():
            vb = (vid << _BUCKET_BITS) | int(b)
            dense = array_from_state(t)
            used = np.flatnonzero(dense.any(axis=1)).tolist()
            h._register([vb])
            codes = [(vb << _SLOT_BITS) | s for s in used]
            h._vb[vb].extend(codes)
            h.fields.values[h.fields.rows(codes)] = dense[used]
            hist = hists.get((a, e, v), {}).get(b)
            if hist is not None:
                h.hist.values[h.hist.rows([vb])] = array_from_state(hist)
            else:
                h._nohist.add(vb)
    return h


class NullHistory(VersionHistory):
    """Keeps nothing: every blue-green rollout falls back to no reference (nodata)."""

    def update(self, turns: Sequence[Any], arms: Sequence[str], cols: TurnColumns | None = None) -> None:
        return None
