"""Two reference judges that stand for what users run today, for the detection benchmark.

Both read the same JSONL stream as watcher (``watcher.turn/v1`` turns and ``watcher.deployment/v1``
markers, EVENT_SCHEMA.md) and return the event time of their first rollback, or None.

* ``FlaggerJudge`` — Flagger's analysis: every ``interval`` (1 min) each metric of the **canary
  alone** over the last interval is compared with a fixed ``thresholdRange``; an interval with any
  metric out of range (or no data) is one failed check; the canary is rolled back when the failed
  checks reach ``threshold`` (5). Flagger's counter is not reset by a passing check while the
  analysis runs, so ``consecutive=False`` (total) is the default.
* ``KayentaJudge`` — Spinnaker Kayenta's NetflixACAJudge: every ``interval`` (10 min) each metric's
  per-minute canary series is compared with the per-minute baseline series since the start (Kayenta's
  default scope without a lookback) by a two-sided Mann-Whitney U test at 98 % confidence; a metric
  fails only when the difference is significant *and* its effect (ratio of means) is beyond the
  allowed change in the harmful direction. Score = % of metrics passing (critical metrics that fail
  score 0). Rollback when an interval scores below ``marginal`` (75) or the last interval of the
  canary's lifetime scores below ``pass_score`` (95).

Both accept a ``Stream`` or a ``Prepared`` stream (per-window series and U tests cached), so a
calibration grid (bench/detection/calibration.py) evaluates dozens of settings for the price of one.
Extra knobs for that grid: ``FlaggerJudge.min_turns`` (skip thin minutes instead of failing them)
and ``flagger_ranges(scale)`` (headroom over the healthy level); ``KayentaJudge.baseline``
(``"baseline_equal"``: a control sample of the canary's size, Kayenta's baseline cluster).

The thresholds are documented in docs/detection.md with the reasoning behind them.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from scipy.stats import mannwhitneyu

TURN_SCHEMA = "watcher.turn/v1"
DEPLOYMENT_SCHEMA = "watcher.deployment/v1"


class _Event(msgspec.Struct, omit_defaults=True):
    """The fields the reference judges read (unknown fields are ignored, as the contract says)."""

    ts: str | float
    schema: str = TURN_SCHEMA
    version: str | None = None
    arm: str | None = None
    latency_ms: float | None = None
    quality: float | None = None
    escalated: bool = False
    error: bool = False
    compliance_violation: bool = False
    action: str | None = None
    canary_version: str | None = None
    baseline_version: str | None = None


_decoder = msgspec.json.Decoder(_Event)
_SECONDS: dict[str, float] = {}


def parse_ts(ts: str | float) -> float:
    """RFC 3339 (UTC ``Z`` or ``+00:00``) or Unix seconds -> Unix seconds; whole seconds are cached."""
    if not isinstance(ts, str):
        return float(ts)
    head = ts[:19]
    base = _SECONDS.get(head)
    if base is None:
        base = _SECONDS[head] = float(
            calendar.timegm(
                (
                    int(head[0:4]),
                    int(head[5:7]),
                    int(head[8:10]),
                    int(head[11:13]),
                    int(head[14:16]),
                    int(head[17:19]),
                )
            )
        )
    rest = ts[19:]
    frac = 0.0
    if rest.startswith("."):
        end = 1
        while end < len(rest) and rest[end].isdigit():
            end += 1
        frac = float(rest[:end])
        rest = rest[end:]
    if rest not in ("Z", "z", "+00:00", ""):
        sign = 1 if rest[0] == "+" else -1
        frac -= sign * (int(rest[1:3]) * 3600 + int(rest[4:6]) * 60)
    return base + frac


@dataclass
class Stream:
    """A turn stream as columns, with the rollout's start (first ``started`` marker, else first turn)."""

    start_ts: float
    t: np.ndarray  # Unix seconds
    canary: np.ndarray  # bool: the turn was answered by the canary (treatment)
    latency: np.ndarray  # ms, nan when absent
    quality: np.ndarray  # nan when not judged
    escalated: np.ndarray
    error: np.ndarray
    compliance: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def load_stream(lines: Iterable[bytes]) -> Stream:
    rows: list[tuple[float, float, float, float, bool, bool, bool]] = []
    arms: list[str | None] = []
    versions: list[str | None] = []
    start: float | None = None
    canary_version: str | None = None
    for raw in lines:
        raw = raw.strip()
        if not raw:
            continue
        try:
            e = _decoder.decode(raw)
        except msgspec.DecodeError:
            continue  # reference judges skip what they cannot read; watcher dead-letters it
        if e.schema == DEPLOYMENT_SCHEMA:
            if e.action == "started" and start is None:
                start, canary_version = parse_ts(e.ts), e.canary_version
            continue
        if e.schema != TURN_SCHEMA or e.arm == "shadow":
            continue
        latency = np.nan if e.latency_ms is None else e.latency_ms
        quality = np.nan if e.quality is None else e.quality
        rows.append((parse_ts(e.ts), latency, quality, 0.0, e.escalated, e.error, e.compliance_violation))
        arms.append(e.arm)
        versions.append(e.version)
    m = np.array(rows, dtype=float).reshape(-1, 7)
    # The arm field when the producer sets it, else the version named by the started marker.
    flags = [a == "canary" if a is not None else (v == canary_version) for a, v in zip(arms, versions)]
    canary = np.array(flags, dtype=bool)
    t = m[:, 0]
    return Stream(
        start_ts=start if start is not None else (float(t.min()) if len(t) else 0.0),
        t=t,
        canary=canary,
        latency=m[:, 1],
        quality=m[:, 2],
        escalated=m[:, 4] > 0,
        error=m[:, 5] > 0,
        compliance=m[:, 6] > 0,
    )


def load_jsonl(path: str | Path) -> Stream:
    with open(path, "rb") as fh:
        return load_stream(fh)


# -- per-minute series -----------------------------------------------------------------------------

METRICS = ("quality", "latency_p95", "latency_p99", "escalation", "error", "compliance")
HIGHER_IS_WORSE = {
    "quality": False,
    "latency_p95": True,
    "latency_p99": True,
    "escalation": True,
    "error": True,
    "compliance": True,
}


def per_window(s: Stream, mask: np.ndarray, window_s: float, n_windows: int) -> dict[str, np.ndarray]:
    """Each metric per window of ``window_s`` from the rollout start (nan where a window is empty)."""
    w = np.floor((s.t[mask] - s.start_ts) / window_s).astype(np.int64)
    keep = (w >= 0) & (w < n_windows)
    w = w[keep]
    cols = {
        "latency": s.latency[mask][keep],
        "quality": s.quality[mask][keep],
        "escalation": s.escalated[mask][keep],
        "error": s.error[mask][keep],
        "compliance": s.compliance[mask][keep],
    }
    out = {m: np.full(n_windows, np.nan) for m in METRICS}
    out["n"] = np.bincount(w, minlength=n_windows).astype(float)
    n = out["n"]
    with np.errstate(invalid="ignore", divide="ignore"):
        for rate in ("escalation", "error", "compliance"):
            out[rate] = np.bincount(w, weights=cols[rate].astype(float), minlength=n_windows) / n
        q_ok = ~np.isnan(cols["quality"])
        qn = np.bincount(w[q_ok], minlength=n_windows)
        out["quality"] = np.bincount(w[q_ok], weights=cols["quality"][q_ok], minlength=n_windows) / qn
    order = np.lexsort((cols["latency"], w))  # sorted by window, then latency
    ws, lat = w[order], cols["latency"][order]
    bounds = np.searchsorted(ws, np.arange(n_windows + 1))
    for i in range(n_windows):
        x = lat[bounds[i] : bounds[i + 1]]
        x = x[~np.isnan(x)]
        if len(x):
            out["latency_p95"][i], out["latency_p99"][i] = np.quantile(x, [0.95, 0.99])
    return out


# -- shared per-window series (computed once per stream, reused by every setting of a grid) ---------


class Prepared:
    """A stream plus a cache of its per-window series and Mann-Whitney results.

    A calibration grid evaluates dozens of settings of one judge on the same stream; the expensive
    parts (binning, quantiles, U tests) do not depend on thresholds, so they are computed once.
    """

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.last_s = (float(stream.t.max()) if len(stream.t) else stream.start_ts) - stream.start_ts
        self._series: dict[tuple[str, float, int], dict[str, np.ndarray]] = {}
        self._tests: dict[tuple[str, str, float, int], tuple[float, float, float, int, int]] = {}
        self._masks: dict[str, np.ndarray] = {}

    def mask(self, arm: str) -> np.ndarray:
        """``canary``, ``baseline`` (every control turn) or ``baseline_equal``: a fixed random sample
        of control turns as large as the canary, i.e. Kayenta's recommended baseline cluster of the
        canary's size (equal-size arms make per-minute series comparable)."""
        if arm not in self._masks:
            s = self.stream
            if arm == "canary":
                m = s.canary
            elif arm == "baseline":
                m = ~s.canary
            else:
                n_c, n_b = int(s.canary.sum()), int((~s.canary).sum())
                u = np.random.default_rng(12345).random(len(s.t))  # fixed: the same sample every run
                m = ~s.canary & (u < (n_c / n_b if n_b else 0.0))
            self._masks[arm] = m
        return self._masks[arm]

    def series(self, arm: str, step_s: float, n: int) -> dict[str, np.ndarray]:
        key = (arm, step_s, n)
        if key not in self._series:
            self._series[key] = per_window(self.stream, self.mask(arm), step_s, n)
        return self._series[key]

    def test(self, metric: str, baseline: str, step_s: float, n: int) -> tuple[float, float, float, int, int]:
        """(two-sided Mann-Whitney p, canary mean, baseline mean, points) on the first n windows."""
        key = (metric, baseline, step_s, n)
        if key not in self._tests:
            full = max(n, int(math.ceil(self.last_s / step_s)) + 1)
            c = self.series("canary", step_s, full)[metric][:n]
            b = self.series(baseline, step_s, full)[metric][:n]
            self._tests[key] = mann_whitney(c, b)
        return self._tests[key]


def prepare(s: Stream | Prepared) -> Prepared:
    return s if isinstance(s, Prepared) else Prepared(s)


def mann_whitney(canary: np.ndarray, baseline: np.ndarray) -> tuple[float, float, float, int, int]:
    c, b = canary[~np.isnan(canary)], baseline[~np.isnan(baseline)]
    if len(c) < 3 or len(b) < 3:
        return math.nan, math.nan, math.nan, len(c), len(b)
    p = float(mannwhitneyu(c, b, alternative="two-sided").pvalue)
    return p, float(np.mean(c)), float(np.mean(b)), len(c), len(b)


# -- Flagger ---------------------------------------------------------------------------------------

# What the healthy service shows on a dashboard (per canary minute, simulator defaults) and the
# "typical defaults" bounds a team derives from it (README: round numbers with headroom). A
# calibration grid scales the headroom: bound = healthy + scale * (typical - healthy).
FLAGGER_HEALTHY: dict[str, float] = {
    "error": 0.005,
    "escalation": 0.011,
    "compliance": 0.002,
    "quality": 0.775,
    "latency_p95": 970.0,
    "latency_p99": 1350.0,
}
FLAGGER_TYPICAL: dict[str, tuple[float | None, float | None]] = {
    "error": (None, 0.02),  # request-success-rate >= 98 %
    "escalation": (None, 0.03),
    "compliance": (None, 0.015),
    "quality": (0.74, None),
    "latency_p95": (None, 1300.0),
    "latency_p99": (None, 2000.0),
}


def flagger_ranges(scale: float) -> dict[str, tuple[float | None, float | None]]:
    """The typical bounds with their headroom over the healthy level multiplied by ``scale``."""
    out: dict[str, tuple[float | None, float | None]] = {}
    for metric, (lo, hi) in FLAGGER_TYPICAL.items():
        h = FLAGGER_HEALTHY[metric]
        out[metric] = (
            None if lo is None else h + scale * (lo - h),
            None if hi is None else h + scale * (hi - h),
        )
    return out


@dataclass(frozen=True)
class FlaggerJudge:
    """Fixed per-interval thresholds on the canary's own metrics, a failed-check counter."""

    # thresholdRange per metric: (min, max); None = unbounded. See README for why these values.
    ranges: dict[str, tuple[float | None, float | None]] = field(
        default_factory=lambda: dict(FLAGGER_TYPICAL)
    )
    interval_s: float = 60.0
    threshold: int = 5
    consecutive: bool = False
    # 0: an interval without canary data fails ("no values found", Flagger's behaviour). k >= 1: an
    # interval with fewer than k canary turns is skipped (neither passes nor fails), as a query
    # guarded with `and sum(increase(requests[1m])) >= k` would do.
    min_turns: int = 0
    name: str = "flagger"

    def checks(self, s: Stream | Prepared) -> list[tuple[float, bool, str]]:
        """(end of interval, passed, reason) for every complete, judged interval."""
        p = prepare(s)
        n = int(max(0.0, p.last_s) // self.interval_s)
        series = p.series("canary", self.interval_s, n)
        out = []
        for i in range(n):
            failed = []
            if series["n"][i] < self.min_turns:
                continue  # a guarded query returns nothing and the check is skipped
            if series["n"][i] == 0:
                failed.append("no canary traffic")  # Flagger: "no values found" fails the check
            for metric, (lo, hi) in self.ranges.items():
                v = series[metric][i]
                if math.isnan(v):
                    continue
                if (lo is not None and v < lo) or (hi is not None and v > hi):
                    failed.append(f"{metric}={v:.4g} outside [{_g(lo)}, {_g(hi)}]")
            out.append((p.stream.start_ts + (i + 1) * self.interval_s, not failed, "; ".join(failed)))
        return out

    def rollback(self, s: Stream | Prepared) -> tuple[float, str] | None:
        """(event time of the rollback, the failing check's reason), or None."""
        failed = 0
        for end, passed, reason in self.checks(s):
            if passed:
                if self.consecutive:
                    failed = 0
                continue
            failed += 1
            if failed >= self.threshold:
                return end, f"failed check {failed}/{self.threshold}: {reason}"
        return None

    def rollback_time(self, s: Stream | Prepared) -> float | None:
        r = self.rollback(s)
        return r[0] if r else None


def _g(x: float | None) -> str:
    return "None" if x is None else f"{x:.4g}"


# -- Kayenta ---------------------------------------------------------------------------------------

KAYENTA_TOLERANCE: dict[str, float] = {
    "quality": 0.05,
    "latency_p95": 0.10,
    "latency_p99": 0.10,
    "escalation": 0.20,
    "error": 0.20,
    "compliance": 0.20,
}


@dataclass(frozen=True)
class KayentaJudge:
    """Per-minute canary vs baseline series, Mann-Whitney at 98 %, effect tolerance, score threshold."""

    metrics: tuple[str, ...] = METRICS
    critical: frozenset[str] = frozenset({"error", "compliance"})
    # Allowed relative change in the harmful direction (Kayenta effectSize allowedIncrease /
    # allowedDecrease): quality may drop 5 %, latency and rates may rise 10 % / 20 %.
    tolerance: dict[str, float] = field(default_factory=lambda: dict(KAYENTA_TOLERANCE))
    confidence: float = 0.98
    step_s: float = 60.0
    interval_s: float = 600.0
    marginal: float = 75.0
    pass_score: float = 95.0
    lifetime_s: float | None = None  # the canary's planned duration: its last interval uses pass_score
    # "baseline": every control turn (the stable fleet as baseline, as with a traffic split);
    # "baseline_equal": a control sample of the canary's size (Kayenta's baseline cluster).
    baseline: str = "baseline"
    name: str = "kayenta"

    def _verdict(self, metric: str, stats: tuple[float, float, float, int, int]) -> tuple[str, str]:
        p, mc, mb, nc, nb = stats
        if math.isnan(p):
            return "nodata", f"{metric}: too few points ({nc}, {nb})"
        if not (p < 1 - self.confidence):
            return "pass", f"{metric}: p={p:.3g}"
        effect = mc / mb if mb > 0 else (math.inf if mc > 0 else 1.0)
        tol = self.tolerance.get(metric, 0.0)
        if HIGHER_IS_WORSE[metric] and effect > 1 + tol:
            return "high", f"{metric}: {mc:.4g} vs {mb:.4g} (x{effect:.3g}), p={p:.3g}"
        if not HIGHER_IS_WORSE[metric] and effect < 1 - tol:
            return "low", f"{metric}: {mc:.4g} vs {mb:.4g} (x{effect:.3g}), p={p:.3g}"
        return "pass", f"{metric}: significant but within tolerance (x{effect:.3g})"

    def classify(self, metric: str, canary: np.ndarray, baseline: np.ndarray) -> tuple[str, str]:
        """("pass" | "high" | "low" | "nodata", reason) for one metric, as Kayenta's MannWhitneyClassifier."""
        return self._verdict(metric, mann_whitney(canary, baseline))

    def score(self, s: Stream | Prepared, end_s: float) -> tuple[float, list[str]]:
        p = prepare(s)
        n = int(end_s // self.step_s)
        passed, counted, critical_fail, reasons = 0, 0, False, []
        for metric in self.metrics:
            verdict, reason = self._verdict(metric, p.test(metric, self.baseline, self.step_s, n))
            if verdict == "nodata":
                continue  # Kayenta leaves metrics without data out of the score
            counted += 1
            if verdict == "pass":
                passed += 1
            else:
                reasons.append(reason)
                critical_fail |= metric in self.critical
        if critical_fail:
            return 0.0, reasons
        return (100.0 * passed / counted if counted else 100.0), reasons

    def rollback_time(self, s: Stream | Prepared) -> float | None:
        r = self.rollback(s)
        return r[0] if r else None

    def rollback(self, s: Stream | Prepared) -> tuple[float, str] | None:
        """(event time of the rollback, score and failing metrics), or None."""
        p = prepare(s)
        last = p.last_s
        lifetime = self.lifetime_s if self.lifetime_s is not None else last
        k = 1
        # An interval is judged once the data reach its end (within one step: the last turn of a
        # stream is a fraction of a second before the end of its last minute).
        while k * self.interval_s <= min(last + self.step_s, lifetime) + 1e-9:
            end = k * self.interval_s
            score, reasons = self.score(p, end)
            final = end + self.interval_s > lifetime + 1e-9
            if score < self.marginal or (final and score < self.pass_score):
                bar = f"marginal {self.marginal:g}"
                if score >= self.marginal:
                    bar = f"pass {self.pass_score:g} (last interval)"
                return p.stream.start_ts + end, f"score {score:.0f} < {bar}: " + "; ".join(reasons)
            k += 1
        return None


__all__ = [
    "FLAGGER_HEALTHY",
    "FLAGGER_TYPICAL",
    "KAYENTA_TOLERANCE",
    "FlaggerJudge",
    "KayentaJudge",
    "Prepared",
    "Stream",
    "flagger_ranges",
    "load_jsonl",
    "load_stream",
    "mann_whitney",
    "parse_ts",
    "per_window",
    "prepare",
]
