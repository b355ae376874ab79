"""Slices and conversation rows: the bookkeeping every judge and the version history share.

``SliceMap`` gives each (segment key, value) a bounded slice id (slice 0 is the whole arm);
``ConvRows`` gives each conversation a row in a two-generation table, so per-conversation sums are
kept in arrays and old conversations age out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
            out[:, k] = col
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

    A conversation that falls out of both generations and comes back counts as a new one (the
    judge's documented approximation). ``cols`` are int64 columns (epoch, flags, slices ...).
    """

    def __init__(self, cap: int, n_sums: int, n_cols: int) -> None:
        self.cap, self.gen, self.next = cap, 0, 0
        self.cur: dict[Any, int] = {}
        self.old: dict[Any, int] = {}
        self.sums = np.zeros((2 * cap, n_sums))
        self.cols = np.zeros((2 * cap, n_cols), np.int64)

    def rows(self, keys: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ``keys`` (allocating new ones) and a mask of the keys that are new conversations."""
        distinct = list(dict.fromkeys(keys))
        if len(self.cur) + len(distinct) > self.cap:
            self._rotate()
        get, old = self.cur.get, self.old
        new = np.zeros(len(distinct), bool)
        out = np.empty(len(distinct), np.int64)
        for i, k in enumerate(distinct):
            r = get(k)
            if r is None:
                r = self.next
                self.next += 1
                self.cur[k] = r
                o = old.pop(k, None)
                if o is None:
                    new[i] = True
                    self.sums[r] = 0.0
                    self.cols[r] = 0
                else:  # back from the old generation: keeps its sums
                    self.sums[r], self.cols[r] = self.sums[o], self.cols[o]
            out[i] = r
        pos = {k: i for i, k in enumerate(distinct)}
        idx = np.fromiter(map(pos.__getitem__, keys), np.int64, len(keys))
        return out[idx], new[idx] & _first(idx)

    def _rotate(self) -> None:
        self.gen += 1
        self.old, self.cur = self.cur, {}
        self.next = (self.gen % 2) * self.cap

    def to_state(self) -> dict[str, Any]:
        return {
            "cap": self.cap,
            "gen": self.gen,
            "next": self.next,
            "cur": list(self.cur.items()),
            "old": list(self.old.items()),
            "sums": array_to_state(self.sums),
            "cols": array_to_state(self.cols),
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> ConvRows:
        c = cls(d["cap"], 1, 1)
        c.gen, c.next = d["gen"], d["next"]
        c.cur = {_key(k): r for k, r in d["cur"]}
        c.old = {_key(k): r for k, r in d["old"]}
        c.sums, c.cols = array_from_state(d["sums"]), array_from_state(d["cols"])
        return c


def _key(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k


def _first(idx: np.ndarray) -> np.ndarray:
    """True at the first occurrence of each value of ``idx``."""
    out = np.zeros(len(idx), bool)
    _, first = np.unique(idx, return_index=True)
    out[first] = True
    return out
