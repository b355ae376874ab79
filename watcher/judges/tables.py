"""The judge's data structures: the per-conversation table and the per-group cell sums.

``_Conversations`` maps conversation ids to rows (two bounded generations, a vectorised hash table)
holding each conversation's arm, stratum, epoch, slices, "first event" flags and running sums.
``_CellSums`` sums per-conversation increments per *group* of cells and expands them into the
judge's (slice, stratum, arm, field) tables on demand. Both are private to ``watcher.judges.canary``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from watcher.contract import MEAN_METRICS
from watcher.stats import array_from_state, array_to_state, cells_to_state

# what watcher.judges.canary imports; the underscore names are private to the judge
__all__ = ["_STRATA", "_CellSums", "_Conversations", "_put_rows", "id_hashes"]

_STRATA = 16
_GROUPS = 4096  # cell groups kept before they are folded into materialised tables
_FIRST_ROWS = 256  # rows of a new conversation table (doubling as conversations arrive)


def id_hashes(ids: list[str]) -> np.ndarray:
    """64-bit hashes of ids for the conversation table (0 is its empty marker)."""
    h = np.fromiter(map(hash, ids), np.int64, len(ids))
    h[h == 0] = 1
    return h


class _Conversations:
    """Bounded conversation table: two generations of id -> slot, arrays indexed by slot.

    Ids are found through one open-addressing hash table per generation (numpy arrays of the ids'
    64-bit ``hash``, linear probing): a batch is looked up in a few vectorised probes, where a dict
    lookup per turn costs ~0.5 us of cache misses on a large table. Two ids with the same 64-bit hash
    would share a row (probability ~1e-14 per turn). ``ids`` keeps slot -> id for the state, which
    stores ids, never hashes (``hash`` of a str is salted per process).

    Sized by traffic (issue #13): generation ``g`` owns slots ``[(g % 2) * cap, ... + cap)``, but the
    arrays only reach the highest slot used so far (they double as conversations arrive) and the hash
    tables grow with the conversations they hold (load <= 0.4). A quiet rollout's table is a few
    kilobytes; a busy one reaches the bound of ``2 * cap`` rows.
    """

    def __init__(self, cap: int, n_keys: int, rows: int = _FIRST_ROWS) -> None:
        self.cap = cap
        self.gen = 0
        self.next = 0
        self._n_keys = max(n_keys, 1)
        size = min(max(rows, 1), 2 * cap)
        self.arm = np.zeros(size, np.int8)
        self.rho = np.zeros(size, np.int16)
        self.epoch = np.zeros(size, np.int64)
        self.slices = np.full((size, self._n_keys), -1, np.int16)
        self.flags = np.zeros(size, np.uint16)
        self.sums = np.zeros((size, 2 * len(MEAN_METRICS)))  # per catalogue mean metric: S, n
        self.group = np.zeros(size, np.int64)  # _CellSums group
        self.hashes = np.zeros(size, np.int64)  # each slot's id hash (to grow the hash tables)
        self.ids: list[str | None] = [None] * size
        self.scratch = np.zeros(size, np.int64)  # slot -> batch index (see ``batch_index``)
        self._held = [0, 0]  # ids in each generation's hash table
        self._tables(_width(min(cap, 64)))

    _ROWS = ("arm", "rho", "epoch", "slices", "flags", "sums", "group")

    def _tables(self, width: int) -> None:
        self.mask = width - 1
        self.keys = np.zeros((2, width), np.int64)  # per generation; 0 = empty
        self.vals = np.zeros((2, width), np.int64)

    @property
    def base(self) -> int:
        return (self.gen % 2) * self.cap

    def __len__(self) -> int:
        """Conversations in the current generation."""
        return self.next - self.base

    def claim(self, k: int) -> int:
        """Reserve the next ``k`` slots of the current generation (growing the arrays); their first."""
        first = self.next
        self.next += k
        self._grow(self.next)
        return first

    def _grow(self, rows: int) -> None:
        size = len(self.arm)
        if rows <= size:
            return
        grown = min(max(2 * size, rows), 2 * self.cap)
        for name in (*self._ROWS, "hashes", "scratch"):
            a = getattr(self, name)
            b = np.full((grown, *a.shape[1:]), -1 if name == "slices" else 0, a.dtype)
            b[:size] = a
            setattr(self, name, b)
        self.ids.extend([None] * (grown - size))

    def rotate(self) -> None:
        # The oldest generation is forgotten: its conversations keep their contribution to the sums
        # and would count as new conversations if they came back (documented approximation).
        self.gen += 1
        base = self.base
        region = slice(base, base + self.cap)
        for a in (self.arm, self.rho, self.epoch, self.flags, self.sums, self.group, self.hashes):
            a[region] = 0
        self.slices[region] = -1
        self.ids[region] = [None] * len(self.ids[region])
        self.keys[self.gen % 2] = 0
        self._held[self.gen % 2] = 0
        self.next = base

    def find(self, h: np.ndarray, old: bool = False) -> np.ndarray:
        """Slots of hashed ids in the current (or the old) generation, -1 where absent."""
        t = (self.gen + old) % 2
        keys, vals, mask = self.keys[t], self.vals[t], self.mask
        out = np.full(len(h), -1, np.int64)
        at, pos = np.arange(len(h)), h & mask
        while len(at):
            k = keys[pos]
            hit = k == h
            out[at[hit]] = vals[pos[hit]]
            more = ~hit & (k != 0)
            at, h, pos = at[more], h[more], (pos[more] + 1) & mask
        return out

    def insert(self, h: np.ndarray, slots: np.ndarray) -> None:
        """Add distinct, absent hashed ids with their slots to the current generation (``ids``: caller)."""
        t = self.gen % 2
        self.hashes[slots] = h
        self._held[t] += len(h)
        if 5 * self._held[t] > 2 * (self.mask + 1):  # load above 0.4: a table twice as wide
            self._rehash(_width(self._held[t]))
        else:
            self._put(t, h, slots)

    def _put(self, t: int, h: np.ndarray, slots: np.ndarray) -> None:
        keys, vals, mask = self.keys[t], self.vals[t], self.mask
        pos = h & mask
        while len(h):
            free = keys[pos] == 0
            keys[pos[free]] = h[free]  # of several ids claiming one free cell, one write wins
            won = keys[pos] == h
            vals[pos[won]] = slots[won]
            rest = ~won
            h, slots, pos = h[rest], slots[rest], (pos[rest] + 1) & mask

    def _rehash(self, width: int) -> None:
        """Both generations' tables at ``width``, from the slots' hashes (the current generation's
        slots up to ``next``, the old one's that hold an id)."""
        self._tables(width)
        for t in (0, 1):
            lo = t * self.cap
            hi = self.next if self.gen % 2 == t else lo + self.cap
            region = self.hashes[lo:hi]
            slots = np.flatnonzero(region) + lo
            self._put(t, self.hashes[slots], slots)

    def batch_index(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distinct slots, index of each turn's slot among them): np.unique without sorting.

        Leaves ``scratch[u] = position in u`` for the caller.
        """
        sc = self.scratch
        at = np.arange(len(slots))
        sc[slots] = at
        u = slots[sc[slots] == at]  # one representative turn per slot
        sc[u] = np.arange(len(u))
        return u, sc[slots]

    def occupied(self) -> np.ndarray:
        return np.flatnonzero(np.fromiter([c is not None for c in self.ids], bool, len(self.ids)))

    def to_state(self) -> dict[str, Any]:
        base, obase = self.base, self.cap - self.base
        cur = {self.ids[s]: s for s in range(base, self.next)}
        old = {c: s for s, c in enumerate(self.ids[obase : obase + self.cap], obase) if c is not None}
        return {
            "cap": self.cap,
            "cur": cur,
            "old": old,
            "gen": self.gen,
            "next": self.next,
            **{k: array_to_state(getattr(self, k)) for k in self._ROWS},
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> _Conversations:
        rows = {k: array_from_state(d[k]) for k in cls._ROWS}
        c = cls(d["cap"], rows["slices"].shape[1], len(rows["arm"]))
        for k, a in rows.items():
            setattr(c, k, a)
        c._grow(max(d["next"], c._top(d)))
        c.gen, c.next = d["gen"], d["next"]
        for t, table in ((c.gen % 2, d["cur"]), (1 - c.gen % 2, d["old"])):
            if table:
                c.hashes[np.fromiter(table.values(), np.int64, len(table))] = id_hashes(list(table))
                for cid, slot in table.items():
                    c.ids[slot] = cid
            c._held[t] = len(table)
        c._rehash(_width(max(c._held)))
        return c

    @staticmethod
    def _top(d: dict[str, Any]) -> int:
        return 1 + max([*d["cur"].values(), *d["old"].values()], default=-1)


def _width(n: int) -> int:
    """Hash table width for ``n`` ids at load <= 0.4 (a power of two, >= 16)."""
    return 1 << max(math.ceil(math.log2(2.5 * max(n, 8))), 4)


class _CellSums:
    """The judge's tables, summed per *group* of conversations and expanded to cells on demand.

    A group is the set of cells a conversation feeds: its stratum, arm and segment slices, one cell
    per slice. A batch adds per-conversation increments per group (one bincount), not per cell (one
    row per slice); ``table`` expands groups into (slice, stratum, arm, field) when the evidence is
    evaluated. Sums are kept cumulatively and per live epoch. Groups number strata x arms x segment
    combinations; past ``limit`` they are folded into materialised ``base`` tables (``fold``).
    """

    def __init__(self, n_slices: int, n_keys: int, n_fields: int) -> None:
        self.shape = (n_slices, _STRATA, 2, n_fields)
        self.nk, self.f = n_keys, n_fields
        self.radix = n_slices + 1
        self.fits = 2 * _STRATA * self.radix**n_keys < 2**62  # integer group codes
        self.limit = _GROUPS
        self.codes: dict[Any, int] = {}
        self.keys: list[list[int]] = []  # (rho, arm, slice per key) of each group
        self.cells = np.zeros((0, 1 + n_keys), np.int64)
        self.cum = np.zeros((0, n_fields))
        self.epochs: dict[int, np.ndarray] = {0: np.zeros((0, n_fields))}
        # None until the first fold: a judge of a quiet agent never folds, and this table is
        # slices x 16 strata x 2 arms x fields (~160 KB) per judge
        self.base_cum: np.ndarray | None = None
        self.base_epochs: dict[int, np.ndarray] = {}
        self._tables: dict[tuple[int, ...] | None, np.ndarray] = {}

    @property
    def n(self) -> int:
        return len(self.keys)

    def group_of(self, rho: np.ndarray, arm: np.ndarray, slices: np.ndarray) -> np.ndarray:
        """Group ids of conversations from their stratum, arm and slices ((m, n_keys), -1: none)."""
        if self.fits:  # integer codes, as _code
            code = rho.astype(np.int64) * 2 + arm
            for k in range(self.nk):
                code = code * self.radix + slices[:, k] + 1
            keys: list[Any] = code.tolist()
        else:
            keys = [tuple(r) for r in np.column_stack([rho, arm, slices[:, : self.nk]]).tolist()]
        ids = list(map(self.codes.get, keys))
        if None in ids:
            for j, c in enumerate(keys):
                if ids[j] is None:
                    g = self.codes.get(c)
                    ids[j] = (
                        g
                        if g is not None
                        else self._new(c, [int(rho[j]), int(arm[j]), *slices[j, : self.nk].tolist()])
                    )
        return np.fromiter(ids, np.int64, len(ids))

    def _code(self, key: list[int]) -> Any:
        if not self.fits:
            return tuple(key)
        code = key[0] * 2 + key[1]
        for s in key[2:]:
            code = code * self.radix + s + 1
        return code

    def _new(self, code: Any, key: list[int]) -> int:
        g = self.n
        if g == len(self.cum):  # grow by doubling
            size = max(2 * g, 64)
            self.cum = _grow(self.cum, size)
            self.epochs = {e: _grow(a, size) for e, a in self.epochs.items()}
            self.cells = _grow(self.cells, size)
        cell = key[0] * 2 + key[1]
        self.cells[g] = [cell] + [s * 2 * _STRATA + cell if s >= 0 else -1 for s in key[2:]]
        self.keys.append(key)
        self.codes[code] = g
        return g

    def add(self, group: np.ndarray, epoch: np.ndarray, delta: np.ndarray) -> None:
        """Add per-conversation increments ``delta`` (m, fields) of conversations in ``group``/``epoch``."""
        n, f = self.n, self.f
        idx = (group[:, None] * f + np.arange(f)).ravel()
        acc = np.bincount(idx, delta.ravel(), minlength=n * f).reshape(n, f)
        self.cum[:n] += acc
        for e, a in self.epochs.items():
            mask = epoch == e
            if mask.all():
                a[:n] += acc
            elif mask.any():
                a[:n] += np.bincount(
                    idx.reshape(-1, f)[mask].ravel(), delta[mask].ravel(), minlength=n * f
                ).reshape(n, f)
        self._tables.clear()

    def roll(self, epoch: int, span: int) -> None:
        """A new epoch starts; epochs older than ``span`` are no longer needed."""
        self.epochs = {e: a for e, a in self.epochs.items() if e > epoch - span}
        self.base_epochs = {e: a for e, a in self.base_epochs.items() if e > epoch - span}
        self.epochs[epoch] = np.zeros_like(self.cum)
        self._tables.clear()

    def table(self, epochs: tuple[int, ...] | None = None) -> np.ndarray:
        """The (slice, stratum, arm, field) table: cumulative, or the sum of the given live epochs."""
        out = self._tables.get(epochs)
        if out is not None:
            return out
        n, f = self.n, self.f
        if epochs is None:
            sums = self.cum[:n]
            out = np.zeros(self.shape) if self.base_cum is None else self.base_cum.copy()
        else:
            parts = [self.epochs[e][:n] for e in epochs]
            sums = sum(parts[1:], parts[0])
            out = np.zeros(self.shape)
            for e in epochs:
                if e in self.base_epochs:
                    out += self.base_epochs[e]
        if n:
            cells = self.cells[:n]
            valid = cells >= 0
            idx = (cells[valid][:, None] * f + np.arange(f)).ravel()
            w = np.broadcast_to(sums[:, None, :], (n, 1 + self.nk, f))[valid].ravel()
            out += np.bincount(idx, w, minlength=out.size).reshape(self.shape)
        self._tables[epochs] = out
        return out

    def fold(self) -> None:
        """Materialise every table into the bases and forget the groups (the caller regroups)."""
        self.base_cum = self.table()
        self.base_epochs = {e: self.table((e,)) for e in self.epochs}
        self.codes, self.keys = {}, []
        self.cells = self.cells[:0]
        self.cum = self.cum[:0]
        self.epochs = {e: a[:0] for e, a in self.epochs.items()}
        self._tables.clear()

    def to_state(self) -> dict[str, Any]:
        n = self.n
        return {
            "keys": self.keys,
            "limit": self.limit,
            "cum": array_to_state(self.cum[:n]),
            "epochs": {str(e): array_to_state(a[:n]) for e, a in self.epochs.items()},
            "base_cum": (
                array_to_state(self.base_cum)
                if self.base_cum is not None
                else cells_to_state(self.shape, np.float64, np.zeros(0, np.int64), np.zeros(0))
            ),
            "base_epochs": {str(e): array_to_state(a) for e, a in self.base_epochs.items()},
        }

    def load(self, d: dict[str, Any]) -> None:
        for key in d["keys"]:
            self._new(self._code(key), list(key))
        self.limit = d["limit"]
        n = self.n
        self.cum[:n] = array_from_state(d["cum"])
        self.epochs = {int(e): _grow(array_from_state(a), len(self.cum)) for e, a in d["epochs"].items()}
        base = array_from_state(d["base_cum"])
        self.base_cum = base if base.any() else None
        self.base_epochs = {int(e): array_from_state(a) for e, a in d["base_epochs"].items()}
        self._tables.clear()


def _put_rows(a: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """``a[rows] = values`` for a C-contiguous 2-D ``a``, through flat indices (much faster)."""
    w = a.shape[1]
    a.reshape(-1)[(rows[:, None] * w + np.arange(w)).ravel()] = values.ravel()


def _grow(a: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, *a.shape[1:]), a.dtype)
    out[: len(a)] = a[:rows]
    return out
