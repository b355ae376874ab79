"""The latency sketches of every series: sparse while a series is quiet, dense rows once it is busy.

A dense series holds a cumulative ``int64`` sketch row and ``window_buckets`` ring rows of ``uint32``
(with the defaults 7,896 + 39,480 bytes): 98 % of a series' memory before this module existed, whatever
its traffic. On a platform of thousands of agents most series see a handful of turns, so a series
starts *sparse*: ``bucket -> count`` dicts for the cumulative sketch and for each ring position it
used (a few hundred bytes for a few turns). It is *promoted* to a dense row, for good, once

* it holds more than ``max_cells`` nonzero cells (cumulative plus ring), where the dicts would start to
  cost what a dense row costs; or
* one batch brings it more than ``max_cells // 2`` latencies: a busy series takes the vectorised
  ``np.add.at`` path from then on, so the per-batch Python work on sparse series stays bounded by
  their few distinct cells.

Both forms hold exactly the same counts: every read (``cumulative``, ``window``, the checkpoint's
cells) gives the same numbers whichever form a series is in, which the tests check by running one
stream through ``max_cells=0`` (dense from the first latency), the default, and a huge ``max_cells``
(never promoted). Slots are ``MetricsState``'s series slots; dense rows are numbered apart and
recycled. Slot 0 (``MetricsState``'s trash slot, where fan-out entries for "no series" land) is dense
from the start: it takes every turn without a given segment key.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

import numpy as np

from watcher.stats import SketchLayout

_ONE_I64, _ONE_U32 = np.int64(1), np.uint32(1)


class _Sparse:
    """One quiet series' sketches: bucket -> count, cumulative and per ring position it used."""

    __slots__ = ("cum", "ring", "n")

    def __init__(self) -> None:
        self.cum: dict[int, int] = {}
        self.ring: dict[int, dict[int, int]] = {}
        self.n = 0  # cells held, cumulative and ring (kept as they come and go: checked every batch)


class SketchStore:
    """Cumulative and ring latency sketches per series slot, sparse or dense (see the module doc)."""

    csk: np.ndarray  # dense row -> cumulative counts (int64)
    wsk: np.ndarray  # dense row -> ring position -> counts (uint32)

    def __init__(self, n_buckets: int, window_buckets: int, max_cells: int = 128) -> None:
        if max_cells < 0:
            raise ValueError(f"max_cells must be >= 0, got {max_cells}")
        self.nb, self.b, self.max_cells = n_buckets, window_buckets, max_cells
        self._busy = max_cells // 2  # latencies in one batch that promote a series at once
        self._row = np.full(0, -1, dtype=np.intp)  # slot -> dense row (-1: sparse)
        self._sparse: dict[int, _Sparse] = {}  # sparse slots that hold a latency
        self._rcap = 0
        self._rfree: list[int] = []
        self._grow_rows(4)
        self.grow_slots(1)
        self._promote(np.array([0]))  # the trash slot

    # ---- storage -------------------------------------------------------------------------------
    def grow_slots(self, cap: int) -> None:
        old = len(self._row)
        if cap > old:
            row = np.full(cap, -1, dtype=np.intp)
            row[:old] = self._row
            self._row = row

    def _grow_rows(self, cap: int) -> None:
        csk = np.zeros((cap, self.nb), dtype=np.int64)
        # uint32 halves the largest matrix: one series' ring bucket would need 4e9 latencies to overflow
        # (MetricsState guards it); the cumulative sketch stays int64.
        wsk = np.zeros((cap, self.b, self.nb), dtype=np.uint32)
        if self._rcap:
            csk[: self._rcap] = self.csk
            wsk[: self._rcap] = self.wsk
        self.csk, self.wsk = csk, wsk
        self._rfree.extend(range(cap - 1, self._rcap - 1, -1))
        self._rcap = cap

    def _promote(self, slots: Iterable[int]) -> None:
        """Give each (sparse) slot a dense row holding its counts."""
        for slot in slots:
            if self._row[slot] >= 0:
                continue
            if not self._rfree:
                self._grow_rows(self._rcap + self._rcap // 2)
            row = self._row[slot] = self._rfree.pop()
            self.csk[row] = 0
            self.wsk[row] = 0
            sp = self._sparse.pop(slot, None)
            if sp is not None:
                _put(self.csk[row], sp.cum)
                for pos, cells in sp.ring.items():
                    _put(self.wsk[row, pos], cells)

    def is_dense(self, slot: int) -> bool:
        return bool(self._row[slot] >= 0)

    @property
    def nbytes(self) -> int:
        """The dense rows (allocated, used or free) and an estimate of the sparse dicts."""
        sparse = sum(
            sys.getsizeof(sp.cum) + sys.getsizeof(sp.ring) + sum(map(sys.getsizeof, sp.ring.values())) + 56
            for sp in self._sparse.values()
        )
        return int(self.csk.nbytes + self.wsk.nbytes + self._row.nbytes) + sparse

    # ---- update (per batch) --------------------------------------------------------------------
    def promote_busy(self, batch_latencies: np.ndarray) -> None:
        """Promote the sparse slots this batch brings more than ``max_cells // 2`` latencies (given
        per slot), before their latencies are added: busy series take the dense path."""
        n = len(batch_latencies)
        busy = np.flatnonzero((batch_latencies > self._busy) & (self._row[:n] < 0))
        if len(busy):
            self._promote(busy.tolist())

    def add(self, slots: np.ndarray, buckets: np.ndarray, pos: int | None) -> None:
        """One latency per (slot, bucket) pair, into the cumulative sketches (``pos`` None) or into
        ring position ``pos``."""
        rows = self._row[slots]
        dense = rows >= 0
        if dense.all():  # the busy path: one np.add.at (the increment has the array's dtype: fast path)
            self._add_dense(rows, buckets, pos)
            return
        self._add_dense(rows[dense], buckets[dense], pos)
        quiet = ~dense
        # (slot, bucket) pairs with their counts, in slot order: one sparse-record lookup per slot
        pairs, counts = np.unique(slots[quiet] * self.nb + buckets[quiet], return_counts=True)
        owner = pairs // self.nb
        full: list[int] = []
        sparse, limit = self._sparse, self.max_cells
        sp, cells, last = _Sparse(), {}, -1
        for slot, bucket, n in zip(owner.tolist(), (pairs - owner * self.nb).tolist(), counts.tolist()):
            if slot != last:
                if sp.n > limit:
                    full.append(last)
                last = slot
                sp = sparse.get(slot)  # type: ignore[assignment]
                if sp is None:
                    sp = sparse[slot] = _Sparse()
                cells = sp.cum if pos is None else sp.ring.setdefault(pos, {})
            had = cells.get(bucket)
            if had is None:
                cells[bucket] = n
                sp.n += 1
            else:
                cells[bucket] = had + n
        if sp.n > limit:
            full.append(last)
        if full:
            self._promote(full)

    def _add_dense(self, rows: np.ndarray, buckets: np.ndarray, pos: int | None) -> None:
        if pos is None:
            np.add.at(self.csk.reshape(-1), rows * self.nb + buckets, _ONE_I64)
        else:
            np.add.at(self.wsk.reshape(-1), (rows * self.b + pos) * self.nb + buckets, _ONE_U32)

    def clear_ring(self, slots: np.ndarray, pos: int) -> None:
        """Ring position ``pos`` of these slots starts a new event-time bucket: empty it."""
        rows = self._row[slots]
        dense = rows >= 0
        self.wsk[rows[dense], pos] = 0
        if not dense.all():
            for slot in slots[~dense].tolist():
                sp = self._sparse.get(slot)
                if sp is not None:
                    sp.n -= len(sp.ring.pop(pos, ()))

    def clear_cumulative(self, slots: Iterable[int]) -> None:
        for slot in slots:
            row = self._row[slot]
            if row >= 0:
                self.csk[row] = 0
            elif slot in self._sparse:
                sp = self._sparse[slot]
                sp.n -= len(sp.cum)
                sp.cum.clear()

    def free(self, slots: Iterable[int]) -> None:
        """These slots no longer hold a series (their next series starts sparse and empty)."""
        for slot in slots:
            row = int(self._row[slot])
            if row >= 0:
                self._rfree.append(row)
                self._row[slot] = -1
            self._sparse.pop(slot, None)

    # ---- reads ---------------------------------------------------------------------------------
    def cumulative(self, slot: int) -> np.ndarray:
        """The slot's cumulative counts (``int64``, a view for a dense slot: do not write)."""
        row = self._row[slot]
        if row >= 0:
            return self.csk[row]
        counts = np.zeros(self.nb, dtype=np.int64)
        sp = self._sparse.get(slot)
        if sp is not None:
            _put(counts, sp.cum)
        return counts

    def window(self, slot: int, positions: np.ndarray) -> np.ndarray:
        """The slot's counts summed over the ring positions selected by the boolean ``positions``."""
        row = self._row[slot]
        if row >= 0:
            return self.wsk[row, positions].sum(axis=0, dtype=np.int64)
        counts = np.zeros(self.nb, dtype=np.int64)
        sp = self._sparse.get(slot)
        if sp is not None:
            for pos, cells in sp.ring.items():
                if positions[pos]:
                    for bucket, n in cells.items():
                        counts[bucket] += n
        return counts

    def quantiles(
        self, slot: int, positions: np.ndarray | None, layout: SketchLayout, qs: Sequence[float]
    ) -> list[float | None]:
        """Quantiles of the slot's cumulative sketch (``positions`` None) or of the ring positions
        selected: a sparse slot answers from its few cells, with the same answers."""
        row = self._row[slot]
        if row >= 0:
            counts = (
                self.csk[row] if positions is None else self.wsk[row, positions].sum(axis=0, dtype=np.int64)
            )
            return layout.quantiles(counts, qs)
        sp = self._sparse.get(slot)
        cells: dict[int, int] = {}
        if sp is not None and positions is None:
            cells = sp.cum
        elif sp is not None and positions is not None:
            parts = [c for pos, c in sp.ring.items() if positions[pos]]
            if len(parts) == 1:
                cells = parts[0]
            else:
                for part in parts:
                    for bucket, n in part.items():
                        cells[bucket] = cells.get(bucket, 0) + n
        buckets = sorted(cells)
        return layout.cell_quantiles(buckets, [cells[b] for b in buckets], qs)

    def cells(self, slot: int, pos: int | None) -> tuple[list[int], list[int]]:
        """Nonzero buckets and their counts (buckets ascending) of the cumulative sketch (``pos``
        None) or of one ring position."""
        row = self._row[slot]
        if row >= 0:
            counts = self.csk[row] if pos is None else self.wsk[row, pos]
            nz = np.flatnonzero(counts)
            return nz.tolist(), counts[nz].tolist()
        sp = self._sparse.get(slot)
        cells = None if sp is None else sp.cum if pos is None else sp.ring.get(pos)
        if not cells:
            return [], []
        buckets = sorted(cells)
        return buckets, [cells[b] for b in buckets]

    def flat_cells(self, slots: list[int], positions: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The nonzero cells of the stacked sketches of ``slots`` as flat indices (ascending) and counts:
        cumulative ``(len(slots), nb)`` when ``positions`` is None, else the ring ``(len(slots), b,
        nb)`` with only the positions ``positions[i]`` (boolean, per slot) kept."""
        idx: list[int] = []
        val: list[int] = []
        dense: list[np.ndarray] = []  # flat indices of the dense slots' cells
        dense_val: list[np.ndarray] = []
        nb, stride = self.nb, self.nb if positions is None else self.b * self.nb
        rows = self._row[slots].tolist()
        for i, (slot, row) in enumerate(zip(slots, rows)):
            if row >= 0:
                block = self.csk[row] if positions is None else self.wsk[row] * positions[i][:, None]
                nz = np.flatnonzero(block)
                dense.append(i * stride + nz)
                dense_val.append(block.reshape(-1)[nz].astype(np.int64))
                continue
            sp = self._sparse.get(slot)
            if sp is None:
                continue
            if positions is None:
                parts = [(0, sp.cum)]
            else:
                parts = sorted((p, c) for p, c in sp.ring.items() if positions[i, p])
            for p, cells in parts:
                base = i * stride + p * nb
                for bucket in sorted(cells):
                    idx.append(base + bucket)
                    val.append(cells[bucket])
        flat = np.asarray(idx, dtype=np.int64)
        counts = np.asarray(val, dtype=np.int64)
        if dense:
            flat = np.concatenate([flat, *dense])
            counts = np.concatenate([counts, *dense_val])
            order = np.argsort(flat, kind="stable")
            flat, counts = flat[order], counts[order]
        return flat, counts

    # ---- loading (checkpoints) -----------------------------------------------------------------
    def load(self, slots: list[int], cum: np.ndarray, ring: np.ndarray) -> None:
        """Set the sketches of fresh slots from dense counts: ``cum`` ``(n, nb)``, ``ring`` ``(n, b,
        nb)``. A slot whose cells are too many for the sparse form is dense, as if it had grown so."""
        cells = np.count_nonzero(cum, axis=1) + np.count_nonzero(ring.reshape(len(slots), -1), axis=1)
        for i, slot in enumerate(slots):
            if cells[i] > self.max_cells:
                self._promote([slot])
                row = self._row[slot]
                self.csk[row] = cum[i]
                self.wsk[row] = ring[i]
            elif cells[i]:
                sp = self._sparse[slot] = _Sparse()
                sp.n = int(cells[i])
                nz = np.flatnonzero(cum[i])
                sp.cum = dict(zip(nz.tolist(), cum[i, nz].tolist()))
                for pos in np.flatnonzero(ring[i].any(axis=1)).tolist():
                    nz = np.flatnonzero(ring[i, pos])
                    sp.ring[pos] = dict(zip(nz.tolist(), ring[i, pos, nz].tolist()))


def _put(counts: np.ndarray, cells: dict[int, int]) -> None:
    if cells:
        counts[np.fromiter(cells.keys(), np.intp, len(cells))] = np.fromiter(
            cells.values(), np.int64, len(cells)
        )


__all__ = ["SketchStore"]
