"""Blue-green: judge the new (green) version after the switch against the old (blue) version before it.

At the switch marker all traffic moves to green, so there is no concurrent control. The reference is
blue's own behaviour, frozen at the switch, read from ``VersionHistory`` (fed by the engine with every
batch: per (agent, environment, version) and time bucket, conversation-level sufficient statistics):

* ``same_hours``: when blue has data in the same hours of previous days (>= ``min_days``), the
  reference of post-switch hour h is blue on those hours of each previous day, and the boundary is the
  most lenient day (time-of-day and day-to-day variation are absorbed, not assumed away);
* ``recent``: otherwise blue's last ``recent_s`` before the switch, with the tolerance widened by an
  ``allowance`` per metric (a time-of-day change is not harm; the decision says which reference it used).

Validity (docs/strategies/blue_green.md): each reference end is a fixed-sample bound at level
``ref_share * alpha_row`` (Bonferroni over days and hours); green is tested against that constant with
an anytime-valid one-sample test at ``(1 - ref_share) * alpha_row``: the mixture SPRT on the
cluster-robust mean (quality, log latency) and an exact binomial mixture e-process on the share of
conversations with an event (escalation, error, compliance). Union bound: P(false rollback) <= alpha.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from operator import attrgetter
from typing import Any

import numpy as np
from scipy.stats import beta, norm

from watcher.policy import MetricPolicy, Policy, ToleranceMode, load_policy
from watcher.shadow import ConvRows, SliceMap, cluster_mean, fmt, mean_params, metric_value, opt, slice_alpha
from watcher.stats import FAIL_GRID, MEAN_FIELDS, PASS_GRID, array_from_state, array_to_state, logsumexp, mean_deltas, msprt_half_width, msprt_log_evalue
from watcher.verdicts import ArmEstimate, MetricEvidence, RolloutEvidence, RolloutRef, Verdict

__all__ = ["VersionHistory", "BlueGreenJudge", "BlueGreenSettings", "Reference"]

DAY = 86400.0
_MEANS = ("quality", "latency")
_RATES = ("escalation", "error", "compliance")
_EVENT = {"escalation": "escalated", "error": "error", "compliance": "compliance_violation"}
# fields: conversations; 6 cluster sums per mean metric; first-event conversations per rate metric
F_CONV, F_Q, F_L = 0, 1, 1 + MEAN_FIELDS
F_RATE = {name: 1 + 2 * MEAN_FIELDS + i for i, name in enumerate(_RATES)}
N_FIELDS = 1 + 2 * MEAN_FIELDS + len(_RATES)
_MEAN_AT = {"quality": F_Q, "latency": F_L}
_KEY = attrgetter("agent_id", "environment", "conversation_id")


class _Tracker:
    """Conversation-level sufficient statistics of a stream into ``table(group, bucket) -> (slices, F)``."""

    def __init__(self, cap: int, slices: SliceMap) -> None:
        self.slices = slices
        self.conv = ConvRows(cap, 4, 3 + max(slices.max_keys, 1))  # sums: q S,n, loglat S,n; cols: group, bucket, bits, slices

    def add(self, turns: Sequence[Any], groups: np.ndarray, buckets: np.ndarray,
            table: Any) -> None:
        n = len(turns)
        if not n:
            return
        conv = self.conv
        rows, new = conv.rows(list(map(_KEY, turns)))
        if new.any():
            at = np.flatnonzero(new)
            conv.cols[rows[at], 0], conv.cols[rows[at], 1], conv.cols[rows[at], 2] = groups[at], buckets[at], 0
            mk = self.slices.max_keys
            if mk:
                conv.cols[rows[at], 3:3 + mk] = self.slices.slices([turns[i].segment for i in at.tolist()])
        u, inv = np.unique(rows, return_inverse=True)
        m = len(u)
        delta = np.zeros((m, N_FIELDS))
        delta[:, F_CONV] = np.bincount(inv, weights=new, minlength=m)
        for j, name in enumerate(_MEANS):
            x = np.fromiter((metric_value(t, name) for t in turns), float, n)
            ok = ~np.isnan(x)
            old = conv.sums[u][:, 2 * j:2 * j + 2]
            s_new = old[:, 0] + np.bincount(inv[ok], weights=x[ok], minlength=m)
            n_new = old[:, 1] + np.bincount(inv[ok], minlength=m)
            conv.sums[u, 2 * j], conv.sums[u, 2 * j + 1] = s_new, n_new
            f = _MEAN_AT[name]
            delta[:, f:f + MEAN_FIELDS] = mean_deltas(old[:, 0], old[:, 1], s_new, n_new)
        events = [i for i, t in enumerate(turns) if t.escalated or t.error or t.compliance_violation]
        bits = conv.cols[u, 2]
        for b, name in enumerate(_RATES):
            pos = [i for i in events if getattr(turns[i], _EVENT[name])]
            if pos:
                hit = np.zeros(m, bool)
                hit[inv[pos]] = True
                first = hit & (((bits >> b) & 1) == 0)
                bits[first] |= 1 << b
                delta[:, F_RATE[name]] = first
        conv.cols[u, 2] = bits
        cols = conv.cols[u]
        sl = np.concatenate([np.zeros((m, 1), np.int64), cols[:, 3:3 + self.slices.max_keys]], axis=1)
        for key in set(zip(cols[:, 0].tolist(), cols[:, 1].tolist())):
            at = (cols[:, 0] == key[0]) & (cols[:, 1] == key[1])
            t = table(*key)
            if t is None:
                continue
            for k in range(sl.shape[1]):
                ok = at & (sl[:, k] >= 0)
                if ok.any():
                    np.add.at(t, sl[ok, k], delta[ok])


class VersionHistory:
    """Per (agent, environment, version) time buckets of conversation-level sufficient statistics.

    Bounded: ``days`` of ``bucket_s`` buckets per version, ``max_versions`` versions per (agent,
    environment) (the least recently seen is forgotten), a bounded conversation table. A conversation
    counts in the bucket and version of its first turn. Shadow turns are skipped (never seen by customers).
    """

    def __init__(self, *, bucket_s: float = 1800.0, days: int = 4, max_versions: int = 3,
                 conversations: int = 100_000, max_keys: int = 4, max_values: int = 12) -> None:
        self.bucket_s, self.days, self.max_versions = bucket_s, days, max_versions
        self.max_keys, self.max_values = max_keys, max_values
        self.maps: dict[tuple[str, str], SliceMap] = {}
        self.trackers: dict[tuple[str, str], _Tracker] = {}
        self.buckets: dict[tuple[str, str, str], dict[int, np.ndarray]] = {}
        self.seen: dict[tuple[str, str, str], float] = {}
        self.watermark = -math.inf
        self._cap = conversations
        self._ids: dict[tuple[str, str, str], int] = {}  # stable small integer per version (hash() is salted)
        self._rev: dict[int, tuple[str, str, str]] = {}

    def update(self, turns: Sequence[Any], arms: Sequence[str]) -> None:
        keep = [t for t, a in zip(turns, arms) if a != "shadow"]
        if not keep:
            return
        ts = np.fromiter((t.ts for t in keep), float, len(keep))
        self.watermark = max(self.watermark, float(ts.max()))
        bucket = np.floor(ts / self.bucket_s).astype(np.int64)
        by_ae: dict[tuple[str, str], list[int]] = {}
        for i, t in enumerate(keep):
            by_ae.setdefault((t.agent_id, t.environment), []).append(i)
        for ae, idx in by_ae.items():
            tracker = self.trackers.get(ae)
            if tracker is None:
                sm = self.maps[ae] = SliceMap((), self.max_keys, self.max_values)
                tracker = self.trackers[ae] = _Tracker(self._cap, sm)
            sub = [keep[i] for i in idx] if len(idx) < len(keep) else keep
            versions = {v: i for i, v in enumerate(dict.fromkeys(t.version for t in sub))}
            names = list(versions)
            for v in names:
                self.seen[(*ae, v)] = self.watermark
            self._evict(ae)
            groups = np.fromiter((versions[t.version] for t in sub), np.int64, len(sub))
            # groups are batch-local version codes: map them through the conversation's stored group
            gid = {i: self._gid(ae, v) for i, v in enumerate(names)}
            groups = np.fromiter((gid[g] for g in groups.tolist()), np.int64, len(sub))
            tracker.add(sub, groups, bucket[idx], lambda g, b, ae=ae: self._table(ae, g, b))
        self._prune()

    def _gid(self, ae: tuple[str, str], version: str) -> int:
        key = (*ae, version)
        if key not in self._ids:
            self._ids[key] = len(self._ids)
            self._rev[self._ids[key]] = key
        return self._ids[key]

    def _table(self, ae: tuple[str, str], g: int, b: int) -> np.ndarray | None:
        key = self._rev.get(g)
        if key is None or key not in self.seen or b * self.bucket_s < self.watermark - self.days * DAY - self.bucket_s:
            return None
        tables = self.buckets.setdefault(key, {})
        t = tables.get(b)
        if t is None:
            t = tables[b] = np.zeros((self.maps[ae].size, N_FIELDS))
        return t

    def _evict(self, ae: tuple[str, str]) -> None:
        mine = sorted((ts, k) for k, ts in self.seen.items() if k[:2] == ae)
        for _, k in mine[:max(len(mine) - self.max_versions, 0)]:
            del self.seen[k]
            self.buckets.pop(k, None)

    def _prune(self) -> None:
        oldest = math.floor((self.watermark - self.days * DAY) / self.bucket_s) - 1
        for tables in self.buckets.values():
            for b in [b for b in tables if b < oldest]:
                del tables[b]

    def reference(self, agent: str, env: str, version: str | None, t0: float, t1: float) -> dict[str, np.ndarray]:
        """Slice name -> summed fields of ``version``'s conversations that started in [t0, t1) (bucket grid)."""
        tables = self.buckets.get((agent, env, version or ""), {})
        lo, hi = math.floor(t0 / self.bucket_s), math.ceil(t1 / self.bucket_s)
        parts = [t for b, t in tables.items() if lo <= b < hi]
        if not parts:
            return {}
        total = sum(parts)
        names = self.maps[(agent, env)].names
        return {name: total[s] for s, name in names.items()}

    def to_state(self) -> dict[str, Any]:
        return {"v": 1, "bucket_s": self.bucket_s, "days": self.days, "max_versions": self.max_versions,
                "max_keys": self.max_keys, "max_values": self.max_values, "cap": self._cap,
                "watermark": self.watermark if math.isfinite(self.watermark) else None,
                "maps": [[*k, m.to_state()] for k, m in self.maps.items()],
                "trackers": [[*k, t.conv.to_state()] for k, t in self.trackers.items()],
                "ids": [[*k, i] for k, i in self._ids.items()],
                "seen": [[*k, ts] for k, ts in self.seen.items()],
                "buckets": [[*k, {str(b): array_to_state(t) for b, t in tables.items()}]
                            for k, tables in self.buckets.items()]}

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> VersionHistory:
        if d.get("v") != 1:
            raise ValueError(f"unknown version history state v{d.get('v')!r}")
        h = cls(bucket_s=d["bucket_s"], days=d["days"], max_versions=d["max_versions"], conversations=d["cap"],
                max_keys=d["max_keys"], max_values=d["max_values"])
        h.watermark = d["watermark"] if d["watermark"] is not None else -math.inf
        h.maps = {(a, e): SliceMap.from_state(m) for a, e, m in d["maps"]}
        for a, e, c in d["trackers"]:
            t = h.trackers[(a, e)] = _Tracker(h._cap, h.maps[(a, e)])
            t.conv = ConvRows.from_state(c)
        h._ids = {(a, e, v): i for a, e, v, i in d["ids"]}
        h._rev = {i: k for k, i in h._ids.items()}
        h.seen = {(a, e, v): ts for a, e, v, ts in d["seen"]}
        h.buckets = {(a, e, v): {int(b): array_from_state(t) for b, t in tables.items()}
                     for a, e, v, tables in d["buckets"]}
        return h


class NullHistory(VersionHistory):
    """Keeps nothing: every blue-green rollout falls back to no reference (nodata)."""

    def update(self, turns: Sequence[Any], arms: Sequence[str]) -> None:
        return None


@dataclass(frozen=True, slots=True)
class BlueGreenSettings:
    bin_s: float = 3600.0  # post-switch hours get their own reference (time of day moves within hours)
    horizon_bins: int = 3  # conversations after horizon_bins * bin_s share the last bin's reference
    days: int = 3  # previous days read for the same-hours reference
    min_days: int = 1  # previous days with data needed in every bin, else the recent reference
    min_ref_conversations: int = 100  # per day and bin (overall) for a day to count
    recent_s: float = 3600.0  # the fallback reference: blue's last hour before the switch
    allowance_quality: float = 0.02  # widened tolerance of the recent reference (absolute)
    allowance_latency: float = 1.10  # ratio
    allowance_rate: float = 1.5  # ratio
    ref_share: float = 0.5  # share of each row's alpha spent on the reference bounds
    conversations: int = 50_000


@dataclass(frozen=True, slots=True)
class Reference:
    mode: str  # "same_hours" | "recent" | "none"
    days: int  # previous days used (same_hours)
    bins: tuple[tuple[dict[str, np.ndarray], ...], ...]  # per post-switch bin: per day (or the recent window)
    description: str


def build_reference(history: VersionHistory, rollout: RolloutRef, switch_ts: float,
                    cfg: BlueGreenSettings) -> Reference:
    agent, env, blue = rollout.agent_id, rollout.environment, rollout.baseline_version
    bins = []
    for h in range(cfg.horizon_bins):
        t0 = switch_ts + h * cfg.bin_s
        days = tuple(r for d in range(1, cfg.days + 1)
                     if (r := history.reference(agent, env, blue, t0 - d * DAY, t0 + cfg.bin_s - d * DAY))
                     and r["all"][F_CONV] >= cfg.min_ref_conversations)
        bins.append(days)
    n_days = min(len(b) for b in bins)
    if n_days >= cfg.min_days:
        return Reference("same_hours", n_days, tuple(bins), f"blue {blue} on the same hours of {n_days} previous day(s)")
    recent = history.reference(agent, env, blue, switch_ts - cfg.recent_s, switch_ts)
    if not recent or recent["all"][F_CONV] < cfg.min_ref_conversations:
        return Reference("none", 0, (), f"no history of blue {blue}")
    return Reference("recent", 1, tuple((recent,) for _ in range(cfg.horizon_bins)),
                     f"blue {blue} in the {cfg.recent_s / 60:.0f} min before the switch, tolerance widened "
                     f"(no same-hours history)")


class BlueGreenJudge:
    """Green after the switch vs blue's reference; same interface as ``watcher.judge.Judge``."""

    def __init__(self, rollout: RolloutRef, policy: Policy, started_ts: float, history: VersionHistory | None = None,
                 settings: BlueGreenSettings | None = None, reference: Reference | None = None) -> None:
        self.rollout, self.policy, self.started_ts = rollout, policy, started_ts
        self.cfg = settings or BlueGreenSettings()
        self.metrics = policy.enabled_metrics()
        self.ref = reference if reference is not None else build_reference(
            history or NullHistory(), rollout, started_ts, self.cfg)
        seg = policy.segments
        self.slices = SliceMap(seg.keys, seg.max_keys, seg.max_values_per_key, seg.enabled)
        self.tracker = _Tracker(self.cfg.conversations, self.slices)
        self.table = np.zeros((self.cfg.horizon_bins, self.slices.size, N_FIELDS))
        self._z_cache: dict[float, float] = {}

    def update(self, turns: Sequence[Any], arms: Sequence[str], canary_weight: float | None = None,
               columns: Any = None) -> None:
        green = self.rollout.canary_version
        mine = [t for t, a in zip(turns, arms) if a == "canary" and t.version == green and t.ts >= self.started_ts]
        if not mine:
            return
        ts = np.fromiter((t.ts for t in mine), float, len(mine))
        bins = np.minimum(((ts - self.started_ts) // self.cfg.bin_s).astype(np.int64), self.cfg.horizon_bins - 1)
        self.tracker.add(mine, np.zeros(len(mine), np.int64), bins, lambda g, b: self.table[b])

    # -- evidence -----------------------------------------------------------------------------------
    def _alpha(self, segment: bool) -> float:
        return slice_alpha(self.policy, len(self.metrics), self.slices, segment)

    def evidence(self, ts: float) -> RolloutEvidence:
        total = self.table.sum(axis=0)
        rows: list[MetricEvidence] = []
        ref_all = self._ref_conversations("all")
        for m in self.metrics:
            for s, name in sorted(self.slices.names.items()):
                g = int(total[s, F_CONV])
                ref_n = self._ref_conversations(name)
                if s and (g < self.policy.segments.min_conversations or ref_n < self.policy.segments.min_conversations):
                    continue
                if m.kind == "tail" or self.ref.mode == "none" or g < m.min_samples or not ref_n:
                    if s == 0:
                        rows.append(self._nodata(m, g, ref_all))
                    continue
                rows.append(self._row(m, s, name, self._alpha(s > 0)))
        g = int(total[0, F_CONV])
        return RolloutEvidence(self.rollout.rollout_id, ts, ts - self.started_ts, tuple(rows), None, ref_all, g)

    def _ref_conversations(self, name: str) -> int:
        return int(sum(d[name][F_CONV] for d in self.ref.bins[0] if name in d)) if self.ref.bins else 0

    def _z(self, a: float) -> float:
        if a not in self._z_cache:
            self._z_cache[a] = float(norm.isf(a))
        return self._z_cache[a]

    def _row(self, m: MetricPolicy, s: int, name: str, alpha_row: float) -> MetricEvidence:
        cfg = self.cfg
        n_int = max(self.ref.days, 1) * cfg.horizon_bins
        a_ref_f = cfg.ref_share * alpha_row / n_int
        a_ref_p = cfg.ref_share * self.policy.promote.alpha / n_int
        log_thr = math.log(1 / ((1 - cfg.ref_share) * alpha_row))
        log_pthr = math.log(1 / ((1 - cfg.ref_share) * self.policy.promote.alpha))
        widen = self.ref.mode == "recent"
        relative = m.tolerance_mode is ToleranceMode.RELATIVE
        x = self.table[:, s]
        if m.kind == "mean":
            lef, lep, eff, lo, hi, e0, e1 = self._mean(m, x, name, a_ref_f, a_ref_p, widen, log_thr)
            if relative:
                eff, lo, hi, e0, e1 = (math.exp(v) if math.isfinite(v) else math.nan for v in (eff, lo, hi, e0, e1))
        else:
            lef, lep, eff, e0, e1 = self._rate(m, x, name, a_ref_f, a_ref_p, widen)
            lo = hi = math.nan
        verdict = Verdict.FAIL if lef >= log_thr else Verdict.PASS if lep >= log_pthr else Verdict.INCONCLUSIVE
        stat, thr = math.exp(min(lef, 700.0)), math.exp(log_thr)
        g, ref_n = int(x[:, F_CONV].sum()), self._ref_conversations(name)
        verb = "rose" if eff > (1.0 if relative else 0.0) else "fell"
        mag = f"x{fmt(eff)}" if relative else fmt(abs(eff))
        tail = {Verdict.PASS: "; non-inferior", Verdict.FAIL: "", Verdict.INCONCLUSIVE: "; inconclusive"}[verdict]
        reason = (f"{m.name} in {name} {verb} {mag} after the switch ({fmt(lo)}..{fmt(hi)}, e={stat:.3g} "
                  f"{'>=' if verdict is Verdict.FAIL else '<'} {thr:.3g}) green {fmt(e1)} n={g} vs reference "
                  f"{fmt(e0)} n={ref_n}: {self.ref.description}{tail}")
        return MetricEvidence(m.name, name, verdict, ArmEstimate(ref_n, opt(e0)), ArmEstimate(g, opt(e1)), opt(eff),
                              "ratio" if relative else "difference", opt(lo), opt(hi), stat, thr, m.tolerance,
                              m.critical, reason, m.pass_tolerance)

    def _mean(self, m: MetricPolicy, x: np.ndarray, name: str, a_f: float, a_p: float, widen: bool,
              log_thr: float) -> tuple[float, ...]:
        f = _MEAN_AT[m.name]
        tol, tau, sign = mean_params(m)
        ptol, ptau, _ = mean_params(m, promote=True)
        allow = (math.log(self.cfg.allowance_latency) if m.name == "latency" else self.cfg.allowance_quality) * widen
        zf, zp = self._z(a_f), self._z(a_p)
        gm, gv, gg = cluster_mean(x[:, f:f + MEAN_FIELDS])  # per bin
        b_fail, b_pass, ref_pt = np.full(len(x), np.nan), np.full(len(x), np.nan), np.full(len(x), np.nan)
        for h, days in enumerate(self.ref.bins):
            refs = [cluster_mean(d[name][f:f + MEAN_FIELDS]) for d in days if name in d]
            refs = [(float(rm), float(rv)) for rm, rv, _ in refs if np.isfinite(rm) and np.isfinite(rv)]
            if not refs:
                continue
            lenient = [rm + sign * zf * math.sqrt(rv) for rm, rv in refs]
            strict = [rm - sign * zp * math.sqrt(rv) for rm, rv in refs]
            b_fail[h] = (max(lenient) if sign > 0 else min(lenient)) + tol + sign * allow
            b_pass[h] = (min(strict) if sign > 0 else max(strict)) + ptol - sign * allow
            ref_pt[h] = float(np.mean([rm for rm, _ in refs]))
        ok = (gg >= 2) & np.isfinite(gm) & np.isfinite(gv) & np.isfinite(b_fail)
        if not ok.any():
            return 0.0, 0.0, math.nan, math.nan, math.nan, math.nan, math.nan
        w = gg[ok] / gg[ok].sum()
        var = float((w * w * gv[ok]).sum())
        fail_x = float((w * sign * (gm[ok] - b_fail[ok])).sum())
        pass_x = float((w * -sign * (gm[ok] - b_pass[ok])).sum())
        lef, lep = float(msprt_log_evalue(fail_x, var, tau)), float(msprt_log_evalue(pass_x, var, ptau))
        green, ref = float((w * gm[ok]).sum()), float((w * ref_pt[ok]).sum())
        hw = float(msprt_half_width(var, tau, log_thr))
        return lef, lep, green - ref, green - ref - hw, green - ref + hw, ref, green

    def _rate(self, m: MetricPolicy, x: np.ndarray, name: str, a_f: float, a_p: float,
              widen: bool) -> tuple[float, ...]:
        f = F_RATE[m.name]
        allow = self.cfg.allowance_rate if widen else 1.0
        up = m.direction.value == "higher_is_worse"
        p_fail, p_pass, p_pt = np.full(len(x), np.nan), np.full(len(x), np.nan), np.full(len(x), np.nan)
        for h, days in enumerate(self.ref.bins):
            xs = [(float(d[name][f]), float(d[name][F_CONV])) for d in days if name in d and d[name][F_CONV] > 0]
            if not xs:
                continue
            hi = [float(beta.isf(a_f, k + 1, n - k)) if k < n else 1.0 for k, n in xs]
            lo = [float(beta.ppf(a_p, k, n - k + 1)) if k > 0 else 0.0 for k, n in xs]
            if not up:  # a rate where lower is worse: mirror the roles of the bounds
                hi, lo = lo, hi
            p_fail[h] = (max(hi) if up else min(hi)) * (m.tolerance * allow if up else m.tolerance / allow)
            ptol = m.pass_tolerance
            p_pass[h] = (min(lo) if up else max(lo)) * (ptol / allow if up else ptol * allow)
            p_pt[h] = sum(k for k, _ in xs) / sum(n for _, n in xs)
        k, n = x[:, f], x[:, F_CONV]
        ok = (n > 0) & np.isfinite(p_fail)
        if not ok.any():
            return 0.0, 0.0, math.nan, math.nan, math.nan
        k, n, pf, pp, pt = k[ok], n[ok], np.minimum(p_fail[ok], 0.999), np.minimum(p_pass[ok], 0.999), p_pt[ok]
        lef = _binomial_log_e(k, n, pf, np.asarray(FAIL_GRID) if up else 1 / np.asarray(FAIL_GRID))
        lep = _binomial_log_e(k, n, pp, 1 / np.asarray(PASS_GRID) if up else np.asarray(PASS_GRID))
        green = float(k.sum() / n.sum())
        ref = float((pt * n).sum() / n.sum())
        return lef, lep, green / ref if ref > 0 else math.nan, ref, green

    def _nodata(self, m: MetricPolicy, g: int, ref_n: int) -> MetricEvidence:
        unit = "ratio" if m.tolerance_mode is ToleranceMode.RELATIVE else "difference"
        why = ("not judged for blue_green (no concurrent baseline quantile)" if m.kind == "tail"
               else self.ref.description if self.ref.mode == "none"
               else f"not enough data yet (green n={g}, need {m.min_samples})")
        return MetricEvidence(m.name, "all", Verdict.NODATA, ArmEstimate(ref_n, None), ArmEstimate(g, None), None,
                              unit, None, None, 1.0, 1 / self._alpha(False), m.tolerance, m.critical,
                              f"{m.name} in all: {why}", m.pass_tolerance)

    # -- state --------------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {"v": 1, "kind": "blue_green", "rollout": asdict(self.rollout), "started_ts": self.started_ts,
                "settings": asdict(self.cfg), "slices": self.slices.to_state(), "table": array_to_state(self.table),
                "conv": self.tracker.conv.to_state(),
                "reference": {"mode": self.ref.mode, "days": self.ref.days, "description": self.ref.description,
                              "bins": [[{k: v.tolist() for k, v in d.items()} for d in b] for b in self.ref.bins]}}

    @classmethod
    def from_state(cls, d: dict[str, Any], policy: Policy | None = None) -> BlueGreenJudge:
        if d.get("v") != 1 or d.get("kind") != "blue_green":
            raise ValueError(f"unknown blue-green judge state {d.get('kind')!r} v{d.get('v')!r}")
        policy = policy if policy is not None else load_policy(None).default
        r = d["reference"]
        ref = Reference(r["mode"], r["days"], tuple(tuple({k: np.asarray(v) for k, v in day.items()} for day in b)
                                                    for b in r["bins"]), r["description"])
        j = cls(RolloutRef(**d["rollout"]), policy, d["started_ts"], None, BlueGreenSettings(**d["settings"]), ref)
        j.slices = SliceMap.from_state(d["slices"])
        j.tracker = _Tracker(j.cfg.conversations, j.slices)
        j.tracker.conv = ConvRows.from_state(d["conv"])
        j.table = array_from_state(d["table"])
        return j


def _binomial_log_e(k: np.ndarray, n: np.ndarray, p: np.ndarray, mult: np.ndarray) -> float:
    """log mean_m prod_h LR_h(m p_h : p_h): an e-process against "p_h(true) on the near side of p_h for all h".

    For p <= p_h and m > 1 each factor (m p)^k (1 - m p)^(n-k) / (p^k (1-p)^(n-k)) has mean <= 1 per
    conversation, so the mixture is a nonnegative supermartingale (exact, no variance estimate).
    """
    mult = mult[mult * p.max() < 1.0]
    if not len(mult) or not (p > 0).all():
        return 0.0
    q = p[:, None] * mult[None, :]
    ll = (k[:, None] * np.log(mult)[None, :] + (n - k)[:, None] * (np.log1p(-q) - np.log1p(-p)[:, None])).sum(0)
    return float(logsumexp(ll) - math.log(len(mult)))
