"""What every judge shares: the test parameters of a metric, the alpha split and the evidence rows.

The canary, shadow, blue-green and flag judges differ in what they compare (concurrent arms, pairs,
a reference before the switch) but not in how a metric's policy becomes a test, how the error
budget is split over metrics and slices, or how a verdict becomes a ``MetricEvidence`` row: those
live here, once, so that the judges' numbers and texts stay consistent with each other.
"""

from __future__ import annotations

import math
from typing import SupportsFloat

from watcher.contract import ArmEstimate, MetricEvidence, ToleranceMode, Verdict, metric_def
from watcher.judges.policy import MetricPolicy, Policy

__all__ = [
    "VAR_FLOOR",
    "VERDICT_SUFFIX",
    "evalue",
    "fmt",
    "mean_params",
    "metric_row",
    "moved",
    "nodata_row",
    "opt",
    "slice_alpha",
]

# The smallest variance a mean test is run with: a metric constant within a block (every score
# exactly 1.0) would give the mixture SPRT a zero variance and an infinite e-value.
VAR_FLOOR = 1e-12
# What a row's reason ends with, per verdict (a FAIL needs no word: the e-value already says it).
VERDICT_SUFFIX = {Verdict.PASS: "; non-inferior", Verdict.FAIL: "", Verdict.INCONCLUSIVE: "; inconclusive"}
_MAX_LOG_E = 700.0  # exp(700) ~ 1e304: an e-value shown beyond it would overflow a float


def mean_params(mp: MetricPolicy, promote: bool = False) -> tuple[float, float, float]:
    """(tolerance on the tested scale, mixing scale tau, sign: +1 when higher is worse) of a mean
    metric's FAIL test, or with ``promote`` of its PASS test (``promote_tolerance``, its own mixing
    scale). Relative tolerances are tested on the log scale (log latency). The FAIL test's scale is the
    metric's own (``MetricDef.fail_tau``: the size of the excess harm it sees fastest, as the evidence
    at excess x and variance V is x^2/(2V) * tau^2/(V + tau^2) minus a log term)."""
    raw = mp.pass_tolerance if promote else mp.tolerance
    tol = math.log(raw) if mp.tolerance_mode is ToleranceMode.RELATIVE else raw
    sign = 1.0 if mp.direction.value == "higher_is_worse" else -1.0
    if promote:
        return tol, max(2 * abs(tol), 0.02), sign
    fail_tau = metric_def(mp.name).fail_tau
    return tol, max(2 * abs(tol), 0.02) if fail_tau is None else fail_tau, sign


def slice_alpha(policy: Policy, n_metrics: int, segment_slices: int, segment: bool) -> float:
    """One test's share of the error budget: Bonferroni over the metrics, then ``budget_share`` spread
    over the ``segment_slices`` segment slices and the rest to the overall slice (docs/statistics.md).
    With no segment slices the overall slice gets the metric's whole share."""
    a = policy.alpha / max(n_metrics, 1)
    if not segment_slices:
        return a
    share = policy.segments.budget_share
    return a * share / segment_slices if segment else a * (1 - share)


def evalue(log_e: float, log_threshold: float) -> tuple[float, float]:
    """(e-value, threshold) of a row from their logs; the e-value shown is capped, not overflowed."""
    return math.exp(min(log_e, _MAX_LOG_E)), math.exp(log_threshold)


def moved(effect: float, relative: bool) -> str:
    """ "rose" or "fell": the effect's side of no difference (1 for ratios, 0 for differences)."""
    return "rose" if effect > (1.0 if relative else 0.0) else "fell"


def fmt(x: float | None) -> str:
    """A number in a reason: 3 significant digits, "?" when there is none."""
    if x is None or not math.isfinite(x):
        return "?"
    return f"{x:.3g}" if abs(x) >= 0.01 or x == 0 else f"{x:.2e}"


def opt(x: SupportsFloat | None) -> float | None:
    """A number in a record: None when there is none (records are JSON: no NaN, no inf)."""
    return float(x) if x is not None and math.isfinite(x) else None


def _unit(mp: MetricPolicy) -> str:
    return "ratio" if mp.tolerance_mode is ToleranceMode.RELATIVE else "difference"


def metric_row(
    mp: MetricPolicy,
    slice_name: str,
    verdict: Verdict,
    control: tuple[int, float | None],
    treatment: tuple[int, float | None],
    effect: tuple[float | None, float | None, float | None],
    statistic: float,
    threshold: float,
    reason: str,
) -> MetricEvidence:
    """The evidence row of one metric in one slice: ``control`` and ``treatment`` are (units,
    estimate), ``effect`` is (effect, lower, upper); non-finite numbers become None."""
    (n0, e0), (n1, e1), (eff, lo, hi) = control, treatment, effect
    return MetricEvidence(
        mp.name,
        slice_name,
        verdict,
        ArmEstimate(n0, opt(e0)),
        ArmEstimate(n1, opt(e1)),
        opt(eff),
        _unit(mp),
        opt(lo),
        opt(hi),
        statistic,
        threshold,
        mp.tolerance,
        mp.critical,
        reason,
        mp.pass_tolerance,
    )


def nodata_row(
    mp: MetricPolicy, control_n: int, treatment_n: int, threshold: float, why: str
) -> MetricEvidence:
    """The overall row of a metric not judged yet: its reason is "<metric> in all: ``why``"."""
    return MetricEvidence(
        mp.name,
        "all",
        Verdict.NODATA,
        ArmEstimate(control_n, None),
        ArmEstimate(treatment_n, None),
        None,
        _unit(mp),
        None,
        None,
        1.0,
        threshold,
        mp.tolerance,
        mp.critical,
        f"{mp.name} in all: {why}",
        mp.pass_tolerance,
    )
