"""Calibrated reference judges: what a careful user of each tool would configure.

A reference that rolls back healthy canaries is not what a careful team runs, so besides its
"typical defaults" each reference gets a *calibrated* setting: a small documented grid over its
knobs is evaluated on scenarios generated with calibration seeds (disjoint from the evaluation
seeds), and the chosen setting is, among those with **no false alarm** on the calibration runs (no
stop in a null scenario, none before the onset of a regression), the most sensitive one: the most
regressions caught on the calibration runs, then the lowest median delay, then the earliest in grid
order (the grids are ordered from the typical defaults outwards).

Flagger grid (7 x 6 x 3 = 126): headroom scale s of every bound (bound = healthy + s·(typical −
healthy), ``flagger_ranges``) ∈ {0.5, 1, 1.5, 2, 3, 4, 6}; failed-check limit ∈ {5, 1, 2, 3, 8, 12};
empty/thin minutes ∈ {fail (Flagger), skip empty, skip < 30 canary turns}.
Kayenta grid (4 x 4 x 3 x 2 = 96): tolerance scale ∈ {1, 0.5, 2, 3}; marginal score ∈ {75, 50, 84, 90};
confidence ∈ {0.98, 0.99, 0.999}; baseline ∈ {whole control arm, control sample of the canary's size}.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bench.detection.reference_judges import KAYENTA_TOLERANCE, FlaggerJudge, KayentaJudge, flagger_ranges

FLAGGER_SCALES = (1.0, 0.5, 1.5, 2.0, 3.0, 4.0, 6.0)
FLAGGER_LIMITS = (5, 1, 2, 3, 8, 12)
FLAGGER_MIN_TURNS = (0, 1, 30)
KAYENTA_TOLERANCE_SCALES = (1.0, 0.5, 2.0, 3.0)
KAYENTA_MARGINALS = (75.0, 50.0, 84.0, 90.0)
KAYENTA_CONFIDENCES = (0.98, 0.99, 0.999)
KAYENTA_BASELINES = ("baseline", "baseline_equal")


@dataclass(frozen=True)
class Setting:
    """One point of a grid: a label, the knobs (JSON-safe), and how to build the judge for a case."""

    tool: str  # "flagger" | "kayenta"
    knobs: tuple[tuple[str, Any], ...]

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.knobs)

    def judge(self, lifetime_s: float | None = None) -> FlaggerJudge | KayentaJudge:
        k = dict(self.knobs)
        if self.tool == "flagger":
            return FlaggerJudge(
                ranges=flagger_ranges(k["headroom_scale"]),
                threshold=k["failed_checks"],
                min_turns=k["min_turns"],
            )
        tol = {m: v * k["tolerance_scale"] for m, v in KAYENTA_TOLERANCE.items()}
        return KayentaJudge(
            tolerance=tol,
            marginal=k["marginal"],
            confidence=k["confidence"],
            baseline=k["baseline"],
            lifetime_s=lifetime_s,
        )


def flagger_grid() -> list[Setting]:
    return [
        Setting("flagger", (("headroom_scale", s), ("failed_checks", n), ("min_turns", m)))
        for s, n, m in itertools.product(FLAGGER_SCALES, FLAGGER_LIMITS, FLAGGER_MIN_TURNS)
    ]


def kayenta_grid() -> list[Setting]:
    return [
        Setting("kayenta", (("tolerance_scale", t), ("marginal", mg), ("confidence", c), ("baseline", b)))
        for t, mg, c, b in itertools.product(
            KAYENTA_TOLERANCE_SCALES, KAYENTA_MARGINALS, KAYENTA_CONFIDENCES, KAYENTA_BASELINES
        )
    ]


@dataclass
class Tally:
    """Outcomes of one setting over the calibration runs."""

    false_alarms: int = 0
    regression_runs: int = 0
    delays: list[float] | None = None

    def add(self, kind: str, onset: float | None, stop: float | None) -> None:
        if self.delays is None:
            self.delays = []
        if kind == "null":
            self.false_alarms += stop is not None
            return
        self.regression_runs += 1
        if stop is not None and onset is not None:
            if stop < onset:
                self.false_alarms += 1
            else:
                self.delays.append(stop - onset)

    def to_dict(self) -> dict[str, Any]:
        d = self.delays or []
        return {
            "false_alarms": self.false_alarms,
            "detected": len(d),
            "regression_runs": self.regression_runs,
            "median_delay_s": statistics.median(d) if d else None,
        }


def choose(grid: list[Setting], tallies: dict[Setting, Tally]) -> tuple[Setting | None, str]:
    """The most sensitive setting without false alarms (None when every setting has some)."""
    clean = [s for s in grid if tallies[s].false_alarms == 0]
    if not clean:
        return None, "every setting of the grid had a false alarm on the calibration runs"

    def key(s: Setting) -> tuple[int, float, int]:
        d = tallies[s].delays or []
        return (-len(d), statistics.median(d) if d else float("inf"), grid.index(s))

    best = min(clean, key=key)
    return best, f"{len(clean)}/{len(grid)} settings without false alarms; most sensitive: {best.label}"


def summary(grid: Iterable[Setting], tallies: dict[Setting, Tally]) -> list[dict[str, Any]]:
    return [{"knobs": dict(s.knobs), **tallies[s].to_dict()} for s in grid]


__all__ = ["Setting", "Tally", "choose", "flagger_grid", "kayenta_grid", "summary"]
