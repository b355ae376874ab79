"""Blue-green: judge the new (green) version after the switch against the old (blue) version before it.

At the switch marker all traffic moves to green, so there is no concurrent control. The reference is
blue's own behaviour, frozen at the switch, read from ``VersionHistory`` (``watcher.state.history``),
per post-switch hour h (``bin_s``; ``horizon_bins`` hours are judged):

* ``same_hours``: blue on the same hours of the previous days (up to ``days``), each hour's window
  widened by ``pad_s`` on both sides (centred, so a linear time-of-day trend cancels) and the days
  pooled: time-of-day effects are taken from data, not assumed away;
* ``recent``: otherwise blue's last ``recent_s`` before the switch, with the tolerance widened by a
  drift allowance per hour between the reference window and the judged hour (a time-of-day change is
  not harm; the decision says which reference it used).

Validity (docs/strategies/blue_green.md): each reference end is a fixed-sample bound at a share of
``ref_share * alpha_row`` (split over the hours with weights 1/((h+1)(h+2)), so the first hour, where
blue-green must decide, gets the most); green is tested against those constants with anytime-valid
one-sample e-processes at ``(1 - ref_share) * alpha_row``: the mixture SPRT on the cluster-robust mean
(quality, log latency) and an exact binomial mixture e-process on the share of conversations with an
event (escalation, error, compliance; latency tail: a turn above blue's threshold, below). A cumulative
test runs from the switch and restarted tests every ``restart_s`` (5 min) after it, each for two
hours (``restart_share`` of the green budget, ``stats.restart_alpha``), so a regression starting after
the switch is not diluted by green's healthy minutes. Green is kept per 5-min step; a test sums its
steps per hour, the unit of the reference.
Union bound: P(false rollback) <= alpha.

Latency tail (``latency_pNN``, overall only): the history keeps per bucket a histogram of each
conversation's slowest turn (``watcher.stats.latency_bins``). Per hour, of blue's n reference conversations
m = floor((1 - NN%) n) have their slowest turn above the order statistic X_(n-m), and blue's true
exceedance of X_(n-m) is exactly Beta(m + 1, n - m) distributed (conversations i.i.d., any continuous
distribution), so its Clopper-Pearson bounds are exact although the threshold is fitted on the same
conversations. The threshold is the bin edge just above X_(n-m) (fail test; blue's exceedance there
is smaller) or just below it (pass test). Green's share of conversations with a turn above it is
then tested like a rate; in ``recent`` mode green's threshold is raised by the latency drift
allowance (whole bins).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import numpy as np

from watcher.contract import (
    MetricEvidence,
    RolloutEvidence,
    RolloutRef,
    ToleranceMode,
    TurnColumns,
    Verdict,
    metric_def,
)
from watcher.judges.helpers import (
    VAR_FLOOR,
    VERDICT_SUFFIX,
    evalue,
    fmt,
    mean_params,
    metric_row,
    moved,
    nodata_row,
    slice_alpha,
)
from watcher.judges.policy import MetricPolicy, Policy, load_policy
from watcher.state import (
    DAY,
    F_CONV,
    F_RATE,
    LATENCY_MAX,
    MEAN_AT,
    N_FIELDS,
    ConvRows,
    NullHistory,
    SliceMap,
    Tracker,
    VersionHistory,
    pad_conv_cols,
)
from watcher.stats import (
    FAIL_GRID,
    MEAN_FIELDS,
    PASS_GRID,
    array_from_state,
    array_to_state,
    cluster_mean,
    logsumexp,
    msprt_half_width,
    msprt_log_evalue,
    restart_alpha,
)
from watcher.stats import latency_bins as lb

__all__ = [
    "BlueGreenJudge",
    "reference_history",
    "BlueGreenSettings",
    "Reference",
    "build_reference",
]

_STATE_V = 4  # v3: green's per-hour histograms of slowest turns; v4: green kept per restart step


@dataclass(frozen=True, slots=True)
class BlueGreenSettings:
    bin_s: float = 3600.0  # post-switch hours get their own reference (time of day moves within hours)
    horizon_bins: int = 6  # hours after the switch that are judged (later conversations are not)
    days: int = 3  # previous days pooled for the same-hours reference
    min_days: int = 1  # previous days with data needed for an hour, else the recent reference
    min_ref_conversations: int = 100  # per day and hour window for a day to count
    pad_s: float = 1800.0  # same_hours: each hour's window widened by this much on both sides
    recent_s: float = 3600.0  # the fallback reference: blue's last hour before the switch
    drift_quality: float = 0.01  # recent: allowed time-of-day drift per hour of distance (absolute)
    drift_latency: float = 1.05  # ratio per hour
    drift_rate: float = 1.10  # ratio per hour
    ref_share: float = 0.5  # share of each row's alpha spent on the reference bounds
    restart_share: float = 0.25  # share of the green tests' alpha spent on restarted tests
    # restarted tests start every restart_s after the switch (a divisor of bin_s: green is kept per
    # step of restart_s) and one restarted at step j sees steps j .. j + span - 1 (2 h)
    restart_s: float = 300.0
    restart_span: int = 24
    conversations: int = 50_000

    def __post_init__(self) -> None:
        k = self.bin_s / self.restart_s if self.restart_s > 0 else 0.0
        if k < 1 or abs(k - round(k)) > 1e-9:
            raise ValueError(f"restart_s ({self.restart_s:g}) must divide bin_s ({self.bin_s:g})")

    @property
    def steps_per_bin(self) -> int:
        """Steps of ``restart_s`` per reference hour: green's table has one row per step."""
        return round(self.bin_s / self.restart_s)


def reference_history() -> VersionHistory:
    """The versions' history blue-green's references are read from: keeping only buckets that a
    reference window could use (``min_ref_conversations`` within the widest same-hours window)."""
    cfg = BlueGreenSettings()
    bucket_s = 1800.0
    span = math.ceil((cfg.bin_s + 2 * cfg.pad_s) / bucket_s) + 1  # buckets an unaligned window touches
    return VersionHistory(bucket_s=bucket_s, min_window=(cfg.min_ref_conversations, span))


@dataclass(frozen=True, slots=True)
class Reference:
    mode: str  # "same_hours" | "recent" | "none"
    days: int  # previous days pooled (same_hours: the fewest over the hours)
    bins: tuple[dict[str, np.ndarray], ...]  # per judged post-switch hour: blue's summed fields per slice
    distance_h: tuple[float, ...]  # recent: hours between the reference window's middle and each hour's
    description: str

    @property
    def shared(self) -> bool:
        """One reference window for every hour (recent mode): one bound serves them all."""
        return self.mode == "recent"


def _pool(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for p in parts:
        for name, a in p.items():
            out[name] = out[name] + a if name in out else a.copy()
    return out


def build_reference(
    history: VersionHistory, rollout: RolloutRef, switch_ts: float, cfg: BlueGreenSettings
) -> Reference:
    agent, env, blue = rollout.agent_id, rollout.environment, rollout.baseline_version
    horizon = min(cfg.horizon_bins, int((DAY - 2 * cfg.pad_s) // cfg.bin_s))  # windows stay before the switch
    bins, days = [], []
    for h in range(horizon):
        t0 = switch_ts + h * cfg.bin_s
        parts = [
            r
            for d in range(1, cfg.days + 1)
            if (
                r := history.reference(
                    agent, env, blue, t0 - cfg.pad_s - d * DAY, t0 + cfg.bin_s + cfg.pad_s - d * DAY
                )
            )
            and r["all"][F_CONV] >= cfg.min_ref_conversations
        ]
        if len(parts) < cfg.min_days:
            break  # the judged horizon ends at the first hour without same-hours history
        bins.append(_pool(parts))
        days.append(len(parts))
    if bins:
        return Reference(
            "same_hours",
            min(days),
            tuple(bins),
            (0.0,) * len(bins),
            f"blue {blue} on the same hours of {min(days)} previous day(s)",
        )
    recent = history.reference(agent, env, blue, switch_ts - cfg.recent_s, switch_ts)
    if not recent or recent["all"][F_CONV] < cfg.min_ref_conversations:
        return Reference("none", 0, (), (), f"no history of blue {blue}")
    dist = tuple(((h + 0.5) * cfg.bin_s + cfg.recent_s / 2) / 3600 for h in range(cfg.horizon_bins))
    return Reference(
        "recent",
        1,
        (recent,) * cfg.horizon_bins,
        dist,
        f"blue {blue} in the {cfg.recent_s / 60:.0f} min before the switch, tolerance widened for "
        f"time-of-day drift (no same-hours history)",
    )


class _Part(NamedTuple):
    """Green in the tests' steps summed per reference hour, for every test (block) at once: (block,
    hour) cells padded with empty hours (0 conversations, hour 0), so a test's statistics are sums
    over its row. ``_parts`` gives (block, hour, slice, field); a metric row reads one slice."""

    hours: np.ndarray  # (block, hour)
    x: np.ndarray  # (block, hour, field)
    hist: np.ndarray  # (block, hour, latency bin)

    def slice(self, s: int) -> _Part:
        return _Part(self.hours, self.x[:, :, s], self.hist)

    def take(self, k: int) -> _Part:
        """Test ``k`` alone (still with a block axis)."""
        return _Part(self.hours[k : k + 1], self.x[k : k + 1], self.hist[k : k + 1])

    def block(self, k: int) -> _Part:
        """Test ``k`` alone, without the block axis: (hour, ...)."""
        return _Part(self.hours[k], self.x[k], self.hist[k])


class BlueGreenJudge:
    """Green after the switch vs blue's reference; same interface as ``watcher.judges.canary.Judge``."""

    def __init__(
        self,
        rollout: RolloutRef,
        policy: Policy,
        started_ts: float,
        history: VersionHistory | None = None,
        settings: BlueGreenSettings | None = None,
        reference: Reference | None = None,
    ) -> None:
        self.rollout, self.policy, self.started_ts = rollout, policy, started_ts
        self.cfg = settings or BlueGreenSettings()
        self.metrics = policy.enabled_metrics()
        self.ref = (
            reference
            if reference is not None
            else build_reference(history or NullHistory(), rollout, started_ts, self.cfg)
        )
        seg = policy.segments
        self.slices = SliceMap(seg.keys, seg.max_keys, seg.max_values_per_key, seg.enabled)
        self.tracker = Tracker(self.cfg.conversations, self.slices)
        # green per step of restart_s after the switch (step // steps_per_bin is its reference hour),
        # allocated an hour at a time up to the watermark's hour (most rollouts end within two)
        k = self.cfg.steps_per_bin
        self.table = np.zeros((k, self.slices.size, N_FIELDS))
        self.hist = np.zeros((k, lb.N_BINS), np.int32)  # green's slowest turns per step (counts)
        self.watermark = started_ts
        self._z_cache: dict[float, float] = {}
        self._bounds: dict[tuple[str, str], tuple[np.ndarray, ...]] = {}  # the reference is frozen: cache

    def update(
        self,
        turns: Sequence[Any],
        arms: Sequence[str],
        canary_weight: float | None = None,
        columns: TurnColumns | None = None,
    ) -> None:
        cols = columns if columns is not None else TurnColumns(turns)
        green = self.rollout.canary_version
        if not cols.n or not self.ref.bins:
            return
        keep = cols.arm_is(arms, "canary") & (cols.ts >= self.started_ts)
        if green is not None:
            keep &= cols.version_is(green)
        if not keep.any():
            return
        mine = cols if keep.all() else cols.take(np.flatnonzero(keep))
        ts = mine.ts
        self.watermark = max(self.watermark, float(ts.max()))
        steps = ((ts - self.started_ts) // self.cfg.restart_s).astype(np.int64)
        self._grow()
        ns = len(self.table)
        self.tracker.add(
            mine,
            np.zeros(mine.n, np.int64),
            steps,
            lambda g, b: (self.table[b], self.hist[b]) if b < ns else None,
        )

    def _grow(self) -> None:
        """Rows for every step up to the watermark's hour, within the judged horizon."""
        k = self.cfg.steps_per_bin
        horizon = max(len(self.ref.bins), 1) * k
        hour = int((self.watermark - self.started_ts) // self.cfg.bin_s)
        need = min(horizon, (hour + 1) * k)
        if need > len(self.table):
            more = need - len(self.table)
            self.table = np.concatenate([self.table, np.zeros((more, *self.table.shape[1:]))])
            self.hist = np.concatenate([self.hist, np.zeros((more, lb.N_BINS), self.hist.dtype)])

    # -- evidence -----------------------------------------------------------------------------------
    def _alpha(self, segment: bool) -> float:
        return slice_alpha(self.policy, len(self.metrics), self.slices.size - 1, segment)

    def _blocks(self) -> list[tuple[str, range, float]]:
        """(label, judged steps, share of the green budget): the cumulative test and the live restarts."""
        ns = len(self.table)
        out = [("", range(ns), 1.0 - self.cfg.restart_share)]
        current = min(int((self.watermark - self.started_ts) // self.cfg.restart_s), ns - 1)
        span = self.cfg.restart_span
        for j in range(max(current - span + 1, 1), current + 1):
            if self.cfg.restart_share > 0:
                out.append(
                    (
                        f" [restarted at +{j * self.cfg.restart_s / 3600:.2f}h]",
                        range(j, min(j + span, ns)),
                        restart_alpha(j, self.cfg.restart_share),
                    )
                )
        return out

    def _parts(self, blocks: list[tuple[str, range, float]]) -> _Part:
        """Green in each block's steps summed per reference hour, every slice at once: the tables hold
        sums, so an hour's steps add."""
        k = self.cfg.steps_per_bin
        spans = [(st.start, st.stop) for _, st, _ in blocks]
        width = max((b - 1) // k - a // k + 1 for a, b in spans)
        hours = np.zeros((len(blocks), width), np.int64)
        x = np.zeros((len(blocks), width, *self.table.shape[1:]))
        hist = np.zeros((len(blocks), width, lb.N_BINS), np.int64)
        for i, (a, b) in enumerate(spans):
            for c, h in enumerate(range(a // k, (b - 1) // k + 1)):
                lo, hi = max(h * k, a), min((h + 1) * k, b)
                hours[i, c], x[i, c], hist[i, c] = (
                    h,
                    self.table[lo:hi].sum(axis=0),
                    self.hist[lo:hi].sum(axis=0),
                )
        return _Part(hours, x, hist)

    def evidence(self, ts: float) -> RolloutEvidence:
        total = self.table.sum(axis=0)
        rows: list[MetricEvidence] = []
        ref_all = self._ref_conversations("all")
        blocks = self._blocks()
        parts = self._parts(blocks)
        for m in self.metrics:
            tail = m.kind == "tail"
            for s, name in sorted(self.slices.names.items()):
                if tail and s:
                    continue  # the history keeps the latency distribution overall only
                g = int(total[s, F_CONV])
                ref_n = self._ref_conversations(name)
                if s and (
                    g < self.policy.segments.min_conversations
                    or ref_n < self.policy.segments.min_conversations
                ):
                    continue
                if (
                    self.ref.mode == "none"
                    or g < m.min_samples
                    or not ref_n
                    or (tail and not self._tail_ready(m))
                ):
                    if s == 0:
                        rows.append(self._nodata(m, g, ref_all))
                    continue
                rows.append(self._row(m, name, self._alpha(s > 0), blocks, parts.slice(s)))
        g = int(total[0, F_CONV])
        return RolloutEvidence(
            self.rollout.rollout_id, ts, ts - self.started_ts, tuple(rows), None, ref_all, g
        )

    def _ref_conversations(self, name: str) -> int:
        return int(self.ref.bins[0][name][F_CONV]) if self.ref.bins and name in self.ref.bins[0] else 0

    def _tail_ready(self, m: MetricPolicy) -> bool:
        """Whether blue's history has a latency distribution for some judged hour (tail rows: overall
        only)."""
        return bool(np.isfinite(self._get_bounds(m, "all", self._alpha(False))[0]).any())

    def _get_bounds(self, m: MetricPolicy, name: str, alpha_row: float) -> tuple[np.ndarray, ...]:
        """The metric's per-hour constants (cached: the reference is frozen)."""
        bounds = self._bounds.get((m.name, name))
        if bounds is None:
            bounds = self._bounds[(m.name, name)] = (
                self._mean_bounds(m, name, alpha_row)
                if m.kind == "mean"
                else self._tail_bounds(m, alpha_row)
                if m.kind == "tail"
                else self._rate_bounds(m, name, alpha_row)
            )
        return bounds

    def _z(self, a: float) -> float:
        if a not in self._z_cache:
            from scipy.stats import norm  # lazily: scipy.stats costs a second of start-up

            self._z_cache[a] = float(norm.isf(a))
        return self._z_cache[a]

    def _ref_alpha(self, total: float) -> np.ndarray:
        """Per hour, the share of ``total`` its reference bound may miss with: 1/((h+1)(h+2)),
        normalised (sums to ``total``); a single shared bound (recent mode) gets all of it."""
        nb = len(self.ref.bins)
        if self.ref.shared:
            return np.full(nb, total)
        h = np.arange(nb)
        w = 1.0 / ((h + 1) * (h + 2))
        return total * w / w.sum()

    def _row(
        self,
        m: MetricPolicy,
        name: str,
        alpha_row: float,
        blocks: list[tuple[str, range, float]],
        parts: _Part,
    ) -> MetricEvidence:
        cfg = self.cfg
        green_alpha = (1 - cfg.ref_share) * alpha_row
        log_pthr = math.log(1 / ((1 - cfg.ref_share) * self.policy.promote.alpha))
        relative = m.tolerance_mode is ToleranceMode.RELATIVE
        bounds = self._get_bounds(m, name, alpha_row)
        # green's cumulative and restarted tests mixed with their alpha fractions as weights (one
        # e-process, as in the canary judge) against the green budget; the largest term names the test
        judged = parts.x[..., F_CONV].sum(axis=-1) >= m.min_samples
        judged[0] = True
        terms = np.where(judged, self._e(m, parts, bounds, True) + np.log([b[2] for b in blocks]), -np.inf)
        mixed = float(logsumexp(terms))
        green_thr = math.log(1 / green_alpha)
        k = len(blocks) - 1 - int(np.argmax(terms[::-1])) if mixed >= green_thr else 0  # ties: the later
        (label, _, frac), part = blocks[k], parts.block(k)
        lep = float(self._e(m, parts.take(0), bounds, False)[0])
        eff, lo, hi, e0, e1 = self._estimate(m, part, bounds, math.log(1 / (green_alpha * frac)))
        if relative and m.kind == "mean":
            eff, lo, hi, e0, e1 = (
                math.exp(v) if math.isfinite(v) else math.nan for v in (eff, lo, hi, e0, e1)
            )
        verdict = (
            Verdict.FAIL if mixed >= green_thr else Verdict.PASS if lep >= log_pthr else Verdict.INCONCLUSIVE
        )
        stat, thr = evalue(mixed, green_thr)
        g, ref_n = int(part.x[:, F_CONV].sum()), self._ref_conversations(name)
        what = m.name
        if m.kind == "tail":  # units: conversations with a latency; the threshold of the first judged hour
            g, ref_n = int(part.hist.sum()), int(self.ref.bins[0].get(LATENCY_MAX, np.zeros(1)).sum())
            thr_ms = bounds[5][part.hours][np.isfinite(bounds[5][part.hours])]
            what = f"{m.name} (> {thr_ms[0]:.0f} ms)" if len(thr_ms) else m.name
        mag = f"x{fmt(eff)}" if relative else fmt(abs(eff))
        reason = (
            f"{what} in {name} {moved(eff, relative)} {mag} after the switch ({fmt(lo)}..{fmt(hi)}, "
            f"e={stat:.3g} {'>=' if verdict is Verdict.FAIL else '<'} {thr:.3g}) green {fmt(e1)} n={g} vs "
            f"reference {fmt(e0)} n={ref_n}: {self.ref.description}{VERDICT_SUFFIX[verdict]}{label}"
        )
        return metric_row(m, name, verdict, (ref_n, e0), (g, e1), (eff, lo, hi), stat, thr, reason)

    # Per-hour constants the green e-processes test against (the reference is frozen at the switch).
    def _mean_bounds(self, m: MetricPolicy, name: str, alpha_row: float) -> tuple[np.ndarray, ...]:
        """(fail boundary, pass boundary, reference point) per hour, on the tested scale."""
        f = MEAN_AT[m.name]
        tol, _, sign = mean_params(m)
        ptol, _, _ = mean_params(m, promote=True)
        # recent mode: the time-of-day drift allowed per hour, on the metric's tested scale
        per_h = math.log(self.cfg.drift_latency) if metric_def(m.name).log_scale else self.cfg.drift_quality
        a_f = self._ref_alpha(self.cfg.ref_share * alpha_row)
        a_p = self._ref_alpha(self.cfg.ref_share * self.policy.promote.alpha)
        nb = len(self.ref.bins)
        b_fail, b_pass, ref_pt = np.full(nb, np.nan), np.full(nb, np.nan), np.full(nb, np.nan)
        for h, ref in enumerate(self.ref.bins):
            if name not in ref:
                continue
            rm, rv, _ = (float(v) for v in cluster_mean(ref[name][f : f + MEAN_FIELDS], VAR_FLOOR))
            if not (math.isfinite(rm) and math.isfinite(rv)):
                continue
            allow = per_h * self.ref.distance_h[h] if self.ref.mode == "recent" else 0.0
            sd = math.sqrt(rv)
            b_fail[h] = rm + sign * self._z(float(a_f[h])) * sd + tol + sign * allow
            b_pass[h] = rm - sign * self._z(float(a_p[h])) * sd + ptol - sign * allow
            ref_pt[h] = rm
        return b_fail, b_pass, ref_pt

    def _rate_bounds(self, m: MetricPolicy, name: str, alpha_row: float) -> tuple[np.ndarray, ...]:
        """(fail rate, pass rate, reference rate) per hour: exact (Clopper-Pearson) reference bounds
        times the tolerance and, in recent mode, the drift allowance."""
        f = F_RATE[m.name]
        up = m.direction.value == "higher_is_worse"
        a_f = self._ref_alpha(self.cfg.ref_share * alpha_row)
        a_p = self._ref_alpha(self.cfg.ref_share * self.policy.promote.alpha)
        nb = len(self.ref.bins)
        p_fail, p_pass, p_pt = np.full(nb, np.nan), np.full(nb, np.nan), np.full(nb, np.nan)
        for h, ref in enumerate(self.ref.bins):
            if name not in ref or ref[name][F_CONV] <= 0:
                continue
            k, n = float(ref[name][f]), float(ref[name][F_CONV])
            from scipy.stats import beta  # lazily: scipy.stats costs a second of start-up

            upper = lambda a, k=k, n=n: float(beta.isf(a, k + 1, n - k)) if k < n else 1.0
            lower = lambda a, k=k, n=n: float(beta.ppf(a, k, n - k + 1)) if k > 0 else 0.0
            allow = self.cfg.drift_rate ** self.ref.distance_h[h] if self.ref.mode == "recent" else 1.0
            if up:
                p_fail[h] = upper(float(a_f[h])) * m.tolerance * allow
                p_pass[h] = lower(float(a_p[h])) * m.pass_tolerance / allow
            else:  # a rate where lower is worse: mirror the roles of the bounds
                p_fail[h] = lower(float(a_f[h])) * m.tolerance / allow
                p_pass[h] = upper(float(a_p[h])) * m.pass_tolerance * allow
            p_pt[h] = k / n
        return p_fail, p_pass, p_pt

    def _tail_bounds(self, m: MetricPolicy, alpha_row: float) -> tuple[np.ndarray, ...]:
        """(fail rate, pass rate, reference share, green's fail bin, green's pass bin, threshold ms) per
        hour (``tail_reference``); recent mode: green's thresholds move by the latency drift allowance
        in whole bins (up for the fail test, down for the pass test)."""
        a_f = self._ref_alpha(self.cfg.ref_share * alpha_row)
        a_p = self._ref_alpha(self.cfg.ref_share * self.policy.promote.alpha)
        out = np.full((6, len(self.ref.bins)), np.nan)
        for h, ref in enumerate(self.ref.bins):
            tr = (
                lb.tail_reference(ref[LATENCY_MAX], m.quantile or 0.95, float(a_f[h]), float(a_p[h]))
                if LATENCY_MAX in ref
                else None
            )
            if tr is None:
                continue
            d = lb.shift(self.cfg.drift_latency ** self.ref.distance_h[h]) if self.ref.mode == "recent" else 0
            out[:, h] = (
                tr.upper * m.tolerance,
                tr.lower * m.pass_tolerance,
                tr.share,
                min(tr.bin + d, lb.N_BINS - 1),
                max(tr.bin - 1 - d, 0),
                lb.upper_edge_ms(tr.bin),
            )
        return tuple(out)

    def _counts(
        self, m: MetricPolicy, part: _Part, bounds: tuple[np.ndarray, ...], fail: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Green's (conversations with the event, conversations) per (block, hour); the tail's event:
        the slowest turn above the hour's threshold of the fail (or pass) test."""
        if m.kind != "tail":
            return part.x[..., F_RATE[m.name]], part.x[..., F_CONV]
        idx = bounds[3 if fail else 4][part.hours]
        ok = np.isfinite(idx)
        k = np.where(ok, lb.above(part.hist, np.where(ok, idx, 0).astype(np.int64)), 0).astype(float)
        return k, part.hist.sum(axis=-1).astype(float)

    def _e(self, m: MetricPolicy, part: _Part, bounds: tuple[np.ndarray, ...], fail: bool) -> np.ndarray:
        """log e-value per block of green against "no worse than the fail boundary" (fail) or "worse
        than the pass boundary" (pass), pooled over the block's hours (empty hours add nothing)."""
        xs, b = part.x, bounds[0 if fail else 1][part.hours]
        if m.kind == "mean":
            f = MEAN_AT[m.name]
            _, tau, sign = mean_params(m, promote=not fail)
            gm, gv, gg = cluster_mean(xs[..., f : f + MEAN_FIELDS], VAR_FLOOR)
            ok = (gg >= 2) & np.isfinite(gm) & np.isfinite(gv) & np.isfinite(b)
            gw = np.where(ok, gg, 0.0)
            total = gw.sum(axis=-1)
            w = gw / np.where(total > 0, total, 1.0)[:, None]
            var = (w * w * np.where(ok, gv, 0.0)).sum(axis=-1)
            excess = (w * sign * np.where(ok, gm - b, 0.0)).sum(axis=-1)
            with np.errstate(divide="ignore", invalid="ignore"):
                e = msprt_log_evalue(excess if fail else -excess, var, tau)
            return np.where(total > 0, e, 0.0)
        k, n = self._counts(m, part, bounds, fail)
        up = m.direction.value == "higher_is_worse" or m.kind == "tail"
        grid = np.asarray(FAIL_GRID if fail else PASS_GRID)
        mult = grid if up == fail else 1 / grid
        return _binomial_log_e(k, n, np.minimum(b, 0.999), mult, (n > 0) & np.isfinite(b))

    def _estimate(
        self, m: MetricPolicy, part: _Part, bounds: tuple[np.ndarray, ...], log_thr: float
    ) -> tuple[float, float, float, float, float]:
        """(effect, lower, upper, reference, green) over ``part``'s hours, conversation-weighted."""
        xs, ref_pt = part.x, bounds[2][part.hours]
        if m.kind == "mean":
            f = MEAN_AT[m.name]
            _, tau, _ = mean_params(m)
            gm, gv, gg = cluster_mean(xs[:, f : f + MEAN_FIELDS], VAR_FLOOR)
            ok = (gg >= 2) & np.isfinite(gm) & np.isfinite(gv) & np.isfinite(ref_pt)
            if not ok.any():
                return (math.nan,) * 5
            w = gg[ok] / gg[ok].sum()
            green, ref = float((w * gm[ok]).sum()), float((w * ref_pt[ok]).sum())
            hw = float(msprt_half_width(float((w * w * gv[ok]).sum()), tau, log_thr))
            return green - ref, green - ref - hw, green - ref + hw, ref, green
        k, n = self._counts(m, part, bounds, True)
        ok = (n > 0) & np.isfinite(ref_pt)
        if not ok.any() or n[ok].sum() <= 0:
            return (math.nan,) * 5
        green = float(k[ok].sum() / n[ok].sum())
        ref = float((ref_pt[ok] * n[ok]).sum() / n[ok].sum())
        return (green / ref if ref > 0 else math.nan), math.nan, math.nan, ref, green

    def _nodata(self, m: MetricPolicy, g: int, ref_n: int) -> MetricEvidence:
        why = (
            self.ref.description
            if self.ref.mode == "none"
            else "blue's history has no latency distribution for the judged hours"
            if m.kind == "tail" and not self._tail_ready(m)
            else f"not enough data yet (green n={g}, need {m.min_samples})"
        )
        return nodata_row(m, ref_n, g, 1 / self._alpha(False), why)

    # -- state --------------------------------------------------------------------------------------
    def with_policy(self, policy: Policy) -> BlueGreenJudge:
        """The same statistics under ``policy`` (a configuration reload; ``RolloutJudge``)."""
        return self.from_state(self.to_state(), policy)

    def to_state(self) -> dict[str, Any]:
        return {
            "v": _STATE_V,
            "kind": "blue_green",
            "rollout": asdict(self.rollout),
            "started_ts": self.started_ts,
            "settings": asdict(self.cfg),
            "slices": self.slices.to_state(),
            "table": array_to_state(self.table),
            "conv": self.tracker.conv.to_state(),
            "watermark": self.watermark,
            "hist": array_to_state(self.hist),
            "reference": {
                "mode": self.ref.mode,
                "days": self.ref.days,
                "description": self.ref.description,
                "distance_h": list(self.ref.distance_h),
                "bins": [{k: v.tolist() for k, v in b.items()} for b in self.ref.bins],
            },
        }

    @classmethod
    def from_state(cls, d: dict[str, Any], policy: Policy | None = None) -> BlueGreenJudge:
        if d.get("v") not in (1, 2, 3, _STATE_V) or d.get("kind") != "blue_green":
            raise ValueError(f"unknown blue-green judge state {d.get('kind')!r} v{d.get('v')!r}")
        policy = policy if policy is not None else load_policy(None).default
        r = d["reference"]
        known = {f.name for f in fields(BlueGreenSettings)}
        saved = {k: v for k, v in d["settings"].items() if k in known}
        if d["v"] < 4:  # green was kept per hour, restarted tests started every hour: keep it so
            saved["restart_s"] = saved.get("bin_s", BlueGreenSettings().bin_s)
            saved.setdefault("restart_span", 2)
        cfg = BlueGreenSettings(**saved)
        if d["v"] == 1:  # v1: per hour a tuple of per-day windows, later conversations in the last hour
            bins = tuple(_pool([{k: np.asarray(v) for k, v in day.items()} for day in b]) for b in r["bins"])
            dist = tuple(((h + 0.5) * cfg.bin_s + cfg.recent_s / 2) / 3600 for h in range(len(bins)))
            ref = Reference(
                r["mode"],
                r["days"],
                bins,
                dist if r["mode"] == "recent" else (0.0,) * len(bins),
                r["description"],
            )
        else:
            ref = Reference(
                r["mode"],
                r["days"],
                tuple({k: np.asarray(v) for k, v in b.items()} for b in r["bins"]),
                tuple(r["distance_h"]),
                r["description"],
            )
        j = cls(RolloutRef(**d["rollout"]), policy, d["started_ts"], None, cfg, ref)
        j.slices = SliceMap.from_state(d["slices"])
        j.tracker = Tracker(j.cfg.conversations, j.slices)
        j.tracker.conv = ConvRows.from_state(d["conv"])
        pad_conv_cols(j.tracker.conv, j.slices)  # v1, v2: no max-latency column (and no histograms below)
        j.table = array_from_state(d["table"])
        if "hist" in d:
            j.hist = array_from_state(d["hist"])
        j.watermark = d.get("watermark", j.started_ts)
        return j


def _binomial_log_e(
    k: np.ndarray, n: np.ndarray, p: np.ndarray, mult: np.ndarray, ok: np.ndarray
) -> np.ndarray:
    """Per block, log mean_m prod_h LR_h(m p_h : p_h) over its ``ok`` hours (block, hour): an e-process
    against "p_h(true) on the near side of p_h for all h"; 0 for a block without a usable hour.

    For p <= p_h and m > 1 each factor (m p)^k (1 - m p)^(n-k) / (p^k (1-p)^(n-k)) has mean <= 1 per
    conversation (the mean is linear in p and 1 at p = p_h), so the mixture is a nonnegative
    supermartingale (exact, no variance estimate); mirrored for m < 1. A block mixes over the
    multipliers that keep every one of its rates below 1.
    """
    pmax = np.where(ok, p, 0.0).max(axis=-1)
    use = mult[None, :] * pmax[:, None] < 1.0  # (block, multiplier)
    void = ~ok.any(axis=-1) | (ok & ~(p > 0)).any(axis=-1) | ~use.any(axis=-1)
    pp = np.where(ok, p, 0.5)
    q = np.where(use[:, None, :] & ok[..., None], pp[..., None] * mult, 0.5)  # unused cells: finite
    lr = k[..., None] * np.log(mult) + (n - k)[..., None] * (np.log1p(-q) - np.log1p(-pp)[..., None])
    ll = np.where(use, np.where(ok[..., None], lr, 0.0).sum(axis=1), -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = logsumexp(ll, axis=-1) - np.log(np.maximum(use.sum(axis=-1), 1))
    return np.where(void, 0.0, out)
