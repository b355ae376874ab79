"""The gate's verdict: a candidate against a baseline on a whole data set, before production.

Same metrics, segments, tolerances and alpha split as the live judge (``policy``), fixed-sample
tests instead of e-processes (``watcher.stats.fixed``: every observation is there at once, so one
look at full power), and one pure function from the sample to a ``watcher.decision/v1`` record:

* a row (metric x slice) **fails** when the test against "harm <= tolerance" rejects at the row's
  share of ``alpha`` (overall rows ``alpha (1 - s) / M``, each segment slot ``alpha s / (M slots)``,
  as live, without the live judge's split over restarts);
* a row **passes** when the non-inferiority test against "harm >= margin" rejects at
  ``promote.alpha``; the margin is ``promote_tolerance``, and ``tolerance`` for critical metrics
  (compliance): a critical metric must be shown no worse than the tolerance itself;
* the gate **fails** (action ``rollback``) when any row fails; it **passes** (``promote``) when every
  row of every ``promote_gate`` metric passes, overall and in every judged segment (an
  intersection-union test: valid at ``promote.alpha`` without a split); otherwise it is
  **inconclusive**: not enough data to show either, never a failure.

docs/gate.md documents the tests, their measured error rates and the data a healthy candidate needs.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace

import numpy as np

from watcher.contract import (
    Action,
    Cause,
    Decision,
    MetricEvidence,
    RolloutRef,
    ToleranceMode,
    Verdict,
    decision_id,
)
from watcher.judges.gate_sample import CONTROL, TREATMENT, GateSample
from watcher.judges.helpers import fmt, metric_row, moved, nodata_row, opt, slice_alpha
from watcher.judges.policy import MetricPolicy, Policy
from watcher.stats import (
    binomial_bound,
    binomial_pvalue,
    mean_bound,
    mean_pvalue,
    one_sample,
    ratio_from_theta,
    two_sample,
)

__all__ = ["GATE_STRATEGY", "GateResult", "evaluate", "gate_decision", "gate_id"]

GATE_STRATEGY = "gate"  # ``rollout.strategy`` of a gate's decision record
_ACTION = {
    Verdict.PASS: Action.PROMOTE,
    Verdict.FAIL: Action.ROLLBACK,
    Verdict.INCONCLUSIVE: Action.INCONCLUSIVE,
}
_CAUSE = {
    Verdict.PASS: Cause.NON_INFERIOR,
    Verdict.FAIL: Cause.REGRESSION,
    Verdict.INCONCLUSIVE: Cause.INSUFFICIENT_EVIDENCE,
}


@dataclass(frozen=True, slots=True)
class GateResult:
    verdict: Verdict  # pass, fail or inconclusive
    decision: Decision
    rows: tuple[MetricEvidence, ...]


def gate_id(agent_id: str, environment: str, baseline: str, candidate: str, digest: str) -> str:
    """Stable id of a gate run: the same data gives the same id (and so the same decision id)."""
    key = f"{agent_id}|{environment}|{baseline}|{candidate}|{digest}"
    return "gate-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _alpha(policy: Policy, n_slices: int, segment: bool) -> float:
    """The FAIL test's share of alpha: the live judge's split without its restarts."""
    return slice_alpha(policy, len(policy.enabled_metrics()), n_slices - 1, segment)


def pass_margin(mp: MetricPolicy) -> float:
    """The non-inferiority margin of the gate: the tolerance itself for a critical metric."""
    return mp.tolerance if mp.critical else mp.pass_tolerance


def evaluate(sample: GateSample, policy: Policy) -> tuple[MetricEvidence, ...]:
    """Every metric x judged slice, metric-major, overall row first (a ``nodata`` row when the
    metric has too little data overall; segment slices under ``segments.min_conversations``
    per arm are not judged)."""
    units = sample.units
    named = np.array(sorted(s for s in sample.slice_names if s), np.int64)
    judged = named[units[named].min(axis=1) >= policy.segments.min_conversations] if len(named) else named
    sl = np.concatenate((np.zeros(1, np.int64), judged))
    a_fail = np.where(sl > 0, _alpha(policy, sample.n_slices, True), _alpha(policy, sample.n_slices, False))
    a_pass = policy.promote.alpha
    rows: list[MetricEvidence] = []
    for mp in policy.enabled_metrics():
        up = mp.direction.value == "higher_is_worse"
        if mp.kind == "mean":
            cols = _mean_rows(sample, mp, sl, up, a_fail, a_pass)
        else:
            cols = _rate_rows(sample, mp, sl, up, a_fail, a_pass)
        n = cols["n"]
        ok = n.min(axis=1) >= mp.min_samples
        if mp.kind == "tail" and mp.name not in sample.tail_q:
            ok[:] = False
        if not ok[0]:
            rows.append(_nodata(mp, n[0], float(a_fail[0])))
        for i in np.flatnonzero(ok).tolist():
            rows.append(_row(mp, sample, sl[i], {k: v[i] for k, v in cols.items()}, float(a_fail[i]), a_pass))
    return tuple(rows)


def _rate_rows(
    s: GateSample, mp: MetricPolicy, sl: np.ndarray, up: bool, a_fail: np.ndarray, a_pass: float
) -> dict[str, np.ndarray]:
    units = s.units[sl]
    ev = s.events.get(mp.name, np.zeros((s.n_slices, 2)))[sl]
    if s.paired:
        d = s.discordant.get(mp.name, np.zeros((s.n_slices, 2)))[sl]
        c, b, rho = d[:, TREATMENT], d[:, CONTROL], np.full(len(sl), 0.5)
    else:
        c, b = ev[:, TREATMENT], ev[:, CONTROL]
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = units[:, TREATMENT] / units.sum(axis=1)
    upv, tol, ptol = np.full(len(sl), up), mp.tolerance, pass_margin(mp)
    p_fail = binomial_pvalue(c, b, rho, np.full(len(sl), tol), upv)
    p_pass = binomial_pvalue(c, b, rho, np.full(len(sl), ptol), ~upv)
    # the harm-side bound at the FAIL test's level, the other one at promote.alpha
    harm = ratio_from_theta(binomial_bound(c, b, a_fail, np.full(len(sl), not up)), rho)
    other = ratio_from_theta(binomial_bound(c, b, a_pass, upv), rho)
    with np.errstate(invalid="ignore", divide="ignore"):
        effect = ratio_from_theta(np.where(c + b > 0, c / (c + b), np.nan), rho)
        est = np.where(units > 0, ev / units, np.nan)
    lo, hi = (harm, other) if up else (other, harm)
    return {"n": units, "p_fail": p_fail, "p_pass": p_pass, "lo": lo, "hi": hi, "eff": effect, "est": est}


def _mean_rows(
    s: GateSample, mp: MetricPolicy, sl: np.ndarray, up: bool, a_fail: np.ndarray, a_pass: float
) -> dict[str, np.ndarray]:
    arms = s.means[mp.name][sl]  # (row, arm, F)
    ms = one_sample(s.diffs[mp.name][sl]) if s.paired else two_sample(arms[:, TREATMENT], arms[:, CONTROL])
    relative = mp.tolerance_mode is ToleranceMode.RELATIVE
    tol, ptol = mp.tolerance, pass_margin(mp)
    if relative:
        tol, ptol = math.log(tol), math.log(ptol)
    upv = np.full(len(sl), up)
    p_fail = mean_pvalue(ms, np.full(len(sl), tol), upv, True)
    p_pass = mean_pvalue(ms, np.full(len(sl), ptol), upv, False)
    harm = mean_bound(ms, a_fail, np.full(len(sl), not up))
    other = mean_bound(ms, a_pass, upv)
    lo, hi = (harm, other) if up else (other, harm)
    with np.errstate(invalid="ignore", divide="ignore"):
        est = np.where(arms[..., 1] > 0, arms[..., 0] / arms[..., 1], np.nan)
    eff = ms.diff
    if relative:
        lo, hi, eff, est = np.exp(lo), np.exp(hi), np.exp(eff), np.exp(est)
    return {"n": arms[..., 5], "p_fail": p_fail, "p_pass": p_pass, "lo": lo, "hi": hi, "eff": eff, "est": est}


def _row(
    mp: MetricPolicy, s: GateSample, slice_: int, c: dict[str, np.ndarray], a_fail: float, a_pass: float
) -> MetricEvidence:
    p_fail, p_pass = float(c["p_fail"]), float(c["p_pass"])
    verdict = Verdict.FAIL if p_fail <= a_fail else Verdict.PASS if p_pass <= a_pass else Verdict.INCONCLUSIVE
    relative = mp.tolerance_mode is ToleranceMode.RELATIVE
    lo, hi, eff = opt(c["lo"]), opt(c["hi"]), opt(c["eff"])
    e0, e1 = (opt(x) for x in c["est"])
    n0, n1 = (int(x) for x in c["n"])
    name = s.slice_names.get(slice_, "all")
    what = f"{mp.name} (> {s.tail_q[mp.name]:.0f} ms)" if mp.name in s.tail_q else mp.name
    if s.paired and mp.kind != "mean":
        what += " (discordant conversations)"
    mag = "?" if eff is None else (f"x{eff:.3g}" if relative else f"{abs(eff):.3g}")
    margin = pass_margin(mp)
    shown = _fmt_margin(margin, relative)
    if verdict is Verdict.FAIL:
        tail = f"{_p(p_fail)} <= {a_fail:.2g} against {_fmt_margin(mp.tolerance, relative)}"
    elif verdict is Verdict.PASS:
        tail = f"non-inferior within {shown}: {_p(p_pass)} <= {a_pass:.2g}"
    else:
        tail = f"inconclusive: not shown within {shown} ({_p(p_pass)} > {a_pass:.2g})"
    verb = "?" if eff is None else moved(eff, relative)
    reason = (
        f"{what} in {name} {verb} {mag} ({fmt(lo)}..{fmt(hi)}) candidate {fmt(e1)} n={n1} "
        f"vs baseline {fmt(e0)} n={n0}; {tail}"
    )
    # statistic: 1/p of the fail test, so "statistic >= threshold" means fail as in live records
    row = metric_row(
        mp, name, verdict, (n0, e0), (n1, e1), (eff, lo, hi), 1.0 / max(p_fail, 1e-300), 1.0 / a_fail, reason
    )
    return replace(row, promote_tolerance=margin)


def _nodata(mp: MetricPolicy, n: np.ndarray, a_fail: float) -> MetricEvidence:
    why = f"not enough data (candidate n={int(n[1])}, baseline n={int(n[0])}, need {mp.min_samples} per arm)"
    return replace(nodata_row(mp, int(n[0]), int(n[1]), 1.0 / a_fail, why), promote_tolerance=pass_margin(mp))


def gate_decision(
    rows: tuple[MetricEvidence, ...],
    sample: GateSample,
    policy: Policy,
    ref: RolloutRef,
    ts: float,
    *,
    segments_must_pass: bool = True,
) -> GateResult:
    """The gate's verdict over its rows and the decision record that carries it.

    ``segments_must_pass=False`` requires non-inferiority of the overall rows only; a failing segment
    still fails the gate (for data sets too small to show non-inferiority in every segment).
    """
    fails = sorted(
        (m for m in rows if m.verdict is Verdict.FAIL),
        key=lambda m: (-m.statistic / m.threshold, m.metric, m.slice),
    )
    gates = {m.name for m in policy.enabled_metrics() if m.promote_gate}
    required = [m for m in rows if m.metric in gates and (segments_must_pass or m.slice == "all")]
    # overall rows first in the reason: they are what a person looks at first
    open_ = sorted((m for m in required if m.verdict is not Verdict.PASS), key=lambda m: m.slice != "all")
    design = _design(sample)
    trigger = None
    if fails:
        verdict = Verdict.FAIL
        more = f"; {len(fails) - 1} more failing" if len(fails) > 1 else ""
        reason = f"rollback: {fails[0].reason}{more}"
        trigger = {"metric": fails[0].metric, "slice": fails[0].slice}
        evidence = tuple([*fails, *(m for m in rows if m.verdict is not Verdict.FAIL)])
    elif required and not open_:
        verdict = Verdict.PASS
        scope = "metric x segment rows" if segments_must_pass else "overall rows (segments: none failing)"
        reason = (
            f"promote: all {len(required)} {scope} non-inferior "
            f"({', '.join(sorted({m.metric for m in required}))}); {design}"
        )
        evidence = rows
    else:
        verdict = Verdict.INCONCLUSIVE
        listed = "; ".join(m.reason for m in open_[:3])
        more = f"; {len(open_) - 3} more" if len(open_) > 3 else ""
        reason = (
            f"inconclusive: no regression shown, {len(open_)} of {len(required)} rows not shown "
            f"non-inferior ({listed}{more}); {design}"
        )
        evidence = tuple(sorted(rows, key=lambda m: m.verdict is Verdict.PASS))
    action = _ACTION[verdict]
    decision = Decision(
        decision_id(ref.rollout_id, 1, action),
        ts,
        ref,
        action,
        _CAUSE[verdict],
        reason,
        evidence,
        None,
        trigger,
        "watcher",
        1,
    )
    return GateResult(verdict, decision, rows)


def _design(s: GateSample) -> str:
    c = s.counts
    if s.paired:
        return (
            f"paired by conversation: {c.get('paired', 0)} conversations answered by both versions "
            f"({c.get('unpaired_candidate', 0)} candidate-only and {c.get('unpaired_baseline', 0)} "
            "baseline-only left out)"
        )
    return (
        f"candidate n={c.get('conversations_candidate', 0)} vs baseline "
        f"n={c.get('conversations_baseline', 0)} conversations (unpaired)"
    )


def _p(p: float) -> str:
    return "p<1e-300" if p < 1e-300 else f"p={p:.2g}"


def _fmt_margin(m: float, relative: bool) -> str:
    return f"x{m:.3g}" if relative else f"{m:+.3g}"
