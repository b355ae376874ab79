"""The canary judge of one rollout: turns in (per batch), anytime-valid evidence out.

Per batch the judge maps turns to conversations (the statistical unit), computes per-conversation
increments with numpy and adds them into one table per test block, indexed by
(slice, assignment stratum, arm, field). A *slice* is "all" or one segment value; a *stratum* is a
period of constant canary weight rho (index 0: rho unknown or in the grace period after a change);
*fields* are the conversation count, one "first event" count per rate metric and the six cluster
sums of each mean metric. Blocks: the cumulative one and one per live epoch (the change-point
restarts of ``stats.RestartSchedule``). ``evidence`` evaluates every metric x slice x block in a few
vectorised calls and applies the Bonferroni split documented in docs/statistics.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import compress, repeat
from dataclasses import asdict
from typing import Any, Protocol

import numpy as np

from watcher.policy import MetricPolicy, Policy, ToleranceMode, load_policy
from watcher.stats import (
    FAIL_GRID, MEAN_FIELDS, PASS_GRID, SRM_GRID, RestartSchedule, array_from_state, array_to_state,
    logsumexp, mean_deltas, msprt_half_width, msprt_log_evalue, rate_confidence_sequence, rate_log_evalue,
    stratified_difference, theta,
)
from watcher.verdicts import ArmEstimate, MetricEvidence, RolloutEvidence, RolloutRef, SampleRatioEvidence, Verdict

__all__ = ["Judge", "TurnLike"]

_STRATA = 16
_TAIL_BASELINE_TURNS = 3000  # baseline latencies (many conversations) that fix the tail thresholds
_CAP = 50_000  # conversations per generation of the conversation table


class TurnLike(Protocol):
    ts: float
    conversation_id: str
    segment: dict[str, str]
    latency_ms: float | None
    quality: float | None
    escalated: bool
    error: bool
    compliance_violation: bool


_ARM_CODE = {"baseline": 0, "canary": 1}
# Columns of the batch's event flags: list comprehensions are the cheapest per-turn access in CPython.
_EVENT_COLUMN = {
    "escalation": lambda turns: [t.escalated for t in turns],
    "error": lambda turns: [t.error for t in turns],
    "compliance": lambda turns: [t.compliance_violation for t in turns],
}
_VERDICTS = (Verdict.FAIL, Verdict.PASS, Verdict.INCONCLUSIVE)
_TAIL = {Verdict.PASS: "; non-inferior", Verdict.FAIL: "", Verdict.INCONCLUSIVE: "; inconclusive"}


def _float_column(values: list[Any], n: int) -> np.ndarray:
    """Floats with None as NaN (numpy converts None to NaN for a float dtype)."""
    return np.fromiter(values, float, n)


class _Conversations:
    """Bounded conversation table: two generations of id -> slot, arrays indexed by slot.

    Ids are found through one open-addressing hash table per generation (numpy arrays of the ids'
    64-bit ``hash``, linear probing): a whole batch is looked up in a few vectorised probes, where a
    dict lookup per turn costs ~0.5 us of cache misses on a large table. Two ids with the same 64-bit
    hash would share a row (probability ~1e-14 per turn; documented). ``ids`` keeps slot -> id for
    the state, which stores ids, never hashes (``hash`` is salted per process).
    """

    def __init__(self, cap: int, n_keys: int) -> None:
        self.cap = cap
        self.gen = 0
        self.next = 0
        size = 2 * cap
        self.arm = np.zeros(size, np.int8)
        self.rho = np.zeros(size, np.int16)
        self.epoch = np.zeros(size, np.int64)
        self.slices = np.full((size, max(n_keys, 1)), -1, np.int16)
        self.flags = np.zeros(size, np.uint16)
        self.sums = np.zeros((size, 4))  # quality S, n; log-latency S, n
        self.ids: list[str | None] = [None] * size
        width = 1 << max(int(math.ceil(math.log2(2.5 * max(cap, 8)))), 4)  # load factor <= 0.4
        self.mask = width - 1
        self.keys = np.zeros((2, width), np.int64)  # 0 = empty
        self.vals = np.zeros((2, width), np.int64)

    @property
    def base(self) -> int:
        return (self.gen % 2) * self.cap

    def __len__(self) -> int:
        """Conversations in the current generation."""
        return self.next - self.base

    def rotate(self) -> None:
        # The oldest generation is forgotten: its conversations keep their contribution to the sums
        # and would count as new conversations if they came back (documented approximation).
        self.gen += 1
        base = self.base
        region = slice(base, base + self.cap)
        for a in (self.arm, self.rho, self.epoch, self.flags, self.sums):
            a[region] = 0
        self.slices[region] = -1
        self.ids[region] = [None] * self.cap
        self.keys[self.gen % 2] = 0
        self.next = base

    def find(self, h: np.ndarray, old: bool = False) -> np.ndarray:
        """Slots of hashed ids in the current (or the old) generation, -1 where absent."""
        t = (self.gen + old) % 2
        keys, vals, mask = self.keys[t], self.vals[t], self.mask
        out = np.full(len(h), -1, np.int64)
        at, pos = np.arange(len(h)), h & mask
        while len(at):
            k = keys[pos]
            hit = k == h
            out[at[hit]] = vals[pos[hit]]
            more = ~hit & (k != 0)
            at, h, pos = at[more], h[more], (pos[more] + 1) & mask
        return out

    def insert(self, h: np.ndarray, slots: np.ndarray) -> None:
        """Add distinct, absent hashed ids with their slots to the current generation (``ids``: caller)."""
        t = self.gen % 2
        keys, vals, mask = self.keys[t], self.vals[t], self.mask
        pos = h & mask
        while len(h):
            free = keys[pos] == 0
            keys[pos[free]] = h[free]  # of several ids claiming one free cell, the last write wins
            won = keys[pos] == h
            vals[pos[won]] = slots[won]
            rest = ~won
            h, slots, pos = h[rest], slots[rest], (pos[rest] + 1) & mask

    def to_state(self) -> dict[str, Any]:
        base, obase = self.base, self.cap - self.base
        cur = {self.ids[s]: s for s in range(base, self.next)}
        old = {c: s for s, c in enumerate(self.ids[obase:obase + self.cap], obase) if c is not None}
        return {"cap": self.cap, "cur": cur, "old": old, "gen": self.gen, "next": self.next,
                **{k: array_to_state(getattr(self, k)) for k in ("arm", "rho", "epoch", "slices", "flags", "sums")}}

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> _Conversations:
        c = cls(d["cap"], 1)
        c.gen, c.next = d["gen"], d["next"]
        for k in ("arm", "rho", "epoch", "slices", "flags", "sums"):
            setattr(c, k, array_from_state(d[k]))
        for gen, table in ((d["gen"] - 1, d["old"]), (d["gen"], d["cur"])):
            if table:
                c.gen = gen
                c.insert(id_hashes(list(table)), np.fromiter(table.values(), np.int64, len(table)))
                for cid, s in table.items():
                    c.ids[s] = cid
        c.gen = d["gen"]
        return c


def id_hashes(ids: list[str]) -> np.ndarray:
    """64-bit hashes of ids for the conversation table (0 is its empty marker)."""
    h = np.fromiter(map(hash, ids), np.int64, len(ids))
    h[h == 0] = 1
    return h


class Judge:
    """Evidence about one rollout (treatment "canary" vs concurrent control "baseline")."""

    def __init__(self, rollout: RolloutRef, policy: Policy, started_ts: float, *, capacity: int = _CAP) -> None:
        self.rollout = rollout
        self.policy = policy
        self.started_ts = started_ts
        self.metrics: tuple[MetricPolicy, ...] = policy.enabled_metrics()
        seg = policy.segments
        self.n_keys = seg.max_keys if seg.enabled else 0
        self.n_values = seg.max_values_per_key
        self.n_slices = 1 + self.n_keys * (self.n_values + 1)
        self.seg_keys: list[str] = list(seg.keys)[: self.n_keys]
        self.seg_values: dict[str, dict[str, int]] = {}
        self._keymap: dict[str, int] = {}  # segment key -> column, only keys that are sliced
        self.slice_names: dict[int, str] = {0: "all"}
        self.field: dict[str, int] = {}
        f = 1
        for m in self.metrics:
            self.field[m.name] = f
            f += MEAN_FIELDS if m.kind == "mean" else 1
        self.n_fields = f
        self.rhos: list[float] = [0.5]  # stratum 0: rho unknown (only the mean tests use it)
        self.rho_now: float | None = None
        self.rho_changed_ts = -math.inf
        self.tail_q: dict[str, float] = {}
        self._tail_buf: list[np.ndarray] = []
        cp = policy.changepoint
        self.schedule = RestartSchedule(cp.epoch_s, cp.restart_share, enabled=cp.enabled, span=cp.span_epochs)
        self.cum = self._block()
        self.epochs: dict[int, np.ndarray] = {0: self._block()}
        self.conv = _Conversations(capacity, self.n_keys)
        self.watermark = started_ts
        self._lat_needed = any(m.kind == "tail" or (m.kind == "mean" and m.name != "quality") for m in self.metrics)
        self._n_tails = sum(m.kind == "tail" for m in self.metrics)
        self._grid_key: tuple[float, ...] | None = None  # cache of _rate_grid
        self._grid: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))

    def _block(self) -> np.ndarray:
        return np.zeros((self.n_slices, _STRATA, 2, self.n_fields))

    # -- ingestion ----------------------------------------------------------------------------------
    # Cost model (docs/PERFORMANCE.md budget ~0.6 us per turn): per turn only list comprehensions over
    # attributes and one dict lookup of the conversation id; everything else is per distinct
    # conversation (numpy) or per *group* of conversations sharing every cell of the tables.
    def update(self, turns: Sequence[Any], arms: Sequence[str], canary_weight: float | None) -> None:
        """Add one batch; ``arms`` are resolved roles parallel to ``turns`` (others are ignored)."""
        codes = [_ARM_CODE.get(a, -1) for a in arms]
        if -1 in codes:
            keep = [c >= 0 for c in codes]
            turns = list(compress(turns, keep))
            codes = [c for c in codes if c >= 0]
        n = len(codes)
        if not n:
            return
        ts = np.fromiter([t.ts for t in turns], float, n)
        self._set_weight(canary_weight, float(ts.min()))
        self.watermark = max(self.watermark, float(ts.max()))
        epoch = int(self.schedule.epoch_of(np.asarray(self.watermark - self.started_ts)))
        if epoch > self.schedule.current:
            self.schedule.current = epoch
            self.epochs = {e: b for e, b in self.epochs.items() if e > epoch - self.schedule.span}
            self.epochs[epoch] = self._block()
        conv = self.conv
        if len(conv) > conv.cap - n:
            conv.rotate()
        cids = [t.conversation_id for t in turns]
        h = id_hashes(cids)
        slots = conv.find(h)
        fresh = self._admit(h, cids, slots, turns, np.fromiter(codes, np.int8, n), ts) if (slots < 0).any() else None
        u, inv = np.unique(slots, return_inverse=True)
        m = len(u)
        delta = np.zeros((m, self.n_fields))
        if fresh is not None and len(fresh):
            delta[np.searchsorted(u, fresh), 0] = 1.0
        lat = _float_column([t.latency_ms for t in turns], n) if self._lat_needed else None
        if lat is not None and len(self.tail_q) < self._n_tails:
            self._fix_tails(lat, np.fromiter(codes, np.int8, n) == 0)
        flags = conv.flags[u]
        for bit, mp in enumerate(self.metrics):
            col = self.field[mp.name]
            if mp.kind == "mean":
                if mp.name == "quality":
                    x = _float_column([t.quality for t in turns], n)
                else:
                    x = np.log(np.maximum(lat, 1e-3))
                ok = ~np.isnan(x)
                if ok.all():
                    ds, dn = np.bincount(inv, weights=x, minlength=m), np.bincount(inv, minlength=m).astype(float)
                else:
                    ds = np.bincount(inv[ok], weights=x[ok], minlength=m)
                    dn = np.bincount(inv[ok], minlength=m).astype(float)
                k = 0 if mp.name == "quality" else 2
                s_old, n_old = conv.sums[u, k], conv.sums[u, k + 1]
                s_new, n_new = s_old + ds, n_old + dn
                conv.sums[u, k], conv.sums[u, k + 1] = s_new, n_new
                delta[:, col:col + MEAN_FIELDS] = mean_deltas(s_old, n_old, s_new, n_new)
                continue
            if mp.kind == "tail":
                q = self.tail_q.get(mp.name)
                if q is None:
                    continue
                ev = lat > q
                if not ev.any():
                    continue
            else:
                raw = _EVENT_COLUMN[mp.name](turns)
                if True not in raw:
                    continue
                ev = np.fromiter(raw, bool, n)
            first = (np.bincount(inv[ev], minlength=m) > 0) & (((flags >> bit) & 1) == 0)
            flags[first] |= np.uint16(1 << bit)
            delta[:, col] = first
        conv.flags[u] = flags
        self._scatter(u, delta)

    def _admit(self, h: np.ndarray, cids: list[str], slots: np.ndarray, turns: Sequence[Any], arm: np.ndarray,
               ts: np.ndarray) -> np.ndarray:
        """Give slots to the batch's conversations missing from the current generation (in place).

        Slots are allocated in order of first appearance, exactly as a per-turn loop would; a
        conversation found in the old generation keeps its row (copied), the others are new.
        Returns the slots of the new conversations.
        """
        conv = self.conv
        miss = np.flatnonzero(slots < 0)
        uh, first, inv = np.unique(h[miss], return_index=True, return_inverse=True)
        order = np.argsort(first)  # distinct new ids by first appearance
        k = len(uh)
        rank = np.empty(k, np.int64)
        rank[order] = np.arange(k)
        base = conv.next
        conv.next += k
        new_slots = base + rank
        slots[miss] = new_slots[inv]
        conv.insert(uh, new_slots)
        first_pos = miss[first]  # batch position of each new id's first turn
        conv.ids[base:base + k] = [cids[i] for i in first_pos[order].tolist()]
        olds = conv.find(uh, old=True)
        mig = olds >= 0
        if mig.any():
            src, dst = olds[mig], new_slots[mig]
            for a in (conv.arm, conv.rho, conv.epoch, conv.flags, conv.sums, conv.slices):
                a[dst] = a[src]
        keep = np.flatnonzero(~mig)
        keep = keep[np.argsort(first_pos[keep])]  # segment values are adopted in order of appearance
        fresh = new_slots[keep]
        if len(fresh):
            self._new_conversations(fresh, first_pos[keep], turns, arm, ts)
        return fresh

    def _new_conversations(self, slots: np.ndarray, pos: np.ndarray, turns: Sequence[Any],
                           arm: np.ndarray, ts: np.ndarray) -> None:
        conv = self.conv
        conv.arm[slots] = arm[pos]
        first_ts = ts[pos]
        conv.epoch[slots] = self.schedule.epoch_of(first_ts - self.started_ts)
        if self.rho_now is None:
            conv.rho[slots] = 0
        else:
            in_grace = first_ts < self.rho_changed_ts + self.policy.srm.grace_s
            conv.rho[slots] = np.where(in_grace, 0, self._rho_index(self.rho_now))
        if self.n_keys:
            conv.slices[slots, :self.n_keys] = self._segment_slices([turns[i].segment for i in pos.tolist()])

    def _segment_slices(self, segs: list[dict[str, str]]) -> np.ndarray:
        """(len(segs), n_keys) slice ids of the conversations' segment values (-1: key absent)."""
        seen = set().union(*segs)
        keymap = self._keymap
        unknown = [key for key in seen if key not in keymap]
        if unknown:
            if (not self.policy.segments.keys and len(self.seg_keys) < self.n_keys
                    and any(key not in self.seg_keys for key in unknown)):
                # Keys are adopted in order of first appearance in the traffic: walk the rows once.
                for seg in segs:
                    for key in seg:
                        if key not in keymap:
                            self._key_index(key)
            else:
                for key in unknown:
                    self._key_index(key)
        out = np.full((len(segs), self.n_keys), -1, np.int16)
        for key, k in keymap.items():
            if key not in seen:
                continue
            vals = [seg.get(key) for seg in segs]
            known = self.seg_values[key]
            sl = list(map(known.get, vals))
            if None in sl:  # new values (slices allocated in order of first appearance) or absent key
                for i, (s, v) in enumerate(zip(sl, vals)):
                    if s is None:
                        sl[i] = -1 if v is None else (known.get(v) or self._value_slice(key, k, v))
            out[:, k] = sl
        return out

    def _set_weight(self, w: float | None, ts: float) -> None:
        rho = float(w) if w is not None and 0.0 < float(w) < 1.0 else None
        if rho != self.rho_now:
            if self.rho_now is not None:  # the first weight is the rollout's start, not a change
                self.rho_changed_ts = ts
            self.rho_now = rho

    def _rho_index(self, rho: float) -> int:
        rho = round(rho, 6)
        if rho in self.rhos[1:]:
            return self.rhos.index(rho, 1)
        if len(self.rhos) < _STRATA:
            self.rhos.append(rho)
            return len(self.rhos) - 1
        # Beyond the table a weight shares the nearest stratum (documented; ramps have few steps).
        return 1 + int(np.argmin([abs(r - rho) for r in self.rhos[1:]]))

    def _key_index(self, key: str) -> int | None:
        if key in self._keymap:
            return self._keymap[key]
        if key not in self.seg_keys:
            if self.policy.segments.keys or len(self.seg_keys) >= self.n_keys:
                return None
            self.seg_keys.append(key)
        k = self.seg_keys.index(key)
        self._keymap[key] = k
        self.seg_values.setdefault(key, {})
        return k

    def _value_slice(self, key: str, k: int, value: str) -> int:
        values = self.seg_values.setdefault(key, {})
        s = values.get(value)
        if s is None:
            base = 1 + k * (self.n_values + 1)
            if len(values) < self.n_values:
                s = base + len(values)
                self.slice_names[s] = f"{key}={value}"
            else:
                s = base + self.n_values
                self.slice_names[s] = f"{key}=__other__"
            values[value] = s
        return s

    def _fix_tails(self, lat: np.ndarray, baseline: np.ndarray) -> None:
        tails = [m for m in self.metrics if m.kind == "tail" and m.name not in self.tail_q]
        if not tails:
            return
        x = lat[baseline & ~np.isnan(lat)]
        if len(x):
            self._tail_buf.append(x)
        if sum(len(b) for b in self._tail_buf) >= _TAIL_BASELINE_TURNS:
            # Fixed once, from the control arm only, before any exceedance is counted.
            allx = np.concatenate(self._tail_buf)
            for m in tails:
                self.tail_q[m.name] = float(np.quantile(allx, m.quantile or 0.95))
            self._tail_buf = []

    def _scatter(self, u: np.ndarray, delta: np.ndarray) -> None:
        """Add per-conversation increments to every block's cells (slice, stratum, arm)."""
        conv, nk = self.conv, self.n_keys
        cell = conv.rho[u].astype(np.int64) * 2 + conv.arm[u]
        ep = conv.epoch[u]
        sl = conv.slices[u, :nk].astype(np.int64)
        e0 = int(ep.min())
        radix = self.n_slices + 1
        if (int(ep.max()) - e0 + 1) * 2 * _STRATA * radix ** nk < 2 ** 62:
            # Conversations with the same epoch, cell and segment values hit the same cells: sum
            # them first (a batch has thousands of conversations but ~100 such groups).
            code = (ep - e0) * (2 * _STRATA) + cell
            for k in range(nk):
                code = code * radix + (sl[:, k] + 1)
            order = np.argsort(code)
            sc = code[order]
            starts = np.flatnonzero(np.concatenate(([True], sc[1:] != sc[:-1])))
            delta = np.add.reduceat(delta[order], starts, axis=0)
            rep = order[starts]
            cell, ep, sl = cell[rep], ep[rep], sl[rep]
        cells = np.empty((len(cell), 1 + nk), np.int64)
        cells[:, 0] = cell  # slice 0 ("all")
        cells[:, 1:] = np.where(sl >= 0, sl * (2 * _STRATA) + cell[:, None], -1)
        self._add(self.cum, cells, delta)
        for e, block in self.epochs.items():
            mask = ep == e
            if mask.all():
                self._add(block, cells, delta)
            elif mask.any():
                self._add(block, cells[mask], delta[mask])

    def _add(self, block: np.ndarray, cells: np.ndarray, rows: np.ndarray) -> None:
        f = self.n_fields
        valid = cells >= 0
        idx = cells[valid][:, None] * f + np.arange(f)
        w = np.broadcast_to(rows[:, None, :], (*cells.shape, f))[valid]
        block += np.bincount(idx.ravel(), w.ravel(), minlength=block.size).reshape(block.shape)

    # -- evidence -----------------------------------------------------------------------------------
    # One pass of array operations per metric *kind* over every block x metric x slice, then one
    # confidence-sequence call for all judged rate rows; Python only formats the rows.
    def _alpha(self, segment: bool) -> float:
        a = self.policy.alpha / max(len(self.metrics), 1)
        if not self.n_keys:
            return a
        share = self.policy.segments.budget_share
        return a * share / (self.n_slices - 1) if segment else a * (1 - share)

    def _blocks(self) -> list[tuple[str, np.ndarray, float]]:
        out = [("", self.cum, self.schedule.cumulative_fraction())]
        for j, frac in self.schedule.live_windows():
            parts = [b for e, b in self.epochs.items() if j <= e < j + self.schedule.span]
            if parts:
                start_h = j * self.schedule.epoch_s / 3600
                out.append((f" [restarted at +{start_h:.1f}h]", sum(parts[1:], parts[0]), frac))
        return out

    def evidence(self, ts: float) -> RolloutEvidence:
        conv_arm = self.cum[:, :, :, 0].sum(axis=1)  # (S, 2)
        named = np.fromiter(sorted(s for s in self.slice_names if s), np.int64)
        judged = named[conv_arm[named].min(axis=1) >= self.policy.segments.min_conversations]
        sl = np.concatenate((np.zeros(1, np.int64), judged))
        base_log_thr = np.where(sl > 0, math.log(1 / self._alpha(True)), math.log(1 / self._alpha(False)))
        blocks = self._blocks()
        x = np.stack([b[sl] for _, b, _ in blocks])  # (block, slice, stratum, arm, field)
        log_thr = np.stack([base_log_thr + math.log(1 / frac) for _, _, frac in blocks])  # (block, slice)
        per_arm = x.sum(axis=2)  # (block, slice, arm, field): the arms' estimates
        rhos = np.asarray(self.rhos + [0.5] * (_STRATA - len(self.rhos)))
        tests = {**self._mean_tests(x, log_thr), **self._rate_tests(x, rhos)}
        pass_thr = math.log(1 / self.policy.promote.alpha)
        plan = []
        for mp in self.metrics:
            lef, lep, n = tests[mp.name][:3]
            elig = n.min(axis=-1) >= mp.min_samples  # (block, slice)
            judge = elig[0] & (not (mp.kind == "tail" and mp.name not in self.tail_q))
            margin = np.where(elig, lef - log_thr, -np.inf)
            # Largest margin wins; on a tie the later (more recent) block, as max((margin, k)) would.
            k = len(blocks) - 1 - np.argmax(margin[::-1], axis=0)
            fail = judge & (margin[k, np.arange(len(sl))] >= 0)
            k = np.where(fail, k, 0)
            plan.append((mp, judge, fail, k, lep[0] >= pass_thr))
        cs = self._rate_intervals(plan, tests, log_thr, rhos)
        rows: list[MetricEvidence] = []
        for mp, judge, fail, k, ok in plan:
            rows.extend(self._metric_rows(mp, sl, judge, fail, k, ok, tests[mp.name], log_thr, per_arm,
                                          blocks, cs.get(mp.name)))
        return RolloutEvidence(self.rollout.rollout_id, ts, ts - self.started_ts, tuple(rows),
                               self._sample_ratio(rhos), int(conv_arm[0, 0]), int(conv_arm[0, 1]))

    def _mean_params(self, mp: MetricPolicy) -> tuple[float, float, float]:
        """(tolerance on the tested scale, mixing scale tau, sign: +1 when higher is worse)."""
        tol = math.log(mp.tolerance) if mp.tolerance_mode is ToleranceMode.RELATIVE else mp.tolerance
        return tol, max(2 * abs(tol), 0.02), 1.0 if mp.direction.value == "higher_is_worse" else -1.0

    def _mean_tests(self, x: np.ndarray, log_thr: np.ndarray) -> dict[str, tuple[np.ndarray, ...]]:
        ms = [m for m in self.metrics if m.kind == "mean"]
        if not ms:
            return {}
        cols = np.array([[self.field[m.name] + j for j in range(MEAN_FIELDS)] for m in ms])
        a = np.moveaxis(x[..., cols], 4, 1)  # (block, metric, slice, stratum, arm, field)
        t, c = a[..., 1, :], a[..., 0, :]
        diff, var = stratified_difference(t, c)  # (block, metric, slice)
        tol, tau, sign = (np.array(p)[None, :, None] for p in zip(*map(self._mean_params, ms)))
        excess = sign * (diff - tol)
        lef, lep = msprt_log_evalue(excess, var, tau), msprt_log_evalue(-excess, var, tau)
        n = np.stack([c[..., 5].sum(-1), t[..., 5].sum(-1)], -1)
        with np.errstate(invalid="ignore", divide="ignore"):
            hw = np.where(np.isfinite(var), msprt_half_width(var, tau, log_thr[:, None, :]), np.nan)
        return {m.name: (lef[:, i], lep[:, i], n[:, i], diff[:, i], hw[:, i]) for i, m in enumerate(ms)}

    def _rate_tests(self, x: np.ndarray, rhos: np.ndarray) -> dict[str, tuple[np.ndarray, ...]]:
        ms = [m for m in self.metrics if m.kind != "mean"]
        if not ms:
            return {}
        cols = [self.field[m.name] for m in ms]
        t = np.moveaxis(x[:, :, 1:, 1][..., cols], -1, 1)  # (block, metric, slice, stratum)
        c = np.moveaxis(x[:, :, 1:, 0][..., cols], -1, 1)
        log_th, log_1m = self._rate_grid(ms, rhos)
        ll = t @ log_th + c @ log_1m  # (block, metric, slice, null + fail + pass ratios)
        d = ll[..., 1:] - ll[..., :1]
        nf = len(FAIL_GRID)
        lef = logsumexp(d[..., :nf]) - math.log(nf)
        lep = logsumexp(d[..., nf:]) - math.log(len(PASS_GRID))
        n = x[..., 0].sum(axis=2)  # conversations (block, slice, arm)
        return {m.name: (lef[:, i], lep[:, i], n, t[:, i], c[:, i]) for i, m in enumerate(ms)}

    def _rate_grid(self, ms: list[MetricPolicy], rhos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log theta and log(1 - theta), (metric, stratum, ratio); changes only with the weights."""
        key = tuple(rhos.tolist())
        if self._grid_key != key:
            fail, ok = np.asarray(FAIL_GRID), np.asarray(PASS_GRID)
            ratios = np.array([np.concatenate([[m.tolerance], m.tolerance * (fail if up else 1 / fail),
                                               m.tolerance * (1 / ok if up else ok)])
                               for m in ms for up in [m.direction.value == "higher_is_worse"]])
            th = theta(ratios[:, None, :], rhos[1:][None, :, None])
            self._grid, self._grid_key = (np.log(th), np.log1p(-th)), key
        return self._grid

    def _rate_intervals(self, plan: list[Any], tests: dict[str, tuple[np.ndarray, ...]], log_thr: np.ndarray,
                        rhos: np.ndarray) -> dict[str, list[tuple[float, float, float]]]:
        """Confidence sequences of every judged rate row, in one vectorised call."""
        who, ts, cs, thr = [], [], [], []
        for mp, judge, _, k, _ in plan:
            if mp.kind == "mean" or not judge.any():
                continue
            i = np.flatnonzero(judge)
            t, c = tests[mp.name][3:5]
            who.append((mp.name, len(i)))
            ts.append(t[k[i], i])
            cs.append(c[k[i], i])
            thr.append(log_thr[k[i], i])
        if not who:
            return {}
        lo, hi, mle = rate_confidence_sequence(np.concatenate(ts), np.concatenate(cs), rhos[1:], np.concatenate(thr))
        rows = list(zip(lo.tolist(), hi.tolist(), mle.tolist()))
        out, at = {}, 0
        for name, m in who:
            out[name], at = rows[at:at + m], at + m
        return out

    def _metric_rows(self, mp: MetricPolicy, sl: np.ndarray, judge: np.ndarray, fail: np.ndarray, k: np.ndarray,
                     ok: np.ndarray, test: tuple[np.ndarray, ...], log_thr: np.ndarray, per_arm: np.ndarray,
                     blocks: list[tuple[str, np.ndarray, float]], cs: list[tuple[float, float, float]] | None
                     ) -> list[MetricEvidence]:
        if not judge[0]:
            out = [self._nodata(mp, test[2][0, 0])]
            if not judge.any():
                return out
        else:
            out = []
        i = np.flatnonzero(judge)
        ki = k[i]
        col = self.field[mp.name]
        mean = mp.kind == "mean"
        relative = mp.tolerance_mode is ToleranceMode.RELATIVE
        pa = per_arm[ki, i]  # (row, arm, field)
        den = pa[..., col + 1] if mean else pa[..., 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            est = np.where(den != 0, pa[..., col] / den, np.nan).tolist()
        n = test[2][ki, i]  # (row, arm)
        if mean:
            diff, hw = test[3][ki, i].tolist(), test[4][ki, i].tolist()
            ci = [(d - h, d + h, d) for d, h in zip(diff, hw)]
        else:
            ci = cs or []
        verdicts = np.where(fail[i], 0, np.where(ok[i], 1, 2)).tolist()
        names = [self.slice_names.get(s, "all") for s in sl[i].tolist()]
        what = f"{mp.name} (> {self.tail_q[mp.name]:.0f} ms)" if mp.kind == "tail" else mp.name
        for name, v, kb, thr, lef, (lo, hi, eff), (e0, e1), (n0, n1) in zip(
                names, verdicts, ki.tolist(), log_thr[ki, i].tolist(), test[0][ki, i].tolist(), ci, est,
                n.astype(np.int64).tolist()):
            if mean and relative:
                lo, hi, eff, e0, e1 = math.exp(lo), math.exp(hi), math.exp(eff), math.exp(e0), math.exp(e1)
            out.append(self._row(mp, what, name, _VERDICTS[v], blocks[kb][0], thr, lef, lo, hi, eff, e0, e1,
                                 n0, n1, relative))
        return out

    def _row(self, mp: MetricPolicy, what: str, name: str, verdict: Verdict, label: str, log_thr: float,
             lef: float, lo: float, hi: float, eff: float, e0: float, e1: float, n0: int, n1: int,
             relative: bool) -> MetricEvidence:
        stat, thr = math.exp(min(lef, 700.0)), math.exp(log_thr)
        verb = "rose" if (eff > (1.0 if relative else 0.0)) else "fell"
        mag = f"x{eff:.3g}" if relative else f"{abs(eff):.3g}"
        cmp = ">=" if verdict is Verdict.FAIL else "<"
        reason = (f"{what} in {name} {verb} {mag} ({_fmt(lo)}..{_fmt(hi)}, e={stat:.3g} {cmp} {thr:.3g}) "
                  f"canary {_fmt(e1)} n={n1} vs baseline {_fmt(e0)} n={n0}{_TAIL[verdict]}{label}")
        return MetricEvidence(mp.name, name, verdict, ArmEstimate(n0, _opt(e0)), ArmEstimate(n1, _opt(e1)), _opt(eff),
                              "ratio" if relative else "difference", _opt(lo), _opt(hi), stat, thr, mp.tolerance,
                              mp.critical, reason)

    def _nodata(self, mp: MetricPolicy, n: np.ndarray) -> MetricEvidence:
        unit = "ratio" if mp.tolerance_mode is ToleranceMode.RELATIVE else "difference"
        reason = (f"{mp.name} in all: not enough data yet (canary n={int(n[1])}, baseline n={int(n[0])}, "
                  f"need {mp.min_samples} per arm)")
        return MetricEvidence(mp.name, "all", Verdict.NODATA, ArmEstimate(int(n[0]), None),
                              ArmEstimate(int(n[1]), None), None, unit, None, None, 1.0,
                              1 / self._alpha(False), mp.tolerance, mp.critical, reason)

    def _sample_ratio(self, rhos: np.ndarray) -> SampleRatioEvidence | None:
        cfg = self.policy.srm
        if not cfg.enabled:
            return None
        t, c = self.cum[0, 1:, 1, 0], self.cum[0, 1:, 0, 0]
        total = float(t.sum() + c.sum())
        lev = float(rate_log_evalue(t, c, rhos[1:], 1.0, np.asarray(SRM_GRID))) if total else 0.0
        stat, thr = math.exp(min(lev, 700.0)), 1 / cfg.alpha
        expected = float(((t + c) * rhos[1:]).sum() / total) if total else (self.rho_now or 0.0)
        observed = float(t.sum() / total) if total else None
        mismatch = total >= cfg.min_conversations and stat >= thr
        obs = f"{observed:.4f}" if observed is not None else "n/a"
        reason = (f"{'sample ratio mismatch' if mismatch else 'sample ratio ok'}: canary share {obs} of "
                  f"{int(total)} conversations, expected {expected:.4f} (e={stat:.3g} {'>=' if mismatch else '<'} "
                  f"{thr:.3g})")
        return SampleRatioEvidence(expected, observed, int(t.sum()), int(c.sum()), stat, thr, mismatch, reason)

    # -- state --------------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {"v": 1, "rollout": asdict(self.rollout), "started_ts": self.started_ts,
                "seg_keys": self.seg_keys, "seg_values": self.seg_values,
                "slice_names": {str(k): v for k, v in self.slice_names.items()}, "rhos": self.rhos,
                "rho_now": self.rho_now, "rho_changed_ts": self.rho_changed_ts if math.isfinite(self.rho_changed_ts)
                else None, "tail_q": self.tail_q,
                "tail_buf": np.concatenate(self._tail_buf).tolist() if self._tail_buf else [],
                "schedule": self.schedule.to_state(), "cum": array_to_state(self.cum),
                "epochs": {str(e): array_to_state(b) for e, b in self.epochs.items()},
                "conv": self.conv.to_state(), "watermark": self.watermark}

    @classmethod
    def from_state(cls, d: dict[str, Any], policy: Policy | None = None) -> Judge:
        """Restore; ``policy`` must be the one the judge ran with (default: the bundled policy)."""
        if d.get("v") != 1:
            raise ValueError(f"unknown judge state version {d.get('v')!r}")
        policy = policy if policy is not None else load_policy(None).default
        j = cls(RolloutRef(**d["rollout"]), policy, d["started_ts"], capacity=d["conv"]["cap"])
        j.seg_keys, j.seg_values = list(d["seg_keys"]), {k: dict(v) for k, v in d["seg_values"].items()}
        j._keymap = {k: i for i, k in enumerate(j.seg_keys)}
        j.slice_names = {int(k): v for k, v in d["slice_names"].items()}
        j.rhos, j.rho_now = list(d["rhos"]), d["rho_now"]
        j.rho_changed_ts = d["rho_changed_ts"] if d["rho_changed_ts"] is not None else -math.inf
        j.tail_q = dict(d["tail_q"])
        j._tail_buf = [np.asarray(d["tail_buf"], dtype=float)] if d["tail_buf"] else []
        j.schedule = RestartSchedule.from_state(d["schedule"])
        j.cum = array_from_state(d["cum"])
        j.epochs = {int(e): array_from_state(b) for e, b in d["epochs"].items()}
        j.conv = _Conversations.from_state(d["conv"])
        j.watermark = d["watermark"]
        return j


def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "?"
    return f"{x:.3g}" if abs(x) >= 0.01 or x == 0 else f"{x:.2e}"


def _opt(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None
