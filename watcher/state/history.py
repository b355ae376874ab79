"""Per-version history of conversation-level sufficient statistics: blue-green's reference.

The engine feeds every batch (``VersionHistory.update(turns, arms, cols)``); a blue-green judge reads,
at the switch, what the old (blue) version did in given time windows (``reference``). Per
(agent, environment, version) and time bucket, per segment slice, the fields are: conversations; the
six cluster sums of quality and of log latency (``stats.MEAN_FIELDS``); conversations with a first
escalation / error / compliance event. Per bucket, overall only, also a histogram of each
conversation's slowest turn (``watcher.stats.latency_bins``; blue-green's latency-tail reference). A
conversation counts in the bucket and version of its first turn. Aggregation is vectorised over the
batch's ``TurnColumns`` (one C-level pass per column; Python runs per distinct conversation and per
distinct (version, bucket) only).
"""

from __future__ import annotations

import itertools
import math
import operator
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from watcher.contract import TurnColumns
from watcher.state.slices import ConvRows, SliceMap
from watcher.stats import MEAN_FIELDS, array_from_state, array_to_state, mean_deltas
from watcher.stats import latency_bins as lb

__all__ = [
    "VersionHistory",
    "NullHistory",
    "Tracker",
    "F_CONV",
    "F_Q",
    "F_L",
    "F_RATE",
    "N_FIELDS",
    "MEAN_AT",
    "RATES",
    "DAY",
    "LATENCY_MAX",
    "pad_conv_cols",
]

DAY = 86400.0
MEANS = ("quality", "latency")
RATES = ("escalation", "error", "compliance")
_EVENT_COLUMN = {"escalation": "escalated", "error": "error", "compliance": "compliance"}  # TurnColumns
# fields: conversations; 6 cluster sums per mean metric; first-event conversations per rate metric
F_CONV, F_Q, F_L = 0, 1, 1 + MEAN_FIELDS
F_RATE = {name: 1 + 2 * MEAN_FIELDS + i for i, name in enumerate(RATES)}
N_FIELDS = 1 + 2 * MEAN_FIELDS + len(RATES)
MEAN_AT = {"quality": F_Q, "latency": F_L}
_AEV = operator.itemgetter(0, 1, 2)  # (agent, environment, version) of a route key
_TURN_AEV = operator.attrgetter("agent_id", "environment", "version")
_STATE_V = 3  # v3: latency histograms per bucket, a conversation-max column in the conversation table
# the reserved key of ``reference()``'s answer holding the histogram of conversations' slowest turn
# (not a slice name: those are "all" or "key=value")
LATENCY_MAX = "~latency_max"

# (group, bucket) -> (fields per slice (slices, N_FIELDS), histogram of conversation maxima (N_BINS,)),
# or None when that group and bucket are not kept
Table = Callable[[int, int], "tuple[np.ndarray, np.ndarray] | None"]


def _conv_cols(slices: SliceMap) -> int:
    return 4 + max(slices.max_keys, 1)  # group, bucket, bits, slices..., max latency bin + 1


def pad_conv_cols(conv: ConvRows, slices: SliceMap) -> None:
    """Conversation tables of state v2 lack the max-latency column: add it (0 = none seen yet; such a
    conversation enters the histogram at its next turn with a latency)."""
    width = _conv_cols(slices)
    if conv.cols.shape[1] < width:
        conv.cols = np.concatenate(
            [conv.cols, np.zeros((len(conv.cols), width - conv.cols.shape[1]), np.int64)], 1
        )


class Tracker:
    """Conversation-level sufficient statistics of one (agent, environment) stream.

    Rows are keyed by conversation id; ``add`` adds a batch's increments into ``table(group, bucket)``
    -> ((slices, N_FIELDS) fields, (N_BINS,) histogram) (None: not kept), each conversation in the
    group and bucket of its first turn. The histogram counts each conversation once, in the bin of its
    slowest turn so far: when a later turn is slower, the conversation moves up (-1 old bin, +1 new).
    """

    def __init__(self, cap: int, slices: SliceMap) -> None:
        self.slices = slices
        # sums: q S,n, loglat S,n; cols: group, bucket, bits, slices..., max latency bin + 1 (0: none)
        self.conv = ConvRows(cap, 4, _conv_cols(slices))
        self.mx = _conv_cols(slices) - 1

    def add(self, cols: TurnColumns, groups: np.ndarray, buckets: np.ndarray, table: Table) -> None:
        n = cols.n
        if not n:
            return
        conv = self.conv
        rows, new = conv.rows(cols.conversation_id)
        if new.any():
            at = np.flatnonzero(new)
            conv.cols[rows[at], 0], conv.cols[rows[at], 1], conv.cols[rows[at], 2] = (
                groups[at],
                buckets[at],
                0,
            )
            mk = self.slices.max_keys
            if mk:
                seg = cols.segment
                conv.cols[rows[at], 3 : 3 + mk] = self.slices.slices([seg[i] for i in at.tolist()])
        u, inv = np.unique(rows, return_inverse=True)
        m = len(u)
        delta = np.zeros((m, N_FIELDS))
        delta[:, F_CONV] = np.bincount(inv, weights=new, minlength=m)
        old = conv.sums[u]
        new_sums = old.copy()
        loglat = np.log(np.maximum(cols.latency, 1e-3))
        for j, x in enumerate((cols.quality, loglat)):
            ok = ~np.isnan(x)
            new_sums[:, 2 * j] += np.bincount(inv[ok], weights=x[ok], minlength=m)
            new_sums[:, 2 * j + 1] += np.bincount(inv[ok], minlength=m)
            f = MEAN_AT[MEANS[j]]
            delta[:, f : f + MEAN_FIELDS] = mean_deltas(
                old[:, 2 * j], old[:, 2 * j + 1], new_sums[:, 2 * j], new_sums[:, 2 * j + 1]
            )
        conv.sums[u] = new_sums
        bits = conv.cols[u, 2]
        for b, name in enumerate(RATES):
            pos = np.flatnonzero(getattr(cols, _EVENT_COLUMN[name]))
            if len(pos):
                hit = np.zeros(m, bool)
                hit[inv[pos]] = True
                first = hit & (((bits >> b) & 1) == 0)
                bits[first] |= 1 << b
                delta[:, F_RATE[name]] = first
        conv.cols[u, 2] = bits
        # slowest turn so far (bin + 1; 0 = no latency yet): conversations whose maximum rose move bins
        old_mx = conv.cols[u, self.mx]
        new_mx = old_mx.copy()
        np.maximum.at(new_mx, inv, lb.bins_of_log(loglat) + 1)
        moved = new_mx > old_mx
        conv.cols[u, self.mx] = new_mx
        c = conv.cols[u]
        sl = np.concatenate([np.zeros((m, 1), np.int64), c[:, 3 : 3 + self.slices.max_keys]], axis=1)
        key = c[:, 0] * (1 << 32) + c[:, 1]  # (group, bucket) of each conversation; few distinct
        uk, kinv = np.unique(key, return_inverse=True)
        for i, k in enumerate(uk.tolist()):
            tables = table(k >> 32, k & 0xFFFFFFFF)
            if tables is None:
                continue
            t, hist = tables
            at = kinv == i
            s, d = sl[at], delta[at]
            ok = s >= 0
            np.add.at(t, s[ok], np.broadcast_to(d[:, None, :], (*s.shape, N_FIELDS))[ok])
            mv = at & moved
            if mv.any():
                np.add.at(hist, new_mx[mv] - 1, 1)
                was = mv & (old_mx > 0)
                np.add.at(hist, old_mx[was] - 1, -1)


class VersionHistory:
    """Per (agent, environment, version) time buckets of conversation-level sufficient statistics.

    Bounded: ``days`` of ``bucket_s`` buckets per version, ``max_versions`` versions per (agent,
    environment) (the least recently seen is forgotten), a bounded conversation table; per bucket one
    int32 histogram of conversation maxima (``latency_bins.N_BINS`` bins, 2.7 KB). A conversation
    counts in the bucket and version of its first turn. Shadow turns are skipped (never seen by customers).
    """

    def __init__(
        self,
        *,
        bucket_s: float = 1800.0,
        days: int = 4,
        max_versions: int = 3,
        conversations: int = 100_000,
        max_keys: int = 4,
        max_values: int = 12,
    ) -> None:
        self.bucket_s, self.days, self.max_versions = bucket_s, days, max_versions
        self.max_keys, self.max_values = max_keys, max_values
        self.maps: dict[tuple[str, str], SliceMap] = {}
        self.trackers: dict[tuple[str, str], Tracker] = {}
        self.buckets: dict[tuple[str, str, str], dict[int, np.ndarray]] = {}
        self.hists: dict[
            tuple[str, str, str], dict[int, np.ndarray]
        ] = {}  # same keys: slowest-turn histograms
        self.seen: dict[tuple[str, str, str], float] = {}
        self.watermark = -math.inf
        self._cap = conversations
        self._ids: dict[tuple[str, str, str], int] = {}  # stable small integer per version (hash() is salted)
        self._rev: dict[int, tuple[str, str, str]] = {}

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
        bucket = np.floor(ts / self.bucket_s).astype(np.int64)
        # (agent, environment, version) per turn, numbered by first appearance in one C-level pass
        codes: defaultdict[tuple[str, str, str], int] = defaultdict(itertools.count().__next__)
        if cols.built("route_keys"):  # routed: one lookup per route key (numbered the same way)
            keys_of = cols.route_keys
            code = np.fromiter(map(codes.__getitem__, map(_AEV, keys_of)), np.int64, len(keys_of))[
                cols.route_code
            ]
        else:
            code = np.fromiter(map(codes.__getitem__, map(_TURN_AEV, cols.turns)), np.int64, cols.n)
        keys = list(codes)
        for key in keys:
            self.seen[key] = self.watermark
        gid = np.array([self._gid(k) for k in keys], np.int64)
        for ae in dict.fromkeys(k[:2] for k in keys):
            mine = np.array([k[:2] == ae for k in keys])
            sub = cols if mine.all() else cols.take(np.flatnonzero(mine[code]))
            tracker = self.trackers.get(ae)
            if tracker is None:
                sm = self.maps[ae] = SliceMap((), self.max_keys, self.max_values)
                tracker = self.trackers[ae] = Tracker(self._cap, sm)
            self._evict(ae)
            idx = slice(None) if sub is cols else mine[code]
            tracker.add(sub, gid[code[idx]], bucket[idx], lambda g, b, ae=ae: self._table(ae, g, b))
        self._prune()

    def _gid(self, key: tuple[str, str, str]) -> int:
        if key not in self._ids:
            self._ids[key] = len(self._ids)
            self._rev[self._ids[key]] = key
        return self._ids[key]

    def _table(self, ae: tuple[str, str], g: int, b: int) -> tuple[np.ndarray, np.ndarray] | None:
        key = self._rev.get(g)
        if (
            key is None
            or key not in self.seen
            or b * self.bucket_s < self.watermark - self.days * DAY - self.bucket_s
        ):
            return None
        tables = self.buckets.setdefault(key, {})
        t = tables.get(b)
        if t is None:
            t = tables[b] = np.zeros((self.maps[ae].size, N_FIELDS))
        hists = self.hists.setdefault(key, {})
        h = hists.get(b)
        if h is None:
            h = hists[b] = np.zeros(lb.N_BINS, np.int32)
        return t, h

    def _evict(self, ae: tuple[str, str]) -> None:
        mine = sorted((ts, k) for k, ts in self.seen.items() if k[:2] == ae)
        for _, k in mine[: max(len(mine) - self.max_versions, 0)]:
            del self.seen[k]
            self.buckets.pop(k, None)
            self.hists.pop(k, None)

    def _prune(self) -> None:
        oldest = math.floor((self.watermark - self.days * DAY) / self.bucket_s) - 1
        for tables in (*self.buckets.values(), *self.hists.values()):
            for b in [b for b in tables if b < oldest]:
                del tables[b]

    def reference(
        self, agent: str, env: str, version: str | None, t0: float, t1: float
    ) -> dict[str, np.ndarray]:
        """Slice name -> summed fields of ``version``'s conversations that started in [t0, t1) (bucket grid);
        ``LATENCY_MAX`` -> their histogram of slowest turns (absent when a bucket has none: state v2)."""
        key = (agent, env, version or "")
        tables = self.buckets.get(key, {})
        lo, hi = math.floor(t0 / self.bucket_s), math.ceil(t1 / self.bucket_s)
        parts = [t for b, t in tables.items() if lo <= b < hi]
        if not parts:
            return {}
        total = sum(parts)
        names = self.maps[(agent, env)].names
        out = {name: total[s] for s, name in names.items()}
        hists = self.hists.get(key, {})
        if all(b in hists for b in tables if lo <= b < hi):
            out[LATENCY_MAX] = np.sum([hists[b] for b in tables if lo <= b < hi], axis=0, dtype=np.int64)
        return out

    def to_state(self) -> dict[str, Any]:
        return {
            "v": _STATE_V,
            "bucket_s": self.bucket_s,
            "days": self.days,
            "max_versions": self.max_versions,
            "max_keys": self.max_keys,
            "max_values": self.max_values,
            "cap": self._cap,
            "watermark": self.watermark if math.isfinite(self.watermark) else None,
            "maps": [[*k, m.to_state()] for k, m in self.maps.items()],
            "trackers": [[*k, t.conv.to_state()] for k, t in self.trackers.items()],
            "ids": [[*k, i] for k, i in self._ids.items()],
            "seen": [[*k, ts] for k, ts in self.seen.items()],
            "buckets": [
                [*k, {str(b): array_to_state(t) for b, t in tables.items()}]
                for k, tables in self.buckets.items()
            ],
            "hists": [
                [*k, {str(b): array_to_state(h) for b, h in hists.items()}] for k, hists in self.hists.items()
            ],
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> VersionHistory:
        if d.get("v") not in (1, 2, _STATE_V):
            raise ValueError(f"unknown version history state v{d.get('v')!r}")
        h = cls(
            bucket_s=d["bucket_s"],
            days=d["days"],
            max_versions=d["max_versions"],
            conversations=d["cap"],
            max_keys=d["max_keys"],
            max_values=d["max_values"],
        )
        h.watermark = d["watermark"] if d["watermark"] is not None else -math.inf
        h.maps = {(a, e): SliceMap.from_state(m) for a, e, m in d["maps"]}
        for a, e, c in d["trackers"]:
            t = h.trackers[(a, e)] = Tracker(h._cap, h.maps[(a, e)])
            t.conv = ConvRows.from_state(c)
            if d["v"] == 1:  # v1 keyed rows by (agent, environment, conversation id); v2 by the id
                t.conv.cur = {k[2] if isinstance(k, tuple) else k: r for k, r in t.conv.cur.items()}
                t.conv.old = {k[2] if isinstance(k, tuple) else k: r for k, r in t.conv.old.items()}
            pad_conv_cols(t.conv, h.maps[(a, e)])  # v1, v2: no max-latency column
        h._ids = {(a, e, v): i for a, e, v, i in d["ids"]}
        h._rev = {i: k for k, i in h._ids.items()}
        h.seen = {(a, e, v): ts for a, e, v, ts in d["seen"]}
        h.buckets = {
            (a, e, v): {int(b): array_from_state(t) for b, t in tables.items()}
            for a, e, v, tables in d["buckets"]
        }
        # v1, v2 kept no histograms: the tail reference of those buckets is missing until they age out
        h.hists = {
            (a, e, v): {int(b): array_from_state(t) for b, t in hists.items()}
            for a, e, v, hists in d.get("hists", [])
        }
        return h


class NullHistory(VersionHistory):
    """Keeps nothing: every blue-green rollout falls back to no reference (nodata)."""

    def update(self, turns: Sequence[Any], arms: Sequence[str], cols: TurnColumns | None = None) -> None:
        return None
