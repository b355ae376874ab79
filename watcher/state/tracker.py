"""Conversation-level sufficient statistics: the fields blue-green compares, and the per-conversation
bookkeeping that produces them.

Per conversation (a row of a ``ConvRows`` table) the running quality and log-latency sums, its
first-event bits and its slowest turn; per batch, ``conversation_deltas`` turns the batch's turns into
increments of the fields: conversations; the six cluster sums of quality and of log latency
(``stats.MEAN_FIELDS``); conversations with a first escalation / error / compliance event. A
``Tracker`` is one stream's table (a blue-green judge's green); ``VersionHistory`` (``history``) keeps
the same fields for every version's past, in one table for all agents.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from watcher.contract import MEAN_METRICS, RATE_METRICS, TurnColumns
from watcher.state.slices import ConvRows, SliceMap
from watcher.stats import MEAN_FIELDS, bins_of_log, mean_deltas

__all__ = [
    "DAY",
    "F_CONV",
    "F_RATE",
    "LATENCY_MAX",
    "MEAN_AT",
    "N_FIELDS",
    "SUMS",
    "Table",
    "Tracker",
    "conv_cols",
    "conversation_deltas",
    "pad_conv_cols",
]

DAY = 86400.0
# fields: conversations; 6 cluster sums per mean metric; first-event conversations per rate metric
# (the metric catalogue's, in its order)
F_CONV = 0
MEAN_AT = {m.name: 1 + j * MEAN_FIELDS for j, m in enumerate(MEAN_METRICS)}
F_RATE = {m.name: 1 + len(MEAN_METRICS) * MEAN_FIELDS + i for i, m in enumerate(RATE_METRICS)}
N_FIELDS = 1 + len(MEAN_METRICS) * MEAN_FIELDS + len(RATE_METRICS)
SUMS = 2 * len(MEAN_METRICS)  # a conversation's running (S, n) per mean metric
# the reserved key of ``reference()``'s answer holding the histogram of conversations' slowest turn
# (not a slice name: those are "all" or "key=value")
LATENCY_MAX = "~latency_max"

# (group, bucket) -> (fields per slice (slices, N_FIELDS), histogram of conversation maxima (N_BINS,)),
# or None when that group and bucket are not kept
Table = Callable[[int, int], "tuple[np.ndarray, np.ndarray] | None"]


def conv_cols(slices: SliceMap) -> int:
    return 4 + max(slices.max_keys, 1)  # group, bucket, bits, slices..., max latency bin + 1


def pad_conv_cols(conv: ConvRows, slices: SliceMap) -> None:
    """Conversation tables of state v2 lack the max-latency column: add it (0 = none seen yet; such a
    conversation enters the histogram at its next turn with a latency)."""
    width = conv_cols(slices)
    if conv.cols.shape[1] < width:
        conv.cols = np.concatenate(
            [conv.cols, np.zeros((len(conv.cols), width - conv.cols.shape[1]), np.int64)], 1
        )


def conversation_deltas(
    conv: ConvRows, cols: TurnColumns, rows: np.ndarray, new: np.ndarray, mx: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A batch's increments per distinct conversation row: ``(rows u, fields (len(u), N_FIELDS),
    previous and new slowest-turn bin + 1, which moved)``. Updates the rows' running sums, event bits
    (column 2) and slowest bin (column ``mx``)."""
    u, inv = np.unique(rows, return_inverse=True)
    m = len(u)
    delta = np.zeros((m, N_FIELDS))
    delta[:, F_CONV] = np.bincount(inv, weights=new, minlength=m)
    old = conv.sums[u]
    new_sums = old.copy()
    loglat = np.log(np.maximum(cols.latency, 1e-3))  # also the slowest turns' histogram's
    for j, d in enumerate(MEAN_METRICS):
        x = getattr(cols, d.column)
        if d.log_scale:
            x = loglat if d.column == "latency" else np.log(np.maximum(x, 1e-3))
        ok = ~np.isnan(x)
        new_sums[:, 2 * j] += np.bincount(inv[ok], weights=x[ok], minlength=m)
        new_sums[:, 2 * j + 1] += np.bincount(inv[ok], minlength=m)
        f = MEAN_AT[d.name]
        delta[:, f : f + MEAN_FIELDS] = mean_deltas(
            old[:, 2 * j], old[:, 2 * j + 1], new_sums[:, 2 * j], new_sums[:, 2 * j + 1]
        )
    conv.sums[u] = new_sums
    bits = conv.cols[u, 2]
    for b, name in enumerate(F_RATE):
        pos = np.flatnonzero(cols.event(name))
        if len(pos):
            hit = np.zeros(m, bool)
            hit[inv[pos]] = True
            first = hit & (((bits >> b) & 1) == 0)
            bits[first] |= 1 << b
            delta[:, F_RATE[name]] = first
    conv.cols[u, 2] = bits
    # slowest turn so far (bin + 1; 0 = no latency yet): conversations whose maximum rose move bins
    old_mx = conv.cols[u, mx]
    new_mx = old_mx.copy()
    np.maximum.at(new_mx, inv, bins_of_log(loglat) + 1)
    conv.cols[u, mx] = new_mx
    return u, delta, old_mx, new_mx, new_mx > old_mx


class Tracker:
    """Conversation-level sufficient statistics of one (agent, environment) stream (a blue-green judge's).

    Rows are keyed by conversation id; ``add`` adds a batch's increments into ``table(group, bucket)``
    -> ((slices, N_FIELDS) fields, (N_BINS,) histogram) (None: not kept), each conversation in the
    group and bucket of its first turn. The histogram counts each conversation once, in the bin of its
    slowest turn so far: when a later turn is slower, the conversation moves up (-1 old bin, +1 new).
    """

    def __init__(self, cap: int, slices: SliceMap) -> None:
        self.slices = slices
        # sums: (S, n) per mean metric; cols: group, bucket, bits, slices..., max latency bin + 1 (0: none)
        self.conv = ConvRows(cap, SUMS, conv_cols(slices))
        self.mx = conv_cols(slices) - 1

    def add(self, cols: TurnColumns, groups: np.ndarray, buckets: np.ndarray, table: Table) -> None:
        if not cols.n:
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
        u, delta, old_mx, new_mx, moved = conversation_deltas(conv, cols, rows, new, self.mx)
        m = len(u)
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
