"""The shadow judge: paired comparison of a shadow version with the live version, by conversation.

A shadow version answers copies of live turns; its answers never reach customers. Each shadow turn
is paired with the live turn of the same ``(conversation_id, turn)`` (a bounded pending table: by
count and by event time; unpaired turns are counted, never an error) and the judge tests the paired
differences, with the conversation as the unit (docs/strategies/shadow.md):

* quality and latency (log scale): the mean of the paired differences, cluster-robust variance over
  conversations, the one-sided normal-mixture SPRT of ``watcher.stats`` against the tolerance;
* escalation, error, compliance and the latency tail: *discordance*. At a conversation's first paired
  turn where either side had the event, the conversation is "shadow-only", "live-only" or
  concordant. Given discordance, "shadow-only" is Bernoulli(theta) with theta = r / (1 + r) and
  r = P(shadow-only) / P(live-only): the conditional e-test of ``watcher.stats`` at rho = 1/2 (exact,
  McNemar's test made sequential). The rate tolerance applies to r (at least as strict as the rate
  ratio: concordant conversations, which a difficult customer causes on both sides, drop out).

Pairing removes the traffic-mix noise between conversations (both sides answer the same customer),
which is why it needs far fewer conversations than an unpaired comparison (bench/strategies).

When only part of the traffic is mirrored and the deployment marker says which share
(``canary_weight`` below 1: the share of conversations mirrored), the live answers of the
conversations that are *not* mirrored are a concurrent, randomised control as well. Each rate then
also gets the canary's conditional e-test: a conversation with an event is a mirrored one (its
shadow answer had the event) or an unmirrored one (its live answer had it), Bernoulli(theta) with
rho the mirrored share, against "shadow rate <= tolerance x live rate". A conversation is taken as
unmirrored when no shadow turn came within ``mirror_settle_s`` (60 s) of its first turn, so both
sides count a conversation's events from that moment on (counting mirrored ones sooner would
inflate the shadow's share). A mirrored conversation whose shadow answers come later than that
counts as unmirrored: its live answers are still a fair control and its shadow answers are left
out, which can only cost power, unless the shadow's slowness depends on its own events (a shadow
that fails fast and succeeds after more than a minute). rho is the marker's share unless the
settled conversations show clearly more mirrored ones (3 standard errors): a marker that
understates the share would make the shadow's events look too many. The rate row's FAIL e-value is
the mean of the paired and the unpaired ones (an e-process: the weights are fixed by the marker);
with everything mirrored it is the paired one alone. Promotion stays on the paired test.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from watcher.contract import (
    MetricDef,
    MetricEvidence,
    RolloutEvidence,
    RolloutRef,
    ToleranceMode,
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
from watcher.state import ConvRows, SliceMap
from watcher.stats import (
    FAIL_GRID,
    MEAN_FIELDS,
    PASS_GRID,
    RestartSchedule,
    array_from_state,
    array_to_state,
    cluster_mean,
    logsumexp,
    mean_deltas,
    msprt_half_width,
    msprt_log_evalue,
    rate_confidence_sequence,
    rate_log_evalue,
)

__all__ = ["ShadowJudge", "ShadowSettings"]

_LIVE_ARMS = frozenset({"live", "baseline"})
_TAIL_LIVE_TURNS = 3000  # live latencies that fix the tail threshold (control data only)
_STATE_V = 2  # 2: the unpaired rate test of a partly mirrored shadow (1 loads with it empty)
_HALF = np.array([0.5])
# a conversation's unpaired-test state, in the columns after its slices: not settled yet (no shadow
# turn so far / one seen), settled mirrored, settled not mirrored; then its live and shadow event
# bits (one per rate metric) and the bits already counted
_FRESH, _FRESH_MIRRORED, _MIRRORED, _NOT_MIRRORED = 0, 3, 1, 2
_U_STATE, _U_LIVE, _U_SHADOW, _U_COUNTED = range(4)


@dataclass(frozen=True, slots=True)
class ShadowSettings:
    pair_window_s: float = 300.0  # a turn waits this long (event time) for its counterpart
    # a conversation with no shadow turn this long (event time) after its first turn is not mirrored
    # (the unpaired rate test of a partly mirrored shadow; a mirror copies a turn as it happens)
    mirror_settle_s: float = 60.0
    max_pending: int = 200_000  # turns waiting for a counterpart, at most
    conversations: int = 50_000  # per generation of the conversation table


def _metric_value(t: Any, d: MetricDef) -> float:
    """A turn's value of mean metric ``d`` on its tested scale (NaN: none)."""
    v = getattr(t, d.field)
    if v is None:
        return math.nan
    return math.log(max(float(v), 1e-3)) if d.log_scale else float(v)


_RATE_F = 3  # shadow-only, live-only, both
_MEAN_F = (
    MEAN_FIELDS + 2
)  # the six cluster sums of the paired differences, sum of live values, of shadow values


class ShadowJudge:
    """Paired shadow-vs-live judge of one rollout; same interface as ``watcher.judges.canary.Judge``."""

    def __init__(
        self, rollout: RolloutRef, policy: Policy, started_ts: float, settings: ShadowSettings | None = None
    ) -> None:
        self.rollout, self.policy, self.started_ts = rollout, policy, started_ts
        self.settings = settings or ShadowSettings()
        self.metrics = policy.enabled_metrics()
        seg = policy.segments
        self.slices = SliceMap(seg.keys, seg.max_keys, seg.max_values_per_key, seg.enabled)
        self.field: dict[str, int] = {}
        f = 1  # field 0: paired conversations
        for m in self.metrics:
            self.field[m.name] = f
            f += _MEAN_F if m.kind == "mean" else _RATE_F
        self.means = [m for m in self.metrics if m.kind == "mean"]
        self.rates = [m for m in self.metrics if m.kind != "mean"]
        # the unpaired rate test: settled conversations (mirrored, not mirrored), then per rate metric
        # the mirrored ones whose shadow answer had the event and the others whose live answer had it
        w = rollout.canary_weight
        self.mirror_share = float(w) if w is not None and 0.0 < w < 1.0 else None
        self.u_conv = f
        self.ufield: dict[str, int] = {}
        if self.mirror_share is not None:
            f += 2
            for m in self.rates:
                self.ufield[m.name] = f
                f += 2
        self.n_fields = f
        cp = policy.changepoint
        self.schedule = RestartSchedule(cp.epoch_s, cp.restart_share, enabled=cp.enabled, span=cp.span_epochs)
        self.cum = np.zeros((self.slices.size, self.n_fields))
        self.epochs: dict[int, np.ndarray] = {}
        # per conversation: (S, n) of each mean metric's differences; cols: epoch, decided bits, slices
        self.conv = ConvRows(
            self.settings.conversations, 2 * len(self.means), 2 + max(self.slices.max_keys, 1)
        )
        self._ucol = 2 + max(self.slices.max_keys, 1)  # the unpaired-test columns of ``units``
        self.units = ConvRows(self.settings.conversations, 1, self._ucol + 4)  # sums: first turn's ts
        self.fresh: OrderedDict[str, float] = OrderedDict()  # not settled yet -> first turn's ts
        self.pending: OrderedDict[tuple[str, int], tuple[float, bool, Any]] = OrderedDict()
        self.counts = {"paired": 0, "unpaired_live": 0, "unpaired_shadow": 0, "duplicates": 0}
        self.tail_q: dict[str, float] = {}
        self._tail_buf: list[float] = []
        self.watermark = -math.inf

    # -- ingestion ----------------------------------------------------------------------------------
    def update(
        self,
        turns: Sequence[Any],
        arms: Sequence[str],
        canary_weight: float | None = None,
        columns: Any = None,
    ) -> None:
        """Pair the batch's shadow and live turns and add the completed pairs; other arms are ignored."""
        pairs: list[tuple[Any, Any]] = []
        seen: list[tuple[Any, bool]] = []
        pending, counts = self.pending, self.counts
        live_lat: list[float] = []
        need_tail = len(self.tail_q) < sum(m.kind == "tail" for m in self.rates)
        for t, arm in zip(turns, arms):
            shadow = arm == "shadow"
            if not shadow and arm not in _LIVE_ARMS:
                continue
            if t.ts > self.watermark:
                self.watermark = t.ts
            seen.append((t, shadow))
            if need_tail and not shadow and t.latency_ms is not None:
                live_lat.append(t.latency_ms)
            key = (t.conversation_id, t.turn)
            other = pending.get(key)
            if other is None:
                pending[key] = (t.ts, shadow, t)
            elif other[1] == shadow:
                counts["duplicates"] += 1
            else:
                del pending[key]
                pairs.append((t, other[2]) if not shadow else (other[2], t))  # (live, shadow)
        self._expire()
        if live_lat:
            self._fix_tails(live_lat)
        self._advance()
        if pairs:
            counts["paired"] += len(pairs)
            self._add_pairs(pairs)
        if self.mirror_share is not None and seen:
            self._add_units(seen)
            self._settle()

    def _advance(self) -> None:
        """Move the restart schedule to the watermark's epoch, dropping epochs out of its span."""
        epoch = int(self.schedule.epoch_of(np.asarray(self.watermark - self.started_ts)))
        if epoch > self.schedule.current:
            self.schedule.current = epoch
            for e in [e for e in self.epochs if e <= epoch - self.schedule.span]:
                del self.epochs[e]

    def _event_bits(self, turns: Sequence[Any]) -> np.ndarray:
        """Per turn, bit b set when it has the event of rate metric b (a tail: slower than the fixed
        threshold; none before it is fixed)."""
        n = len(turns)
        out = np.zeros(n, np.int64)
        for b, m in enumerate(self.rates):
            if m.kind == "tail":
                q = self.tail_q.get(m.name)
                if q is None:
                    continue
                hit = np.fromiter((t.latency_ms is not None and t.latency_ms > q for t in turns), bool, n)
            else:
                attr = metric_def(m.name).field
                hit = np.fromiter((getattr(t, attr) for t in turns), bool, n)
            out |= hit.astype(np.int64) << b
        return out

    def _add_units(self, seen: list[tuple[Any, bool]]) -> None:
        """Every live and shadow turn for the unpaired test: a new conversation waits to be settled,
        one not settled yet collects its event bits per side, a settled one adds the events of its
        counted side that are new."""
        units, uc = self.units, self._ucol
        rows, new = units.rows([t.conversation_id for t, _ in seen])
        if new.any():
            at = np.flatnonzero(new)
            first = [seen[i][0] for i in at.tolist()]
            ts = np.fromiter((t.ts for t in first), float, len(first))
            units.sums[rows[at], 0] = ts
            units.cols[rows[at], 0] = self.schedule.epoch_of(ts - self.started_ts)
            if self.slices.max_keys:
                units.cols[rows[at], 2 : 2 + self.slices.max_keys] = self.slices.slices(
                    [t.segment for t in first]
                )
            for t in first:
                self.fresh[t.conversation_id] = t.ts
        bits = self._event_bits([t for t, _ in seen])
        cols = units.cols
        changed: dict[int, int] = {}  # row -> bits newly counted
        for (_, shadow), r, bit in zip(seen, rows.tolist(), bits.tolist()):
            state = int(cols[r, uc + _U_STATE])
            if state in (_FRESH, _FRESH_MIRRORED):
                cols[r, uc + (_U_SHADOW if shadow else _U_LIVE)] |= bit
                if shadow:
                    cols[r, uc + _U_STATE] = _FRESH_MIRRORED
            elif bit and shadow == (state == _MIRRORED):  # the side this conversation counts
                add = bit & ~int(cols[r, uc + _U_COUNTED])
                if add:
                    cols[r, uc + _U_COUNTED] |= add
                    changed[r] = changed.get(r, 0) | add
        if changed:
            r = np.fromiter(changed, np.int64, len(changed))
            mirrored = cols[r, uc + _U_STATE] == _MIRRORED
            self._scatter(cols[r], self._unit_delta(mirrored, list(changed.values()), False))

    def _settle(self) -> None:
        """Conversations whose first turn is ``mirror_settle_s`` old: mirrored or not, now for good;
        their events so far are counted on their side."""
        limit = self.watermark - self.settings.mirror_settle_s
        due: list[str] = []
        while self.fresh:
            cid, ts = next(iter(self.fresh.items()))
            if ts >= limit:
                break
            del self.fresh[cid]
            due.append(cid)
        if not due:
            return
        units, uc = self.units, self._ucol
        rows, new = units.rows(due)
        rows = rows[~new]  # a conversation the table forgot meanwhile is not counted
        if not len(rows):
            return
        cols = units.cols
        mirrored = cols[rows, uc + _U_STATE] == _FRESH_MIRRORED
        cols[rows, uc + _U_STATE] = np.where(mirrored, _MIRRORED, _NOT_MIRRORED)
        bits = np.where(mirrored, cols[rows, uc + _U_SHADOW], cols[rows, uc + _U_LIVE])
        cols[rows, uc + _U_COUNTED] = bits
        self._scatter(cols[rows], self._unit_delta(mirrored, bits.tolist(), True))

    def _unit_delta(self, mirrored: np.ndarray, bits: list[int], settled: bool) -> np.ndarray:
        """The unpaired test's table increments of some conversations: (conversation, field)."""
        side = np.where(mirrored, 0, 1)
        delta = np.zeros((len(bits), self.n_fields))
        rows = np.arange(len(bits))
        if settled:
            delta[rows, self.u_conv + side] = 1.0
        b = np.asarray(bits, np.int64)
        for k, m in enumerate(self.rates):
            has = ((b >> k) & 1) == 1
            delta[rows[has], self.ufield[m.name] + side[has]] = 1.0
        return delta

    def _expire(self) -> None:
        limit = self.watermark - self.settings.pair_window_s
        pending, counts = self.pending, self.counts
        while pending:
            key = next(iter(pending))
            ts, shadow, _ = pending[key]
            if ts >= limit and len(pending) <= self.settings.max_pending:
                break
            del pending[key]
            counts["unpaired_shadow" if shadow else "unpaired_live"] += 1

    def _fix_tails(self, lat: list[float]) -> None:
        self._tail_buf.extend(lat)
        if len(self._tail_buf) >= _TAIL_LIVE_TURNS:  # fixed once, from live data only
            x = np.asarray(self._tail_buf)
            for m in self.rates:
                if m.kind == "tail":
                    self.tail_q[m.name] = float(np.quantile(x, m.quantile or 0.95))
            self._tail_buf = []

    def _add_pairs(self, pairs: list[tuple[Any, Any]]) -> None:
        live = [p[0] for p in pairs]
        shadow = [p[1] for p in pairs]
        n = len(pairs)
        rows, new = self.conv.rows([t.conversation_id for t in live])
        conv = self.conv
        if new.any():
            at = np.flatnonzero(new)
            ts = np.fromiter((max(live[i].ts, shadow[i].ts) for i in at.tolist()), float, len(at))
            conv.cols[rows[at], 0] = self.schedule.epoch_of(ts - self.started_ts)
            conv.cols[rows[at], 1] = 0
            if self.slices.max_keys:
                conv.cols[rows[at], 2 : 2 + self.slices.max_keys] = self.slices.slices(
                    [live[i].segment for i in at.tolist()]
                )
        u, inv = np.unique(rows, return_inverse=True)
        delta = np.zeros((len(u), self.n_fields))
        delta[:, 0] = np.bincount(inv, weights=new, minlength=len(u))
        for j, m in enumerate(self.means):
            d = metric_def(m.name)
            lv = np.fromiter((_metric_value(t, d) for t in live), float, n)
            sv = np.fromiter((_metric_value(t, d) for t in shadow), float, n)
            d = sv - lv
            ok = ~np.isnan(d)
            old = conv.sums[u][:, 2 * j : 2 * j + 2]
            s_new = old[:, 0] + np.bincount(inv[ok], weights=d[ok], minlength=len(u))
            n_new = old[:, 1] + np.bincount(inv[ok], minlength=len(u))
            conv.sums[u, 2 * j], conv.sums[u, 2 * j + 1] = s_new, n_new
            f = self.field[m.name]
            delta[:, f : f + MEAN_FIELDS] = mean_deltas(old[:, 0], old[:, 1], s_new, n_new)
            delta[:, f + MEAN_FIELDS] = np.bincount(inv[ok], weights=lv[ok], minlength=len(u))
            delta[:, f + MEAN_FIELDS + 1] = np.bincount(inv[ok], weights=sv[ok], minlength=len(u))
        bits = conv.cols[u, 1]
        live_bits, shadow_bits = self._event_bits(live), self._event_bits(shadow)
        for b, m in enumerate(self.rates):
            le, se = (live_bits >> b) & 1 == 1, (shadow_bits >> b) & 1 == 1
            cand = np.flatnonzero((le | se) & (((bits[inv] >> b) & 1) == 0))
            if not len(cand):
                continue
            # the conversation's first paired turn with the event on either side decides it, once
            cu, first = np.unique(inv[cand], return_index=True)
            at = cand[first]
            f = self.field[m.name]
            delta[cu, f] = se[at] & ~le[at]
            delta[cu, f + 1] = le[at] & ~se[at]
            delta[cu, f + 2] = le[at] & se[at]
            bits[cu] |= 1 << b
        conv.cols[u, 1] = bits
        self._scatter(conv.cols[u], delta)

    def _scatter(self, cols: np.ndarray, delta: np.ndarray) -> None:
        sl = np.concatenate(
            [np.zeros((len(cols), 1), np.int64), cols[:, 2 : 2 + self.slices.max_keys]], axis=1
        )
        for e in np.unique(cols[:, 0]).tolist():
            at = cols[:, 0] == e
            targets = [self.cum]
            if e >= 1 and self.schedule.enabled and e > self.schedule.current - self.schedule.span:
                targets.append(self.epochs.setdefault(e, np.zeros_like(self.cum)))
            for k in range(sl.shape[1]):
                ok = at & (sl[:, k] >= 0)
                if ok.any():
                    for table in targets:
                        np.add.at(table, sl[ok, k], delta[ok])

    # -- evidence -----------------------------------------------------------------------------------
    def _alpha(self, segment: bool) -> float:
        return slice_alpha(self.policy, len(self.metrics), self.slices.size - 1, segment)

    def _blocks(self) -> list[tuple[str, np.ndarray, float]]:
        out = [("", self.cum, self.schedule.cumulative_fraction())]
        for j, frac in self.schedule.live_windows():
            parts = [t for e, t in self.epochs.items() if j <= e < j + self.schedule.span]
            if parts:
                total = sum(parts[1:], parts[0])  # = sum(parts), typed as an array
                out.append((f" [restarted at +{j * self.schedule.epoch_s / 3600:.1f}h]", total, frac))
        return out

    def evidence(self, ts: float) -> RolloutEvidence:
        g_all = self.cum[:, 0]
        judged = [
            s
            for s in sorted(self.slices.names)
            if s == 0 or g_all[s] >= self.policy.segments.min_conversations
        ]
        sl = np.asarray(judged, np.int64)
        base = np.where(sl > 0, math.log(1 / self._alpha(True)), math.log(1 / self._alpha(False)))
        blocks = self._blocks()
        rows: list[MetricEvidence] = []
        pass_thr = math.log(1 / self.policy.promote.alpha)
        for m in self.metrics:
            per_block = [self._test(m, b[sl], base + math.log(1 / frac)) for _, b, frac in blocks]
            lep0 = per_block[0][1]
            for i, s in enumerate(sl.tolist()):
                g = int(self.cum[s, 0])
                unit_ok = g >= m.min_samples and not (m.kind == "tail" and m.name not in self.tail_q)
                if not unit_ok:
                    if s == 0:
                        rows.append(self._nodata(m, g))
                    continue
                # the cumulative and restarted tests mixed with their alpha fractions as weights (an
                # e-process, as in the canary judge); the largest term names the test that drove it
                terms = [
                    (pb[0][i] + math.log(frac), k)
                    for k, (pb, (_, _, frac)) in enumerate(zip(per_block, blocks))
                    if blocks[k][1][s, 0] >= m.min_samples
                ]
                mixed = float(logsumexp(np.array([t for t, _ in terms])))
                fail = mixed >= base[i]
                k = max(terms)[1] if fail else 0
                verdict = (
                    Verdict.FAIL if fail else Verdict.PASS if lep0[i] >= pass_thr else Verdict.INCONCLUSIVE
                )
                rows.append(
                    self._row(
                        m,
                        self.slices.names[s],
                        verdict,
                        blocks[k][0],
                        blocks[k][1][s],
                        per_block[k],
                        i,
                        base[i],
                        mixed,
                    )
                )
        g = int(self.cum[0, 0])
        return RolloutEvidence(self.rollout.rollout_id, ts, ts - self.started_ts, tuple(rows), None, g, g)

    def _test(self, m: MetricPolicy, x: np.ndarray, log_thr: np.ndarray) -> tuple[np.ndarray, ...]:
        """(log e fail, log e pass, effect, lower, upper, unpaired log e fail, unpaired ratio) per slice
        row of ``x``; the last two are NaN without the unpaired test."""
        none = np.full(len(x), np.nan)
        f = self.field[m.name]
        if m.kind == "mean":
            mean, var, _ = cluster_mean(x[:, f : f + MEAN_FIELDS], VAR_FLOOR)
            tol, tau, sign = mean_params(m)
            ptol, ptau, _ = mean_params(m, promote=True)
            lef, lep = (
                msprt_log_evalue(sign * (mean - tol), var, tau),
                msprt_log_evalue(-sign * (mean - ptol), var, ptau),
            )
            with np.errstate(invalid="ignore"):
                hw = msprt_half_width(var, tau, log_thr)
            return lef, lep, mean, mean - hw, mean + hw, none, none
        c, b = x[:, f : f + 1], x[:, f + 1 : f + 2]
        up = m.direction.value == "higher_is_worse"
        fail, ok = np.asarray(FAIL_GRID), np.asarray(PASS_GRID)
        alts = m.tolerance * (fail if up else 1 / fail)
        lef = rate_log_evalue(c, b, _HALF, m.tolerance, alts)
        ptol = m.pass_tolerance
        lep = rate_log_evalue(c, b, _HALF, ptol, ptol * (1 / ok if up else ok))
        lo, hi, mle = rate_confidence_sequence(c, b, _HALF, log_thr)
        if self.mirror_share is None:
            return lef, lep, mle, lo, hi, none, none
        uf, uc = self.ufield[m.name], self.u_conv
        n_m, n_u = x[:, uc], x[:, uc + 1]
        ct, cc = x[:, uf], x[:, uf + 1]
        # rho: the marker's share, unless the settled conversations show clearly more mirrored ones (a
        # marker that understates the share would make the shadow's events look too many)
        with np.errstate(invalid="ignore", divide="ignore"):
            seen = n_m / (n_m + n_u)
            low = seen - 3.0 * np.sqrt(seen * (1.0 - seen) / (n_m + n_u))
        # (a slice without unmirrored conversations yet is not judged: 0.999 only keeps the log finite)
        rho = np.clip(np.maximum(self.mirror_share, np.nan_to_num(low, nan=0.0)), 0.0, 0.999)
        # each slice its own rho: its counts as the only stratum of its row (a diagonal)
        leu = rate_log_evalue(np.diag(ct), np.diag(cc), rho, m.tolerance, alts)
        # an e-process that has not started is 1 (log 0): the mean of the two is fixed from the start
        leu = np.where((n_m >= m.min_samples) & (n_u >= m.min_samples), leu, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = (ct / n_m) / (cc / n_u)
        return np.logaddexp(lef.reshape(-1), leu) - math.log(2.0), lep, mle, lo, hi, leu, ratio

    def _row(
        self,
        m: MetricPolicy,
        name: str,
        verdict: Verdict,
        label: str,
        x: np.ndarray,
        t: tuple[np.ndarray, ...],
        i: int,
        log_thr: float,
        lef: float,
    ) -> MetricEvidence:
        _, _, eff, lo, hi, leu, ratio = (float(a[i]) for a in t)
        f, g = self.field[m.name], int(x[0])
        relative = m.tolerance_mode is ToleranceMode.RELATIVE
        if m.kind == "mean":
            n = x[f + 1]
            e0 = x[f + MEAN_FIELDS] / n if n else math.nan
            e1 = x[f + MEAN_FIELDS + 1] / n if n else math.nan
            if relative:
                eff, lo, hi, e0, e1 = (
                    math.exp(v) if math.isfinite(v) else math.nan for v in (eff, lo, hi, e0, e1)
                )
            what = f"paired {m.name} difference"
            counts = ""
        else:
            so, lo_only, both = x[f], x[f + 1], x[f + 2]
            e0, e1 = (lo_only + both) / g, (so + both) / g
            what = f"{m.name} discordance (shadow-only / live-only)"
            if m.kind == "tail":
                what = f"{m.name} (> {self.tail_q[m.name]:.0f} ms) discordance (shadow-only / live-only)"
            counts = f", shadow-only {int(so)} vs live-only {int(lo_only)}, both {int(both)}"
            if self.mirror_share is not None:
                uf, uc = self.ufield[m.name], self.u_conv
                n_m, n_u = int(x[uc]), int(x[uc + 1])
                r_m, r_u = (x[uf] / n_m if n_m else math.nan), (x[uf + 1] / n_u if n_u else math.nan)
                counts += (
                    f"; against the live answers of the conversations not mirrored: shadow {fmt(r_m)} "
                    f"(n={n_m}) vs live {fmt(r_u)} (n={n_u}), x{fmt(ratio)}, "
                    f"e={math.exp(min(leu, 700.0)):.3g}"
                )
        stat, thr = evalue(lef, log_thr)
        mag = f"x{fmt(eff)}" if relative else fmt(abs(eff))
        cmp = ">=" if verdict is Verdict.FAIL else "<"
        reason = (
            f"{what} in {name} {moved(eff, relative)} {mag} ({fmt(lo)}..{fmt(hi)}, e={stat:.3g} {cmp} "
            f"{thr:.3g}) shadow {fmt(e1)} vs live {fmt(e0)} over n={g} paired "
            f"conversations{counts}{VERDICT_SUFFIX[verdict]}{label}"
        )
        return metric_row(m, name, verdict, (g, e0), (g, e1), (eff, lo, hi), stat, thr, reason)

    def _nodata(self, m: MetricPolicy, g: int) -> MetricEvidence:
        why = (
            f"not enough paired data yet (n={g} paired conversations, need {m.min_samples}; "
            f"{self.counts['paired']} paired turns)"
        )
        return nodata_row(m, g, g, 1 / self._alpha(False), why)

    def pairing(self) -> dict[str, int]:
        """Paired / unpaired turn counts (unpaired: the counterpart never came within the window)."""
        return {**self.counts, "pending": len(self.pending)}

    # -- state --------------------------------------------------------------------------------------
    def with_policy(self, policy: Policy) -> ShadowJudge:
        """The same statistics under ``policy`` (a configuration reload; ``RolloutJudge``)."""
        fresh = self.from_state(self.to_state(), policy)
        # turns waiting for their pair are not in the state (a restart counts them unpaired): a reload
        # is no restart, they keep waiting
        fresh.pending, fresh.counts = self.pending, self.counts
        return fresh

    def to_state(self) -> dict[str, Any]:
        # pending turns are not kept: after a restart they count as unpaired (bounded loss, documented)
        return {
            "v": _STATE_V,
            "kind": "shadow",
            "rollout": asdict(self.rollout),
            "started_ts": self.started_ts,
            "settings": asdict(self.settings),
            "slices": self.slices.to_state(),
            "cum": array_to_state(self.cum),
            "epochs": {str(e): array_to_state(t) for e, t in self.epochs.items()},
            "schedule": self.schedule.to_state(),
            "conv": self.conv.to_state(),
            "units": self.units.to_state(),
            "fresh": [[cid, ts] for cid, ts in self.fresh.items()],
            "counts": {
                **self.counts,
                "unpaired_live": self.counts["unpaired_live"]
                + sum(not s for _, s, _ in self.pending.values()),
                "unpaired_shadow": self.counts["unpaired_shadow"]
                + sum(s for _, s, _ in self.pending.values()),
            },
            "tail_q": self.tail_q,
            "tail_buf": self._tail_buf,
            "watermark": self.watermark if math.isfinite(self.watermark) else None,
        }

    @classmethod
    def from_state(cls, d: dict[str, Any], policy: Policy | None = None) -> ShadowJudge:
        if d.get("v") not in (1, _STATE_V) or d.get("kind") != "shadow":
            raise ValueError(f"unknown shadow judge state {d.get('kind')!r} v{d.get('v')!r}")
        policy = policy if policy is not None else load_policy(None).default
        j = cls(RolloutRef(**d["rollout"]), policy, d["started_ts"], ShadowSettings(**d["settings"]))
        j.slices = SliceMap.from_state(d["slices"])

        def table(t: dict[str, Any]) -> np.ndarray:  # v1 has no unpaired-test fields: they start at 0
            a = array_from_state(t)
            return np.pad(a, ((0, 0), (0, j.n_fields - a.shape[1]))) if a.shape[1] < j.n_fields else a

        j.cum = table(d["cum"])
        j.epochs = {int(e): table(t) for e, t in d["epochs"].items()}
        if "units" in d:
            j.units = ConvRows.from_state(d["units"])
            j.fresh = OrderedDict((str(cid), float(ts)) for cid, ts in d["fresh"])
        j.schedule = RestartSchedule.from_state(d["schedule"])
        j.conv = ConvRows.from_state(d["conv"])
        j.counts = dict(d["counts"])
        j.tail_q, j._tail_buf = dict(d["tail_q"]), list(d["tail_buf"])
        j.watermark = d["watermark"] if d["watermark"] is not None else -math.inf
        return j
