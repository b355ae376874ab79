"""Each rollout's evidence over time: what the report (``watcher.report``) draws.

At most one point per ``every_s`` of event time is kept per rollout (the first look in each
interval), plus the look of every decision; a rollout keeps at most ``max_points`` (older points are
thinned to every other one when full, so a long rollout keeps its whole span at a coarser step).
A point holds, per judged metric x slice, the verdict, effect, anytime-valid interval, e-value and
threshold and the units per arm; the history is in memory only (a restart starts it again, the
decisions themselves are in the decision log).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from watcher.contract import Decision, RolloutEvidence, Verdict

__all__ = ["EvidenceHistory", "EvidenceMap", "EvidencePoint", "RolloutHistory", "Row"]


@dataclass(frozen=True, slots=True)
class Row:
    """One metric in one slice at one look (``MetricEvidence`` without its text)."""

    metric: str
    slice: str
    verdict: Verdict
    effect: float | None
    lower: float | None
    upper: float | None
    statistic: float  # e-value (FAIL test)
    threshold: float
    tolerance: float
    unit: str  # "difference" | "ratio"
    n_control: int
    n_treatment: int


@dataclass(frozen=True, slots=True)
class EvidencePoint:
    ts: float
    conversations_control: int
    conversations_treatment: int
    rows: tuple[Row, ...]
    sample_ratio: float | None = None  # observed treatment share
    expected_share: float | None = None


@dataclass
class RolloutHistory:
    """One rollout as the report draws it: the rollout (``Rollout.to_dict()``), its evidence over
    time, its decision records (``Decision.to_dict()``) and its markers (in the rollout dict)."""

    rollout: dict[str, Any]
    points: list[EvidencePoint] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    note: str | None = None  # why the rollout is not (fully) judged, when it is not
    # the gate verdicts recorded for the treatment version before it got here (``watcher gate --record``)
    gates: list[dict[str, Any]] = field(default_factory=list)


def point(evidence: RolloutEvidence) -> EvidencePoint:
    rows = tuple(
        Row(
            m.metric,
            m.slice,
            m.verdict,
            m.effect,
            m.lower,
            m.upper,
            m.statistic,
            m.threshold,
            m.tolerance,
            m.effect_unit,
            m.control.n,
            m.treatment.n,
        )
        for m in evidence.metrics
        if m.verdict is not Verdict.NODATA
    )
    sr = evidence.sample_ratio
    return EvidencePoint(
        evidence.ts,
        evidence.conversations_control,
        evidence.conversations_treatment,
        rows,
        sr.observed_share if sr else None,
        sr.expected_share if sr else None,
    )


class EvidenceHistory:
    """Rollout id -> its points and decisions (bounded)."""

    def __init__(self, every_s: float = 60.0, max_points: int = 720, max_rollouts: int = 200) -> None:
        self.every_s = every_s
        self.max_points = max_points
        self.max_rollouts = max_rollouts
        self._points: dict[str, list[EvidencePoint]] = {}
        self._decisions: dict[str, list[dict[str, Any]]] = {}
        self._step: dict[str, float] = {}  # current spacing per rollout (doubles when thinned)

    def due(self, rid: str, ts: float) -> bool:
        """Is a point at ``ts`` wanted (the first look of its interval)?"""
        pts = self._points.get(rid)
        if not pts:
            return True
        step = self._step.get(rid, self.every_s)
        return math.floor(ts / step) > math.floor(pts[-1].ts / step)

    def add(self, rid: str, evidence: RolloutEvidence, decision: Decision | None = None) -> None:
        if rid not in self._points and len(self._points) >= self.max_rollouts:
            self.forget(next(iter(self._points)))  # the oldest rollout's history goes first
        pts = self._points.setdefault(rid, [])
        if not pts or pts[-1].ts != evidence.ts:
            pts.append(point(evidence))
        if decision is not None:
            self._decisions.setdefault(rid, []).append(decision.to_dict())
        if len(pts) > self.max_points:  # keep the span, halve the resolution
            self._step[rid] = 2 * self._step.get(rid, self.every_s)
            self._points[rid] = pts[::2] if pts[-1] is pts[::2][-1] else [*pts[:-1:2], pts[-1]]

    def forget(self, rid: str) -> None:
        self._points.pop(rid, None)
        self._decisions.pop(rid, None)
        self._step.pop(rid, None)

    def get(
        self, rollout: dict[str, Any], note: str | None = None, gates: list[dict[str, Any]] | None = None
    ) -> RolloutHistory:
        rid = rollout["rollout_id"]
        return RolloutHistory(
            rollout, list(self._points.get(rid, [])), list(self._decisions.get(rid, [])), note, gates or []
        )

    def rollout_ids(self) -> list[str]:
        return list(self._points)


class EvidenceMap(dict[str, RolloutEvidence]):
    """Rollout id -> the evidence of its last look, its rows built when first read (``defer``)."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: dict[str, Callable[[], RolloutEvidence]] = {}

    def defer(self, rid: str, build: Callable[[], RolloutEvidence]) -> None:
        self._pending[rid] = build
        super().pop(rid, None)

    def __setitem__(self, rid: str, evidence: RolloutEvidence) -> None:
        self._pending.pop(rid, None)
        super().__setitem__(rid, evidence)

    def _settle(self, rid: str) -> None:
        build = self._pending.pop(rid, None)
        if build is not None:
            super().__setitem__(rid, build())

    def __getitem__(self, rid: str) -> RolloutEvidence:
        self._settle(rid)
        return super().__getitem__(rid)

    def __contains__(self, rid: object) -> bool:
        return rid in self._pending or super().__contains__(rid)

    def get(self, rid: str, default: Any = None) -> Any:
        self._settle(rid)
        return super().get(rid, default)

    def pop(self, rid: str, default: Any = None) -> Any:
        self._settle(rid)
        return super().pop(rid, default)

    def _settle_all(self) -> None:
        for rid in list(self._pending):
            self._settle(rid)

    def __iter__(self) -> Any:
        self._settle_all()
        return super().__iter__()

    def __len__(self) -> int:
        self._settle_all()
        return super().__len__()

    def keys(self) -> Any:
        self._settle_all()
        return super().keys()

    def values(self) -> Any:
        self._settle_all()
        return super().values()

    def items(self) -> Any:
        self._settle_all()
        return super().items()
