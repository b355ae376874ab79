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

The thresholds are documented in bench/detection/README.md with the reasoning behind them.
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
        base = _SECONDS[head] = float(calendar.timegm((int(head[0:4]), int(head[5:7]), int(head[8:10]),
                                                       int(head[11:13]), int(head[14:16]), int(head[17:19]))))
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
        t=t, canary=canary, latency=m[:, 1], quality=m[:, 2],
        escalated=m[:, 4] > 0, error=m[:, 5] > 0, compliance=m[:, 6] > 0,
    )


def load_jsonl(path: str | Path) -> Stream:
    with open(path, "rb") as fh:
        return load_stream(fh)


# -- per-minute series -----------------------------------------------------------------------------

METRICS = ("quality", "latency_p95", "latency_p99", "escalation", "error", "compliance")
HIGHER_IS_WORSE = {"quality": False, "latency_p95": True, "latency_p99": True, "escalation": True,
                   "error": True, "compliance": True}


def per_window(s: Stream, mask: np.ndarray, window_s: float, n_windows: int) -> dict[str, np.ndarray]:
    """Each metric per window of ``window_s`` from the rollout start (nan where a window is empty)."""
    w = np.floor((s.t[mask] - s.start_ts) / window_s).astype(np.int64)
    keep = (w >= 0) & (w < n_windows)
    w = w[keep]
    cols = {"latency": s.latency[mask][keep], "quality": s.quality[mask][keep],
            "escalation": s.escalated[mask][keep], "error": s.error[mask][keep],
            "compliance": s.compliance[mask][keep]}
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
        x = lat[bounds[i]:bounds[i + 1]]
        x = x[~np.isnan(x)]
        if len(x):
            out["latency_p95"][i], out["latency_p99"][i] = np.quantile(x, [0.95, 0.99])
    return out


# -- Flagger ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlaggerJudge:
    """Fixed per-interval thresholds on the canary's own metrics, a failed-check counter."""

    # thresholdRange per metric: (min, max); None = unbounded. See README for why these values.
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=lambda: {
        "error": (None, 0.02),  # request-success-rate >= 98 %
        "escalation": (None, 0.03),
        "compliance": (None, 0.015),
        "quality": (0.74, None),
        "latency_p95": (None, 1300.0),
        "latency_p99": (None, 2000.0),
    })
    interval_s: float = 60.0
    threshold: int = 5
    consecutive: bool = False
    name: str = "flagger"

    def checks(self, s: Stream) -> list[tuple[float, bool, str]]:
        """(end of interval, passed, reason) for every complete interval."""
        n = int(max(0.0, (float(s.t.max()) if len(s.t) else s.start_ts) - s.start_ts) // self.interval_s)
        series = per_window(s, s.canary, self.interval_s, n)
        out = []
        for i in range(n):
            failed = []
            if series["n"][i] == 0:
                failed.append("no canary traffic")  # Flagger: "no values found" fails the check
            for metric, (lo, hi) in self.ranges.items():
                v = series[metric][i]
                if math.isnan(v):
                    continue
                if (lo is not None and v < lo) or (hi is not None and v > hi):
                    failed.append(f"{metric}={v:.4g} outside [{lo}, {hi}]")
            out.append((s.start_ts + (i + 1) * self.interval_s, not failed, "; ".join(failed)))
        return out

    def rollback(self, s: Stream) -> tuple[float, str] | None:
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

    def rollback_time(self, s: Stream) -> float | None:
        r = self.rollback(s)
        return r[0] if r else None


# -- Kayenta ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KayentaJudge:
    """Per-minute canary vs baseline series, Mann-Whitney at 98 %, effect tolerance, score threshold."""

    metrics: tuple[str, ...] = METRICS
    critical: frozenset[str] = frozenset({"error", "compliance"})
    # Allowed relative change in the harmful direction (Kayenta effectSize allowedIncrease /
    # allowedDecrease): quality may drop 5 %, latency and rates may rise 10 % / 20 %.
    tolerance: dict[str, float] = field(default_factory=lambda: {
        "quality": 0.05, "latency_p95": 0.10, "latency_p99": 0.10,
        "escalation": 0.20, "error": 0.20, "compliance": 0.20,
    })
    confidence: float = 0.98
    step_s: float = 60.0
    interval_s: float = 600.0
    marginal: float = 75.0
    pass_score: float = 95.0
    lifetime_s: float | None = None  # the canary's planned duration: its last interval uses pass_score
    name: str = "kayenta"

    def classify(self, metric: str, canary: np.ndarray, baseline: np.ndarray) -> tuple[str, str]:
        """("pass" | "high" | "low" | "nodata", reason) for one metric, as Kayenta's MannWhitneyClassifier."""
        c, b = canary[~np.isnan(canary)], baseline[~np.isnan(baseline)]
        if len(c) < 3 or len(b) < 3:
            return "nodata", f"{metric}: too few points ({len(c)}, {len(b)})"
        p = float(mannwhitneyu(c, b, alternative="two-sided").pvalue)
        if not (p < 1 - self.confidence):
            return "pass", f"{metric}: p={p:.3g}"
        mc, mb = float(np.mean(c)), float(np.mean(b))
        effect = mc / mb if mb > 0 else (math.inf if mc > 0 else 1.0)
        tol = self.tolerance.get(metric, 0.0)
        if HIGHER_IS_WORSE[metric] and effect > 1 + tol:
            return "high", f"{metric}: {mc:.4g} vs {mb:.4g} (x{effect:.3g}), p={p:.3g}"
        if not HIGHER_IS_WORSE[metric] and effect < 1 - tol:
            return "low", f"{metric}: {mc:.4g} vs {mb:.4g} (x{effect:.3g}), p={p:.3g}"
        return "pass", f"{metric}: significant but within tolerance (x{effect:.3g})"

    def score(self, s: Stream, end_s: float) -> tuple[float, list[str]]:
        n = int(end_s // self.step_s)
        can = per_window(s, s.canary, self.step_s, n)
        base = per_window(s, ~s.canary, self.step_s, n)
        passed, counted, critical_fail, reasons = 0, 0, False, []
        for metric in self.metrics:
            verdict, reason = self.classify(metric, can[metric], base[metric])
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

    def rollback_time(self, s: Stream) -> float | None:
        r = self.rollback(s)
        return r[0] if r else None

    def rollback(self, s: Stream) -> tuple[float, str] | None:
        """(event time of the rollback, score and failing metrics), or None."""
        last = (float(s.t.max()) if len(s.t) else s.start_ts) - s.start_ts
        lifetime = self.lifetime_s if self.lifetime_s is not None else last
        k = 1
        # An interval is judged once the data reach its end (within one step: the last turn of a
        # stream is a fraction of a second before the end of its last minute).
        while k * self.interval_s <= min(last + self.step_s, lifetime) + 1e-9:
            end = k * self.interval_s
            score, reasons = self.score(s, end)
            final = end + self.interval_s > lifetime + 1e-9
            if score < self.marginal or (final and score < self.pass_score):
                bar = f"marginal {self.marginal:g}"
                if score >= self.marginal:
                    bar = f"pass {self.pass_score:g} (last interval)"
                return s.start_ts + end, f"score {score:.0f} < {bar}: " + "; ".join(reasons)
            k += 1
        return None


__all__ = ["FlaggerJudge", "KayentaJudge", "Stream", "load_jsonl", "load_stream", "parse_ts", "per_window"]
