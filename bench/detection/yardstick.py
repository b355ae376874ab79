"""The plain anytime-valid yardstick of issue #14, a reference judge for the detection benchmark.

What a statistician would write first, on the same JSONL stream as watcher: the conversation is the
unit; rates (escalation, error, compliance, latency above the baseline's p95) get the conditional
e-test against *zero effect* (ratio 1, one-sided grid mixture); quality and log latency get the
one-sided mixture SPRT on the stratified difference of conversation-clustered means, also against
zero; every test is restarted every ``restart_s`` (20 min) on the conversations that start from then
on, restart j >= 1 spending ``alpha * 6 / (pi^2 j^2)``; Bonferroni over metric x slice (overall and
every segment value). It looks every ``look_s`` of event time and stops at the first rejection.

It reuses ``watcher.stats``' numerics (the e-values are textbook formulas) but none of watcher's
judge, policy or defaults: no tolerance, no burn-in beyond ``min_conversations`` per arm for the
asymptotic mean test, no segment budget share. Canary and flag rollouts (the variants of one
version); shadow and blue-green have no concurrent randomised control and are not judged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from watcher.stats import FAIL_GRID, msprt_log_evalue, rate_log_evalue, stratified_difference

__all__ = ["Yardstick", "load_turns"]

_MEAN_FIELDS = 6
_TAIL_TURNS = 3000


class _Row(msgspec.Struct):
    ts: datetime | float  # RFC 3339 (decoded by msgspec) or Unix seconds
    schema: str = "watcher.turn/v1"
    conversation_id: str = ""
    version: str | None = None
    arm: str | None = None
    segment: dict[str, str] = {}
    flags: dict[str, str] = {}
    latency_ms: float | None = None
    quality: float | None = None
    escalated: bool = False
    error: bool = False
    compliance_violation: bool = False
    action: str | None = None
    strategy: str | None = None
    canary_version: str | None = None
    baseline_version: str | None = None
    canary_weight: float | None = None
    flag: dict[str, str] | None = None


@dataclass
class Turns:
    """A canary's turns as columns (treatment or control only), time-ordered, with the rollout."""

    start_ts: float
    strategy: str
    ts: np.ndarray
    conv: np.ndarray  # conversation code
    treat: np.ndarray  # bool
    rho: np.ndarray  # weight in force at the conversation's first turn (per turn)
    seg: dict[str, np.ndarray]  # key -> value code per turn
    seg_values: dict[str, list[str]]
    latency: np.ndarray
    quality: np.ndarray
    escalated: np.ndarray
    error: np.ndarray
    compliance: np.ndarray


def _unix(ts: datetime | float) -> float:
    return ts.timestamp() if isinstance(ts, datetime) else float(ts)


def load_turns(path: Path) -> Turns | None:
    """The treatment and control turns of the stream's first rollout (None: not a canary or flag).

    The lines are decoded as one JSON array (one msgspec call, about half the time of a call per line)."""
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    rows = msgspec.json.decode(b"[" + b",".join(lines) + b"]", type=list[_Row])
    markers = [r for r in rows if r.schema == "watcher.deployment/v1"]
    start = next((m for m in markers if m.action == "started"), None)
    if start is None or (start.strategy or "canary") not in ("canary", "flag"):
        return None
    strategy = start.strategy or "canary"
    t0 = _unix(start.ts)
    steps = sorted(
        (_unix(m.ts), float(m.canary_weight))
        for m in markers
        if m.action in ("started", "weight_changed") and m.canary_weight is not None
    )
    turns = [r for r in rows if r.schema == "watcher.turn/v1"]
    ts = np.array([_unix(r.ts) for r in turns])
    if strategy == "flag":
        flag = start.flag or {}
        name, ctl, trt = flag.get("name", ""), flag.get("control"), flag.get("treatment")
        variant = [r.flags.get(name) for r in turns]
        treat = np.array([v == trt for v in variant])
        use = np.array([v in (ctl, trt) for v in variant])
    else:
        canary, base = start.canary_version, start.baseline_version
        treat = np.array([r.arm == "canary" or (r.arm is None and r.version == canary) for r in turns])
        ctrl = np.array(
            [r.arm == "baseline" or (r.arm in (None, "live") and r.version == base) for r in turns]
        )
        use = treat | ctrl
    use &= ts >= t0
    idx = np.flatnonzero(use)
    turns = [turns[i] for i in idx.tolist()]
    ts, treat = ts[idx], treat[idx]
    _, conv = np.unique([r.conversation_id for r in turns], return_inverse=True)
    first_ts = np.full(conv.max() + 1 if len(conv) else 0, np.inf)
    np.minimum.at(first_ts, conv, ts)
    times = np.array([t for t, _ in steps])
    weights = np.array([w for _, w in steps])
    at = np.searchsorted(times, first_ts, side="right") - 1
    rho_conv = np.where(at >= 0, weights[np.maximum(at, 0)], weights[0] if len(weights) else 0.1)
    keys = sorted({k for r in turns for k in r.segment})
    seg_values: dict[str, list[str]] = {}
    seg: dict[str, np.ndarray] = {}
    for k in keys:
        vals, code = np.unique([r.segment.get(k, "") for r in turns], return_inverse=True)
        seg_values[k], seg[k] = [str(v) for v in vals], code
    # a conversation's first turn fixes its arm and segment (as it fixes its weight)
    first_turn = np.full(len(first_ts), -1)
    order = np.argsort(ts, kind="stable")
    first_turn[conv[order[::-1]]] = order[::-1]
    treat = treat[first_turn][conv]
    seg = {k: v[first_turn][conv] for k, v in seg.items()}

    def col(name: str) -> np.ndarray:
        return np.array([np.nan if getattr(r, name) is None else getattr(r, name) for r in turns], float)

    return Turns(
        t0,
        strategy,
        ts,
        conv,
        treat,
        rho_conv[conv],
        seg,
        seg_values,
        col("latency_ms"),
        col("quality"),
        np.array([r.escalated for r in turns]),
        np.array([r.error for r in turns]),
        np.array([r.compliance_violation for r in turns]),
    )


def _mean_deltas(conv: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per turn, the increments of the six cluster sums when its value joins its conversation."""
    ok = ~np.isnan(x)
    out = np.zeros((len(x), _MEAN_FIELDS))
    idx = np.flatnonzero(ok)
    if not len(idx):
        return out
    c, v = conv[idx], x[idx]
    order = np.lexsort((idx, c))
    c, v, pos = c[order], v[order], idx[order]
    cs = np.cumsum(v)
    cn = np.arange(1, len(v) + 1, dtype=float)
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    lens = np.diff(np.r_[starts, len(c)])
    s_new = cs - np.repeat(np.r_[0.0, cs][starts], lens)
    n_new = cn - np.repeat(np.r_[0.0, cn][starts], lens)
    s_old, n_old = s_new - v, n_new - 1
    out[pos] = np.stack(
        [
            s_new - s_old,
            n_new - n_old,
            s_new**2 - s_old**2,
            s_new * n_new - s_old * n_old,
            n_new**2 - n_old**2,
            (n_old == 0).astype(float),
        ],
        -1,
    )
    return out


def _first_event(conv: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """1.0 at each conversation's first turn with the event."""
    out = np.zeros(len(hit))
    idx = np.flatnonzero(hit)
    _, first = np.unique(conv[idx], return_index=True)
    out[idx[first]] = 1.0
    return out


@dataclass(frozen=True)
class Yardstick:
    alpha: float = 0.01
    restart_s: float = 1200.0
    look_s: float = 30.0
    min_conversations: int = 30  # per arm, before the asymptotic mean test looks
    tau_quality: float = 0.04
    tau_latency: float = 0.1

    def rollback(self, path: Path) -> tuple[float, str] | None:
        tr = load_turns(path)
        if tr is None or not len(tr.ts):
            return None
        return self.judge(tr)

    def judge(self, tr: Turns) -> tuple[float, str] | None:
        n = len(tr.ts)
        base = ~tr.treat
        lat = tr.latency
        q95 = float(np.nanquantile(lat[base][:_TAIL_TURNS], 0.95)) if base.any() else math.inf
        fields: list[np.ndarray] = [_first_event(tr.conv, np.ones(n, bool))]  # conversations
        fields.append(_mean_deltas(tr.conv, tr.quality))
        fields.append(_mean_deltas(tr.conv, np.log(np.maximum(lat, 1e-3))))
        for hit in (tr.escalated, tr.error, tr.compliance, np.nan_to_num(lat) > q95):
            fields.append(_first_event(tr.conv, hit))
        x = np.column_stack([f if f.ndim == 2 else f[:, None] for f in fields])  # (turn, 1 + 6 + 6 + 4)
        rho_vals, stratum = np.unique(tr.rho, return_inverse=True)
        n_r = len(rho_vals)
        # slices: 0 = all, then every value of every key
        slice_cols = [np.zeros(n, np.int64)]
        names = ["all"]
        at = 1
        for k, vals in tr.seg_values.items():
            slice_cols.append(at + tr.seg[k])
            names += [f"{k}={v}" for v in vals]
            at += len(vals)
        n_sl = at
        metrics = ["quality", "latency", "escalation", "error", "compliance", "latency_p95"]
        alpha_row = self.alpha / (len(metrics) * n_sl)
        conv_first = np.full(tr.conv.max() + 1, np.inf)
        np.minimum.at(conv_first, tr.conv, tr.ts)
        started = conv_first[tr.conv] - tr.start_ts
        end = float(tr.ts.max())
        looks = tr.start_ts + self.look_s * np.arange(1, int((end - tr.start_ts) // self.look_s) + 1)
        look_of = np.searchsorted(looks, tr.ts, side="left")  # turn joins the first look at or after it
        n_looks = len(looks)
        n_tests = int((end - tr.start_ts) // self.restart_s) + 1
        # One pass over the turns: per (epoch the conversation started in, look, slice, stratum x arm)
        # cell, each field summed with bincount (np.add.at: ~10x slower); test j sees the
        # conversations of epochs j, j+1, ...: suffix sums over epochs, then cumulative over looks.
        bounds = self.restart_s * np.arange(n_tests)
        epoch = np.searchsorted(bounds, started, side="right") - 1  # started >= bounds[epoch]
        sel = look_of < n_looks
        cells = n_r * 2
        cell = ((epoch * n_looks + look_of) * n_sl) * cells + stratum * 2 + tr.treat
        at_cell = np.concatenate([(cell + sc * cells)[sel] for sc in slice_cols])
        xs = np.tile(x[sel], (len(slice_cols), 1))
        size = n_tests * n_looks * n_sl * cells
        table = np.stack(
            [np.bincount(at_cell, weights=xs[:, f], minlength=size) for f in range(x.shape[1])], -1
        )
        table = table.reshape(n_tests, n_looks, n_sl, n_r, 2, -1)
        table = np.cumsum(np.cumsum(table[::-1], axis=0)[::-1], axis=1)
        best: tuple[float, str] | None = None
        for j in range(n_tests):
            s_j = j * self.restart_s
            a_j = alpha_row * 6 / (math.pi**2 * (j + 1) ** 2)
            hit = self._reject(table[j], rho_vals, math.log(1 / a_j), j)
            if hit is not None:
                k, what = hit
                why = f"{what[0]} in {names[what[1]]} (test restarted at {s_j / 60:.0f} min)"
                stop = (float(looks[k]), why)
                if best is None or stop[0] < best[0]:
                    best = stop
        return best

    def _reject(self, t: np.ndarray, rhos: np.ndarray, thr: float, j: int) -> tuple[int, Any] | None:
        """First look (and metric, slice) where a test's e-value reaches exp(thr)."""
        conv = t[..., 0]  # (look, slice, stratum, arm)
        enough = (conv.sum(axis=2) >= self.min_conversations).all(axis=-1)  # (look, slice)
        out: list[tuple[int, tuple[str, int]]] = []
        for name, col, tau, sign in (
            ("quality", 1, self.tau_quality, -1.0),
            ("latency", 7, self.tau_latency, 1.0),
        ):
            a = t[..., col : col + _MEAN_FIELDS]
            diff, var = stratified_difference(a[..., 1, :], a[..., 0, :])  # (look, slice)
            le = np.where(enough, msprt_log_evalue(sign * diff, var, tau), 0.0)
            out += _first(le >= thr, name)
        alts = np.asarray(FAIL_GRID)
        for name, col in (("escalation", 13), ("error", 14), ("compliance", 15), ("latency_p95", 16)):
            le = rate_log_evalue(t[..., 1, col], t[..., 0, col], rhos, 1.0, alts)
            out += _first(le >= thr, name)
        return min(out) if out else None


def _first(crossed: np.ndarray, name: str) -> list[tuple[int, tuple[str, int]]]:
    if not crossed.any():
        return []
    k, s = np.argwhere(crossed)[0]
    return [(int(k), (name, int(s)))]
