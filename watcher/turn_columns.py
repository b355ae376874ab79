"""``TurnColumns``: the columns of a batch of turns, extracted once and shared by every consumer."""

from __future__ import annotations

import itertools
import operator
from collections import defaultdict
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np

__all__ = ["TurnColumns"]

_COL_TS = operator.attrgetter("ts")
_COL_LAT = operator.attrgetter("latency_ms")
_COL_Q = operator.attrgetter("quality")
_COL_ESC = operator.attrgetter("escalated")
_COL_ERR = operator.attrgetter("error")
_COL_COMP = operator.attrgetter("compliance_violation")
_COL_TURN = operator.attrgetter("turn")
_COL_CID = operator.attrgetter("conversation_id")
_COL_SEG = operator.attrgetter("segment")
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
    """

    def __init__(self, turns: Sequence[Any], *, ts: np.ndarray | None = None) -> None:
        self.turns = turns
        self.n = len(turns)
        self.routed: tuple[list[str], list[str]] | None = None  # (arms per turn, arm per route key)
        if ts is not None:
            self.__dict__["ts"] = ts

    @cached_property
    def ts(self) -> np.ndarray:
        return np.fromiter(map(_COL_TS, self.turns), np.float64, self.n)

    @cached_property
    def latency(self) -> np.ndarray:
        return np.fromiter(map(_COL_LAT, self.turns), np.float64, self.n)  # None -> NaN

    @cached_property
    def quality(self) -> np.ndarray:
        return np.fromiter(map(_COL_Q, self.turns), np.float64, self.n)

    @cached_property
    def escalated(self) -> np.ndarray:
        return np.fromiter(map(_COL_ESC, self.turns), bool, self.n)

    @cached_property
    def error(self) -> np.ndarray:
        return np.fromiter(map(_COL_ERR, self.turns), bool, self.n)

    @cached_property
    def compliance(self) -> np.ndarray:
        return np.fromiter(map(_COL_COMP, self.turns), bool, self.n)

    @cached_property
    def first_turn(self) -> np.ndarray:
        """True for a conversation's turn 0 (where a conversation is counted)."""
        return np.fromiter(map(_COL_TURN, self.turns), np.int64, self.n) == 0

    @cached_property
    def conversation_id(self) -> list[str]:
        return list(map(_COL_CID, self.turns))

    @cached_property
    def segment(self) -> list[dict[str, str]]:
        return list(map(_COL_SEG, self.turns))

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
        return self.__dict__["route_keys"]  # type: ignore[no-any-return]

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
        # a strategy may hand its judge a copy of the routed list (``strategies.arms_for``): list ==
        # compares identical items by identity in C, far cheaper than the per-turn comparison below
        if routed is not None and (routed[0] is arms or (isinstance(arms, list) and routed[0] == arms)):
            return np.fromiter(map(arm.__eq__, routed[1]), bool, len(routed[1]))[self.route_code]
        return np.fromiter(map(arm.__eq__, arms), bool, len(arms))

    def take(self, idx: np.ndarray) -> TurnColumns:
        """The columns of the turns at ``idx`` (columns already built are sliced, not re-read)."""
        pos = idx.tolist()
        turns = self.turns
        sub = TurnColumns([turns[i] for i in pos])
        d = self.__dict__
        for name in ("ts", "latency", "quality", "escalated", "error", "compliance", "first_turn"):
            if name in d:
                sub.__dict__[name] = d[name][idx]
        for name in ("conversation_id", "segment"):
            if name in d:
                col = d[name]
                sub.__dict__[name] = [col[i] for i in pos]
        return sub

