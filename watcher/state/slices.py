"""Slices and conversation rows: the bookkeeping every judge and the version history share.

``SliceMap`` gives each (segment key, value) a bounded slice id (slice 0 is the whole arm);
``ConvRows`` gives each conversation a row in a two-generation table, so per-conversation sums are
kept in arrays and old conversations age out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from watcher.stats import array_from_state, array_to_state

__all__ = ["ConvRows", "SliceMap"]


class SliceMap:
    """Segment key/value -> slice index, fixed layout: slot 0 = "all", then per key its values + __other__."""

    def __init__(self, keys: Sequence[str], max_keys: int, max_values: int, enabled: bool = True) -> None:
        self.fixed = tuple(keys)
        self.max_keys = max(max_keys, len(self.fixed)) if enabled else 0
        self.max_values = max_values
        self.keys: list[str] = list(self.fixed) if enabled else []
        self.values: dict[str, dict[str, int]] = {k: {} for k in self.keys}
        self.names: dict[int, str] = {0: "all"}

    @property
    def size(self) -> int:
        return 1 + self.max_keys * (self.max_values + 1)

    def slices(self, segs: Sequence[dict[str, str]]) -> np.ndarray:
        """(len(segs), max_keys) slice ids (-1: key absent)."""
        out = np.full((len(segs), max(self.max_keys, 1)), -1, np.int64)
        if not self.max_keys:
            return out[:, :0]
        if not self.fixed and len(self.keys) < self.max_keys:
            for seg in segs:
                for key in seg:
                    if key not in self.values and len(self.keys) < self.max_keys:
                        self.keys.append(key)
                        self.values[key] = {}
        for k, key in enumerate(self.keys):
            known = self.values[key]
            col = [known.get(v) if v is not None else -1 for v in (seg.get(key) for seg in segs)]
            if None in col:
                for i, (x, seg) in enumerate(zip(col, segs)):
                    if x is None:
                        col[i] = known.get(seg[key]) or self._new(key, k, seg[key])
            out[:, k] = cast("list[int]", col)  # every None was replaced just above
        return out

    def _new(self, key: str, k: int, value: str) -> int:
        values = self.values[key]
        base = 1 + k * (self.max_values + 1)
        s = base + len(values) if len(values) < self.max_values else base + self.max_values
        self.names[s] = f"{key}={value}" if len(values) < self.max_values else f"{key}=__other__"
        values[value] = s
        return s

    def to_state(self) -> dict[str, Any]:
        return {
            "fixed": list(self.fixed),
            "max_keys": self.max_keys,
            "max_values": self.max_values,
            "keys": self.keys,
            "values": self.values,
            "names": {str(k): v for k, v in self.names.items()},
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> SliceMap:
        m = cls(d["fixed"], d["max_keys"], d["max_values"], True)
        m.max_keys, m.keys = d["max_keys"], list(d["keys"])
        m.values = {k: dict(v) for k, v in d["values"].items()}
        m.names = {int(k): v for k, v in d["names"].items()}
        return m


class ConvRows:
    """Bounded conversation table: two generations of key -> row; per-row float sums and int columns.

    A generation holds at most ``cap`` conversations; when the current one is full it becomes the old
    one and the older one is forgotten. A conversation found in the old generation moves to the
    current one with its row. A conversation that falls out of both and comes back counts as a new
    one (the judges' documented approximation). ``cols`` are int64 columns (epoch, flags, slices ...).

    Sized by traffic: rows are allocated as conversations arrive (the arrays double, from
    ``_FIRST_ROWS``) and rows of forgotten conversations are reused, so a quiet stream holds a few
    kilobytes and only a busy one reaches the ``2 * cap`` rows of the bound.
    """

    def __init__(self, cap: int, n_sums: int, n_cols: int) -> None:
        self.cap, self.gen = cap, 0
        self.cur: dict[Any, int] = {}
        self.old: dict[Any, int] = {}
        rows = min(_FIRST_ROWS, 2 * cap)
        self.sums = np.zeros((rows, n_sums))
        self.cols = np.zeros((rows, n_cols), np.int64)
        self._free: list[int] = list(range(rows - 1, -1, -1))  # popped from the end: lowest first

    def __len__(self) -> int:
        return len(self.cur) + len(self.old)

    def rows(self, keys: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ``keys`` (allocating new ones) and a mask of the keys that are new conversations."""
        distinct = list(dict.fromkeys(keys))
        if len(self.cur) + len(distinct) > self.cap:
            self._rotate()
        cur, old = self.cur, self.old
        found = list(map(cur.get, distinct))  # in C; Python below only for the conversations not current
        new = np.zeros(len(distinct), bool)
        if None in found:
            for i, k in enumerate(distinct):
                if found[i] is not None:
                    continue
                r = old.pop(k, None)
                if r is None:  # a new conversation
                    r = self._take()
                    new[i] = True
                    self.sums[r] = 0.0
                    self.cols[r] = 0
                cur[k] = found[i] = r  # back from the old generation: keeps its row and sums
        out = np.fromiter(found, np.int64, len(distinct))
        pos = {k: i for i, k in enumerate(distinct)}
        idx = np.fromiter(map(pos.__getitem__, keys), np.int64, len(keys))
        return out[idx], new[idx] & _first(idx)

    def _take(self) -> int:
        if not self._free:
            size = len(self.sums)
            grown = max(2 * size, _FIRST_ROWS)
            self.sums = _grown(self.sums, grown)
            self.cols = _grown(self.cols, grown)
            self._free = list(range(grown - 1, size - 1, -1))
        return self._free.pop()

    def _rotate(self) -> None:
        self.gen += 1
        self._free.extend(sorted(self.old.values(), reverse=True))
        self.old, self.cur = self.cur, {}

    def to_state(self) -> dict[str, Any]:
        used = np.fromiter([*self.cur.values(), *self.old.values()], np.int64, len(self))
        return {
            "v": 2,
            "cap": self.cap,
            "gen": self.gen,
            "cur": list(self.cur.items()),
            "old": list(self.old.items()),
            "rows": len(self.sums),
            "used": array_to_state(used),
            "sums": array_to_state(self.sums[used]),
            "cols": array_to_state(self.cols[used]),
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> ConvRows:
        sums, cols = array_from_state(d["sums"]), array_from_state(d["cols"])
        c = cls(d["cap"], sums.shape[1], cols.shape[1])
        c.gen = d["gen"]
        c.cur = {_key(k): r for k, r in d["cur"]}
        c.old = {_key(k): r for k, r in d["old"]}
        if d.get("v") == 2:
            rows, used = d["rows"], array_from_state(d["used"])
            c.sums, c.cols = _grown(c.sums[:0], rows), _grown(c.cols[:0], rows)
            c.sums[used], c.cols[used] = sums, cols
        else:  # v1: the whole 2 * cap rows
            c.sums, c.cols = sums, cols
        taken = set(c.cur.values()) | set(c.old.values())
        c._free = [r for r in range(len(c.sums) - 1, -1, -1) if r not in taken]
        return c


_FIRST_ROWS = 256


def _grown(a: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, *a.shape[1:]), a.dtype)
    out[: len(a)] = a
    return out


def _key(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k


def _first(idx: np.ndarray) -> np.ndarray:
    """True at the first occurrence of each value of ``idx``."""
    out = np.zeros(len(idx), bool)
    _, first = np.unique(idx, return_index=True)
    out[first] = True
    return out
