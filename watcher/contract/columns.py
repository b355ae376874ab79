"""``TurnColumns``: the columns of a batch of turns, extracted once and shared by every consumer."""

from __future__ import annotations

import itertools
import operator
from collections import defaultdict
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np

from watcher.contract.catalogue import RATE_METRICS, metric_def

__all__ = ["TurnColumns", "expand", "renumber"]

_COL_TS = operator.attrgetter("ts")
_COL_LAT = operator.attrgetter("latency_ms")
_COL_Q = operator.attrgetter("quality")
_COL_TURN = operator.attrgetter("turn")
_COL_CID = operator.attrgetter("conversation_id")
_COL_TRACE = operator.attrgetter("trace_id")
_COL_SEG = operator.attrgetter("segment")
_COL_FLAGS = operator.attrgetter("flags")
_COL_VERSION = operator.attrgetter("version")
_EVENTS = tuple(m.column for m in RATE_METRICS)  # the rate metrics' boolean columns (``event``)
_COLUMNS = (
    "ts",
    "latency",
    "quality",
    *_EVENTS,
    "first_turn",
    "conversation_id",
    "trace_id",
    "segment_code",
    "segment_table",
    "flag_code",
    "flag_table",
    "route_code",
    "route_keys",
)
_COL_ROUTE = operator.attrgetter("agent_id", "environment", "version", "arm")


class TurnColumns:
    """The columns of a batch of turns that route, state, judge and drift read, each extracted once.

    Every consumer used to read ~10 attributes per turn on its own (~0.3 µs per consumer and turn);
    here each column is one C-level ``map`` over the turns, built on first use and shared. Columns are
    lazy, so objects that only have some attributes (a test's ``TurnLike``) still work. Float columns
    hold NaN for None. ``route_code`` numbers each turn's ``(agent_id, environment, version, arm)``
    in order of first appearance (``route_keys[code]``; ``route_first[code]``: its first turn), so
    per-key work (routing, series lookup, per-agent selection) runs per distinct key, not per turn.
    After routing, ``routed`` holds the arms list the registry returned and the resolved arm per key.

    Decoded as columns (``from_arrays``), a batch also numbers its distinct segments and flag sets:
    ``segment_code[i]`` indexes ``segment_table`` (``flag_code``/``flag_table`` likewise), so consumers
    can work per distinct segment; ``segment`` and ``flags`` are then gathered from them on first use.
    """

    def __init__(self, turns: Sequence[Any], *, ts: np.ndarray | None = None) -> None:
        self.turns = turns
        self.n = len(turns)
        self.routed: tuple[list[str], list[str]] | None = None  # (arms per turn, arm per route key)
        if ts is not None:
            self.__dict__["ts"] = ts

    def coded(self, name: str) -> tuple[list[Any], np.ndarray] | None:
        """``(table, code)`` of ``"segment"`` or ``"flag"`` when decoded as columns, else None."""
        d = self.__dict__
        table = d.get(f"{name}_table")
        return None if table is None else (table, d[f"{name}_code"])

    def built(self, name: str) -> bool:
        """Whether column ``name`` is already there (given or computed), so reading it costs nothing."""
        return name in self.__dict__

    @classmethod
    def from_arrays(cls, turns: Sequence[Any], **columns: Any) -> TurnColumns:
        """Columns decoded without a ``Turn`` per event (``watcher.contract.columnar``): every column
        given, ``turns`` a sequence that builds the objects only if a consumer asks for them."""
        unknown = set(columns) - set(_COLUMNS)
        if unknown:
            raise TypeError(f"unknown columns {sorted(unknown)}")
        cols = cls(turns)
        cols.__dict__.update(columns)
        return cols

    @cached_property
    def ts(self) -> np.ndarray:
        return np.fromiter(map(_COL_TS, self.turns), np.float64, self.n)

    @cached_property
    def latency(self) -> np.ndarray:
        return np.fromiter(map(_COL_LAT, self.turns), np.float64, self.n)  # None -> NaN

    @cached_property
    def quality(self) -> np.ndarray:
        return np.fromiter(map(_COL_Q, self.turns), np.float64, self.n)

    def event(self, name: str) -> np.ndarray:
        """The boolean column of rate metric ``name``'s event (``catalogue``: escalation -> the turns'
        ``escalated``), built on first use."""
        m = metric_def(name)
        col = self.__dict__.get(m.column)
        if col is None:
            col = self.__dict__[m.column] = np.fromiter(
                map(operator.attrgetter(m.field), self.turns), bool, self.n
            )
        return col

    @cached_property
    def first_turn(self) -> np.ndarray:
        """True for a conversation's turn 0 (where a conversation is counted)."""
        return np.fromiter(map(_COL_TURN, self.turns), np.int64, self.n) == 0

    @cached_property
    def conversation_id(self) -> list[str]:
        return list(map(_COL_CID, self.turns))

    @cached_property
    def trace_id(self) -> list[str | None] | None:
        """Each turn's trace id, or None when no turn of the batch has one (JSON turns seldom do)."""
        try:
            ids = list(map(_COL_TRACE, self.turns))
        except AttributeError:  # objects without the attribute (a test's TurnLike)
            return None
        return ids if ids.count(None) < len(ids) else None

    @cached_property
    def segment(self) -> list[dict[str, str]]:
        coded = self.coded("segment")
        if coded is not None:  # one shared dict per distinct segment, gathered in C
            return expand(*coded)
        return list(map(_COL_SEG, self.turns))

    @cached_property
    def flags(self) -> list[dict[str, str]]:
        coded = self.coded("flag")
        if coded is not None:
            return expand(*coded)
        return list(map(_COL_FLAGS, self.turns))

    @cached_property
    def route_code(self) -> np.ndarray:
        # defaultdict + a counter: one dict lookup per turn, in C, numbers keys by first appearance
        codes: defaultdict[tuple[Any, ...], int] = defaultdict(itertools.count().__next__)
        code = np.fromiter(map(codes.__getitem__, map(_COL_ROUTE, self.turns)), np.intp, self.n)
        self.__dict__["route_keys"] = list(codes)
        return code

    @cached_property
    def route_keys(self) -> list[tuple[str, str, str, str | None]]:
        self.route_code  # noqa: B018 (sets route_keys)
        return self.__dict__["route_keys"]

    @cached_property
    def route_first(self) -> np.ndarray:
        """Index of the first turn of each route key (codes rise exactly there)."""
        code = self.route_code
        if not self.n:
            return np.zeros(0, np.intp)
        top = np.maximum.accumulate(code)
        return np.flatnonzero(np.concatenate(([True], top[1:] > top[:-1])))

    def arm_is(self, arms: Sequence[str], arm: str) -> np.ndarray:
        """Boolean mask of ``arms[i] == arm``; per route key when ``arms`` is the routed list."""
        routed = self.routed
        # a strategy may hand its judge a copy of the routed list (``Strategy.arms``): list ==
        # compares identical items by identity in C, far cheaper than the per-turn comparison below
        if routed is not None and (routed[0] is arms or (isinstance(arms, list) and routed[0] == arms)):
            return np.fromiter(map(arm.__eq__, routed[1]), bool, len(routed[1]))[self.route_code]
        return np.fromiter(map(arm.__eq__, arms), bool, len(arms))

    def version_is(self, version: str) -> np.ndarray:
        """Boolean mask of the turns of ``version`` (per route key once the keys are known)."""
        if not self.built("route_code"):
            return np.fromiter(map(version.__eq__, map(_COL_VERSION, self.turns)), bool, self.n)
        keys = self.route_keys
        lut = np.fromiter((k[2] == version for k in keys), bool, len(keys))
        return lut[self.route_code]

    def take(self, idx: np.ndarray) -> TurnColumns:
        """The columns of the turns at ``idx`` (columns already built are sliced, not re-read)."""
        pos = idx.tolist()
        turns = self.turns
        take = getattr(turns, "take", None)  # LazyTurns: no Turn decoded for the selection
        sub = TurnColumns(take(idx) if take is not None else [turns[i] for i in pos])
        d = self.__dict__
        for name in ("ts", "latency", "quality", *_EVENTS, "first_turn"):
            if name in d:
                sub.__dict__[name] = d[name][idx]
        for name, coded in (("conversation_id", None), ("segment", "segment"), ("flags", "flag")):
            if coded is not None and f"{coded}_code" in d:  # distinct values and a code per turn
                sub.__dict__[f"{coded}_code"], sub.__dict__[f"{coded}_table"] = renumber(
                    d[f"{coded}_code"][idx], d[f"{coded}_table"]
                )
            elif name in d:
                col = d[name]
                sub.__dict__[name] = [col[i] for i in pos]
        if "trace_id" in d:  # None (no trace ids) stays None: never read from the turns again
            traces = [d["trace_id"][i] for i in pos] if d["trace_id"] is not None else []
            sub.__dict__["trace_id"] = traces if traces.count(None) < len(traces) else None
        if "route_code" in d:  # renumbered: codes stay in order of first appearance
            sub.__dict__["route_code"], sub.__dict__["route_keys"] = renumber(
                d["route_code"][idx], d["route_keys"]
            )
        return sub


def renumber(code: np.ndarray, keys: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    """Codes and keys renumbered in order of first appearance in ``code`` (unused keys dropped), the
    invariant ``TurnColumns.route_first`` relies on, after rows were removed from a batch."""
    if not len(code):
        return code, []
    seen, first = np.unique(code, return_index=True)
    order = np.argsort(first, kind="stable")
    rank = np.full(len(keys), -1, np.intp)
    rank[seen[order]] = np.arange(len(order))
    return rank[code], [keys[int(k)] for k in seen[order]]


def expand(table: Sequence[Any], code: np.ndarray) -> list[Any]:
    """``[table[c] for c in code]``, as one C-level gather (the items are shared, not copied)."""
    if len(table) == 1:
        return [table[0]] * len(code)
    arr = np.empty(len(table), object)
    arr[:] = table
    return arr[code].tolist()
