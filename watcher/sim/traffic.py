"""Seeded, reproducible contact-center telemetry: a ``Scenario`` in, ``watcher.turn/v1`` turns and
deployment markers out.

Used by the demo, the tests and both benchmarks, so it has to be deterministic and fast. Time is
cut into blocks; each block draws its conversations with numpy (arrival, arm, segment, number of
turns, a conversation-level latent), expands them into turns, applies the injected regressions
and merges the turns with those still pending from earlier blocks, so that events leave in
non-decreasing ``ts`` order while conversations interleave. Encoding is one preformatted f-string
per event (JSON-quoted constants are prepared once), ~5x cheaper than building dicts.

Common random numbers: every draw is made whether or not a regression uses it, so a scenario and
the same scenario with a regression (same seed) share their traffic and differ only where the
regression acts. That makes paired detection benchmarks much less noisy.

The model (docs/simulator.md has the numbers): a conversation has a latent "difficulty" ``z`` that
lowers quality, raises latency and escalation propensity for all its turns (turns of one
conversation are correlated, as real ones are); latency is lognormal by channel; escalation hands
the customer to a human, ends the conversation, and is likelier on later turns.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec
import numpy as np

from watcher.sim.scenario import ARMS, Metric, Mode, Regression, Scenario, Shape

__all__ = ["blocks", "generate", "timed_blocks"]

# Segment effects, applied when the key/value exists: cancellations are hard and want a human.
_QUALITY_OFFSET = {
    ("intent", "cancellation"): -0.06,
    ("intent", "tech_support"): -0.03,
    ("intent", "sales"): 0.02,
    ("language", "de"): -0.01,
    ("language", "fr"): -0.015,
    ("language", "es"): -0.02,
    ("channel", "voice"): -0.02,
}
_ESCALATION_FACTOR = {("intent", "cancellation"): 2.5, ("intent", "billing"): 1.2, ("channel", "voice"): 1.3}
_LATENCY_MEDIAN_MS = {"voice": 600.0, "chat": 350.0}
_LATENCY_DEFAULT_MS = 450.0
_THINK_MEDIAN_S = {"voice": 4.0, "chat": 9.0}
_BLOCK_CONVERSATIONS = 2000  # conversations per block: large enough to amortise numpy calls


def _cycle(s: Scenario, t: np.ndarray) -> np.ndarray:
    """Time-of-day factor in [-1, 1], peaking at noon UTC; zero without a daily cycle."""
    if not s.daily_cycle:
        return np.zeros_like(t)
    phase = np.mod(s.start_ts + t, s.cycle_period_s) / s.cycle_period_s
    return np.sin(2 * np.pi * phase - np.pi / 2)


def _weight_at(s: Scenario, t: np.ndarray) -> np.ndarray:
    w = np.full(t.shape, s.canary_weight)
    for at, weight in sorted(s.weight_steps):
        w[t >= at] = weight
    return w


class _Plan:
    """Constants derived once per scenario: segment tables, JSON fragments, arm profiles."""

    def __init__(self, s: Scenario) -> None:
        self.keys = list(s.segments)
        self.values = [list(s.segments[k]) for k in self.keys]
        self.sizes = [len(v) for v in self.values]
        after = s.mix_after or {}
        self.cum = [self._cum(s.segments[k], v) for k, v in zip(self.keys, self.values)]
        self.cum_after = [
            self._cum(after[k], v) if k in after else c for k, v, c in zip(self.keys, self.values, self.cum)
        ]
        n_combo = math.prod(self.sizes)
        codes = np.arange(n_combo)
        per_key = []  # code of each key's value for every combination (mixed radix)
        for size in reversed(self.sizes):
            per_key.append(codes % size)
            codes = codes // size
        self.combo_codes = list(reversed(per_key))
        enc = msgspec.json.encode
        self.seg_json = []
        self.q_offset = np.zeros(n_combo)
        self.esc_factor = np.ones(n_combo)
        self.lat_median = np.full(n_combo, _LATENCY_DEFAULT_MS)
        self.think = np.full(n_combo, 6.0)
        for c in range(n_combo):
            pairs = {k: self.values[i][self.combo_codes[i][c]] for i, k in enumerate(self.keys)}
            self.seg_json.append(enc(pairs).decode())
            for pair in pairs.items():
                self.q_offset[c] += _QUALITY_OFFSET.get(pair, 0.0)
                self.esc_factor[c] *= _ESCALATION_FACTOR.get(pair, 1.0)
            channel = pairs.get("channel", "")
            self.lat_median[c] = _LATENCY_MEDIAN_MS.get(channel, _LATENCY_DEFAULT_MS)
            self.think[c] = _THINK_MEDIAN_S.get(channel, 6.0)
        profiles = (s.baseline, s.canary or s.baseline)
        self.profile = {f: np.array([getattr(p, f) for p in profiles]) for f in vars(s.baseline)}
        version = [enc(s.baseline_version).decode(), enc(s.canary_version).decode()]
        arm = ['"baseline"', '"canary"'] if s.explicit_arms else ["null", "null"]
        extra = ["", ""]
        if s.strategy == "shadow":
            arm = ['"live"', '"shadow"'] if s.explicit_arms else ["null", "null"]
        elif s.strategy == "blue_green":
            arm = ["null", "null"]  # explicit canary arms before the switch marker would auto-start a canary
        elif s.strategy == "flag":
            version = [version[0], version[0]]
            arm = ["null", "null"]
            name = enc(s.flag_name).decode()
            extra = [f'"flags":{{{name}:{enc(v).decode()}}},' for v in s.flag_variants]
        if s.arm_label is not None:
            arm = [enc(s.arm_label).decode() if s.arm_label else "null"] * 2
        self.arm_segment = [
            f'"version":{version[a]},"arm":{arm[a]},"segment":{seg},{extra[a]}'
            for a in (0, 1)
            for seg in self.seg_json
        ]
        self.head = '{"schema":"watcher.turn/v1","event_id":"'
        self.agent_env = (
            f'"agent_id":{enc(s.agent_id).decode()},"environment":{enc(s.environment).decode()},'
            '"conversation_id":"'
        )
        self.prefix = (
            s.id_prefix
            if s.id_prefix is not None
            else "c" + hashlib.blake2b(str(s.seed).encode(), digest_size=4).hexdigest() + "-"
        )

    @staticmethod
    def _cum(dist: Mapping[str, float], values: list[str]) -> np.ndarray:
        p = np.array([dist.get(v, 0.0) for v in values], dtype=float)  # in the order of the codes
        return np.cumsum(p / p.sum())

    def segment_mask(self, combo: np.ndarray, segment: Mapping[str, str] | None) -> np.ndarray:
        mask = np.ones(combo.shape, dtype=bool)
        for key, value in (segment or {}).items():
            i = self.keys.index(key)
            mask &= self.combo_codes[i][combo] == self.values[i].index(value)
        return mask


def _group_cumsum(x: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum of ``x`` within consecutive groups."""
    c = np.cumsum(x)
    before = np.concatenate(([0.0], c))[starts]
    return c - np.repeat(before, counts)


def _ramp(r: Regression, t: np.ndarray) -> np.ndarray:
    if r.shape is Shape.STEP:
        return (t >= r.start_s).astype(float)
    return np.clip((t - r.start_s) / r.ramp_s, 0.0, 1.0)


def _block(
    s: Scenario, plan: _Plan, rng: np.random.Generator, t0: float, t1: float, first_conv: int
) -> tuple[dict[str, np.ndarray], int]:
    """Draw the conversations starting in [t0, t1): their turns as columns, and their number."""
    rate = s.conversations_per_s * (1 + 0.5 * _cycle(s, np.array([(t0 + t1) / 2]))[0])
    n = int(rng.poisson(rate * (t1 - t0)))
    start = t0 + np.sort(rng.uniform(0.0, t1 - t0, n))
    arm = (rng.random(n) < _weight_at(s, start)).astype(np.int8)
    if s.strategy == "shadow":
        arm[:] = 0  # every conversation is live on the baseline; the canary answers shadow copies
    elif s.strategy == "blue_green":
        arm = (start >= s.switch_s).astype(np.int8)
    keep_conv = ~((arm == 1) & (rng.random(n) < s.srm_drop))
    late_mix = start >= s.mix_change_s if s.mix_change_s is not None else np.zeros(n, dtype=bool)
    combo = np.zeros(n, dtype=np.int64)
    for i in range(len(plan.keys)):
        u = rng.random(n)
        code = np.where(
            late_mix,
            np.searchsorted(plan.cum_after[i], u, side="right"),
            np.searchsorted(plan.cum[i], u, side="right"),
        )
        combo = combo * plan.sizes[i] + np.minimum(code, plan.sizes[i] - 1)
    z = rng.standard_normal(n) * s.conversation_effect
    n_turns = np.minimum(rng.geometric(1.0 / s.mean_turns, n), s.max_turns)

    total = int(n_turns.sum())
    conv = np.repeat(np.arange(n), n_turns)
    starts = np.cumsum(n_turns) - n_turns
    k = np.arange(total) - np.repeat(starts, n_turns)
    c_arm, c_combo, c_z = arm[conv], combo[conv], z[conv]
    eps_lat, eps_q = rng.standard_normal(total), rng.standard_normal(total)
    think = plan.think[c_combo] * np.exp(0.6 * rng.standard_normal(total))
    u_esc, u_err, u_comp, u_tail, u_judged = (rng.random(total) for _ in range(5))
    tokens_out = np.rint(110 * np.exp(0.6 * rng.standard_normal(total))).astype(np.int64) + 1
    tokens_in = 250 + 180 * k + np.rint(200 * np.exp(0.5 * rng.standard_normal(total))).astype(np.int64)

    prof = plan.profile
    log_lat = (
        np.log(plan.lat_median[c_combo] * prof["latency_factor"][c_arm])
        + 0.1 * c_z
        + 0.4 * eps_lat
        + 0.25 * (np.log(tokens_out) - math.log(110))
    )
    gap = np.exp(log_lat) / 1000 + think
    t_nom = start[conv] + _group_cumsum(gap, starts, n_turns) - think  # answer time without regressions
    cyc = _cycle(s, t_nom)
    log_lat = log_lat + 0.1 * cyc  # peak hours are slower for everyone
    quality = prof["quality_mean"][c_arm] + plan.q_offset[c_combo] - 0.06 * c_z - 0.02 * cyc + 0.08 * eps_q
    hazard = np.minimum(1 + 0.5 * k, 4.0)  # customers give up on the bot late, not at the greeting
    p_esc = (
        prof["escalation_rate"][c_arm]
        * hazard
        * plan.esc_factor[c_combo]
        * np.exp(0.5 * c_z - 0.125 * s.conversation_effect**2)
        * (1 + 0.25 * cyc)
    )
    p_err = prof["error_rate"][c_arm] * np.exp(0.3 * c_z - 0.045 * s.conversation_effect**2)
    p_comp = prof["compliance_rate"][c_arm] * np.ones(total)
    slow = np.ones(total)
    probs = {Metric.ESCALATION: p_esc, Metric.ERROR: p_err, Metric.COMPLIANCE: p_comp}
    for r in s.regressions:
        affected = np.isin(c_arm, [ARMS.index(a) for a in r.arms]) & plan.segment_mask(c_combo, r.segment)
        f = _ramp(r, t_nom) * affected
        if r.metric is Metric.QUALITY:
            quality += r.size * f
        elif r.metric is Metric.LATENCY:
            change = r.size * f if r.mode is Mode.ADD else (r.size - 1) * f
            log_lat += np.log1p(change)
        elif r.metric is Metric.LATENCY_TAIL:
            slow = np.where(u_tail < r.size * f, slow * r.slow_factor, slow)
        else:
            p = probs[Metric(r.metric)]  # in place: the arrays in ``probs`` are p_esc, p_err, p_comp
            if r.mode is Mode.MULTIPLY:
                p *= 1 + (r.size - 1) * f
            else:
                p += r.size * f
    latency = np.exp(log_lat) * slow
    ts = start[conv] + _group_cumsum(latency / 1000 + think, starts, n_turns) - think
    escalated = u_esc < p_esc
    error = u_err < p_err
    quality = np.where(error | (u_judged >= s.judged_fraction), np.nan, np.clip(quality, 0.0, 1.0))
    # Escalation hands the customer to a human: the conversation's later turns never happen.
    esc_before = _group_cumsum(escalated.astype(float), starts, n_turns) - escalated
    keep = (esc_before == 0) & keep_conv[conv] & (ts < s.duration_s)
    raw_tokens_out = tokens_out
    tokens_out = np.where(error, 0, tokens_out)
    cost = tokens_in * 2.5e-6 + tokens_out * 1e-5
    out = {
        "ms": np.floor(s.start_ts * 1000 + ts * 1000).astype(np.int64)[keep],
        "conv": (conv + first_conv)[keep],
        "k": k[keep],
        "arm": c_arm[keep],
        "seg": c_combo[keep],
        "lat": np.round(latency, 1)[keep],
        "q": np.round(quality, 3)[keep],
        "esc": escalated[keep],
        "err": error[keep],
        "comp": (u_comp < p_comp)[keep],
        "tin": tokens_in[keep],
        "tout": tokens_out[keep],
        "cost": np.round(cost, 6)[keep],
        "sh": np.zeros(int(keep.sum()), np.int8),
    }
    if s.strategy == "shadow":
        request = ts - latency / 1000  # the shadow answers the same request as the live turn
        mirrored = keep
        if s.shadow_share < 1:  # drawn only then: a fully mirrored stream stays byte-identical
            mirrored = keep & (rng.random(n) < s.shadow_share)[conv]
        shadow = _shadow_rows(
            s,
            plan,
            rng,
            c_combo,
            c_z,
            k,
            t_nom,
            cyc,
            eps_lat,
            eps_q,
            raw_tokens_out,
            tokens_in,
            request,
            mirrored,
        )
        shadow["conv"] = (conv + first_conv)[shadow.pop("at")]
        out = {c: np.concatenate((out[c], shadow[c])) for c in out}
    return out, n


def _shadow_rows(
    s: Scenario,
    plan: _Plan,
    rng: np.random.Generator,
    c_combo: np.ndarray,
    c_z: np.ndarray,
    k: np.ndarray,
    t_nom: np.ndarray,
    cyc: np.ndarray,
    eps_lat: np.ndarray,
    eps_q: np.ndarray,
    tokens_out: np.ndarray,
    tokens_in: np.ndarray,
    request: np.ndarray,
    keep: np.ndarray,
) -> dict[str, np.ndarray]:
    """The canary version's answers to the kept live turns (same request, same customer, own noise).

    Drawn after every live draw, so the live stream of a shadow scenario is the one of the same
    scenario without shadowing. A shadow escalation ends nothing: the customer never saw it.
    """
    total = len(k)
    rho = s.shadow_shared_noise
    e_lat = rho * eps_lat + math.sqrt(1 - rho * rho) * rng.standard_normal(total)
    e_q = rho * eps_q + math.sqrt(1 - rho * rho) * rng.standard_normal(total)
    u_esc, u_err, u_comp, u_tail, u_judged, u_drop = (rng.random(total) for _ in range(6))
    prof = {f: v[1] for f, v in plan.profile.items()}
    log_lat = (
        np.log(plan.lat_median[c_combo] * prof["latency_factor"])
        + 0.1 * c_z
        + 0.4 * e_lat
        + 0.25 * (np.log(tokens_out) - math.log(110))
        + 0.1 * cyc
    )
    quality = prof["quality_mean"] + plan.q_offset[c_combo] - 0.06 * c_z - 0.02 * cyc + 0.08 * e_q
    hazard = np.minimum(1 + 0.5 * k, 4.0)
    p_esc = (
        prof["escalation_rate"]
        * hazard
        * plan.esc_factor[c_combo]
        * np.exp(0.5 * c_z - 0.125 * s.conversation_effect**2)
        * (1 + 0.25 * cyc)
    )
    p_err = prof["error_rate"] * np.exp(0.3 * c_z - 0.045 * s.conversation_effect**2)
    p_comp = prof["compliance_rate"] * np.ones(total)
    slow = np.ones(total)
    probs = {Metric.ESCALATION: p_esc, Metric.ERROR: p_err, Metric.COMPLIANCE: p_comp}
    for r in s.regressions:
        if "canary" not in r.arms:
            continue
        f = _ramp(r, t_nom) * plan.segment_mask(c_combo, r.segment)
        if r.metric is Metric.QUALITY:
            quality += r.size * f
        elif r.metric is Metric.LATENCY:
            log_lat += np.log1p(r.size * f if r.mode is Mode.ADD else (r.size - 1) * f)
        elif r.metric is Metric.LATENCY_TAIL:
            slow = np.where(u_tail < r.size * f, slow * r.slow_factor, slow)
        else:
            p = probs[Metric(r.metric)]
            if r.mode is Mode.MULTIPLY:
                p *= 1 + (r.size - 1) * f
            else:
                p += r.size * f
    latency = np.exp(log_lat) * slow
    ts = request + latency / 1000
    error = u_err < p_err
    quality = np.where(error | (u_judged >= s.judged_fraction), np.nan, np.clip(quality, 0.0, 1.0))
    sel = keep & (u_drop >= s.shadow_drop) & (ts < s.duration_s)
    t_out = np.where(error, 0, tokens_out)
    cost = tokens_in * 2.5e-6 + t_out * 1e-5
    return {
        "ms": np.floor(s.start_ts * 1000 + ts * 1000).astype(np.int64)[sel],
        "at": np.flatnonzero(sel),
        "k": k[sel],
        "arm": np.ones(int(sel.sum()), np.int8),
        "seg": c_combo[sel],
        "lat": np.round(latency, 1)[sel],
        "q": np.round(quality, 3)[sel],
        "esc": (u_esc < p_esc)[sel],
        "err": error[sel],
        "comp": (u_comp < p_comp)[sel],
        "tin": tokens_in[sel],
        "tout": t_out[sel],
        "cost": np.round(cost, 6)[sel],
        "sh": np.ones(int(sel.sum()), np.int8),
    }


_QUALITY_TEXT = [f"{i / 1000}" for i in range(1001)] + ["null"]  # quality has 3 decimals: 1002 strings
_MS_TEXT = [f".{i:03d}Z" for i in range(1000)]
_SUFFIX_TEXT = ["", "-shadow"]  # event id suffix of shadow turns (live turns keep "{conversation}-{turn}")
_FLAGS_TEXT = [
    f'"escalated":{e},"error":{r},"compliance_violation":{c},'
    for e in ("false", "true")
    for r in ("false", "true")
    for c in ("false", "true")
]


def _format(plan: _Plan, cols: dict[str, np.ndarray], sec_cache: dict[int, str]) -> list[str]:
    # Per event Python work is the cost: floats are written from integers (tenths of ms,
    # micro-dollars, a table for quality; float repr costs ~350 ns a number) and every field with
    # few values (arm x segment, the three flags, milliseconds) is one lookup in a table of fragments.
    ms = cols["ms"]
    secs = (ms // 1000).tolist()
    for sec in set(secs) - sec_cache.keys():
        sec_cache[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    lat10 = np.rint(cols["lat"] * 10).astype(np.int64)
    micro = np.rint(cols["cost"] * 1e6).astype(np.int64)
    q = cols["q"]
    q_code = np.where(np.isnan(q), 1001, np.rint(np.nan_to_num(q) * 1000)).astype(np.int64)
    arm_seg = cols["arm"].astype(np.int64) * len(plan.seg_json) + cols["seg"]
    flags = cols["esc"].astype(np.int64) * 4 + cols["err"].astype(np.int64) * 2 + cols["comp"]
    head, ae, pre, vas = plan.head, plan.agent_env, plan.prefix, plan.arm_segment
    qt, mt, ft, sx = _QUALITY_TEXT, _MS_TEXT, _FLAGS_TEXT, _SUFFIX_TEXT
    return [
        f'{head}{pre}{c}-{k}{sx[sh]}","ts":"{sec_cache[sc]}{mt[fr]}",{ae}{pre}{c}","turn":{k},{vas[v]}'
        f'"latency_ms":{li}.{lf},"quality":{qt[qc]},{ft[fl]}"tokens_in":{ti},"tokens_out":{to},'
        f'"cost_usd":{ci}.{cf:06d}}}'
        for sc, fr, c, k, sh, v, li, lf, qc, fl, ti, to, ci, cf in zip(
            secs,
            (ms % 1000).tolist(),
            cols["conv"].tolist(),
            cols["k"].tolist(),
            cols["sh"].tolist(),
            arm_seg.tolist(),
            (lat10 // 10).tolist(),
            (lat10 % 10).tolist(),
            q_code.tolist(),
            flags.tolist(),
            cols["tin"].tolist(),
            cols["tout"].tolist(),
            (micro // 1_000_000).tolist(),
            (micro % 1_000_000).tolist(),
        )
    ]


def _markers(s: Scenario, plan: _Plan) -> list[tuple[int, str]]:
    if not s.emit_markers:
        return []
    base: dict[str, Any] = {
        "schema": "watcher.deployment/v1",
        "agent_id": s.agent_id,
        "environment": s.environment,
        "strategy": s.strategy,
        "baseline_version": s.baseline_version,
        "canary_version": s.canary_version,
        "actor": "watcher-simulate",
    }
    start, weight = 0.0, s.canary_weight
    if s.strategy == "flag":
        base["canary_version"] = None
        base["flag"] = {"name": s.flag_name, "control": s.flag_variants[0], "treatment": s.flag_variants[1]}
    elif s.strategy in ("shadow", "blue_green"):
        start, weight = (s.switch_s if s.strategy == "blue_green" else 0.0), 1.0
    steps = [(start, "started", weight)] + [
        (at, "weight_changed", w)
        for at, w in sorted(s.weight_steps)
        if at < s.duration_s and s.strategy in ("canary", "flag")
    ]
    out = []
    for i, (at, action, weight) in enumerate(steps):
        ms = math.floor(s.start_ts * 1000 + at * 1000)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
        d = {**base, "event_id": f"{plan.prefix}dep-{i}", "ts": ts, "action": action, "canary_weight": weight}
        out.append((ms, msgspec.json.encode(d).decode()))
    return out


def blocks(s: Scenario) -> Iterator[tuple[list[str], set[int]]]:
    """Blocks of encoded events in ``ts`` order, with the positions of the deployment markers."""
    for lines, _, positions in timed_blocks(s):
        yield lines, positions


def timed_blocks(s: Scenario) -> Iterator[tuple[list[str], np.ndarray, set[int]]]:
    """``blocks`` with each line's event time in Unix milliseconds (what a merge of streams sorts by)."""
    plan = _Plan(s)
    rng = np.random.default_rng(s.seed)
    markers = _markers(s, plan)
    block_s = min(max(_BLOCK_CONVERSATIONS / (1.5 * s.conversations_per_s), 0.5), s.max_block_s)
    pending: dict[str, np.ndarray] | None = None
    sec_cache: dict[int, str] = {}
    t0, first_conv = 0.0, 0
    while t0 < s.duration_s:
        t1 = min(t0 + block_s, s.duration_s)
        new, n_conv = _block(s, plan, rng, t0, t1, first_conv)
        first_conv += n_conv
        cols = new if pending is None else {c: np.concatenate((pending[c], new[c])) for c in new}
        order = np.argsort(cols["ms"], kind="stable")
        cols = {c: v[order] for c, v in cols.items()}
        # Conversations of later blocks answer after t1: everything before t1 is final.
        boundary = math.floor(s.start_ts * 1000 + t1 * 1000) if t1 < s.duration_s else np.iinfo(np.int64).max
        cut = int(np.searchsorted(cols["ms"], boundary, side="left"))
        pending = {c: v[cut:] for c, v in cols.items()}
        lines = _format(plan, {c: v[:cut] for c, v in cols.items()}, sec_cache)
        due = [m for m in markers if m[0] < boundary]
        markers = markers[len(due) :]
        positions: set[int] = set()
        times = cols["ms"][:cut]
        if due:
            at = np.searchsorted(times, [ms for ms, _ in due], side="left")
            for shift, ((_, line), pos) in enumerate(zip(due, at.tolist())):
                lines.insert(pos + shift, line)
                positions.add(pos + shift)
            times = np.insert(times, at, [ms for ms, _ in due])
        if lines:
            yield lines, times, positions
        t0 = t1


def generate(scenario: Scenario) -> Iterator[bytes]:
    """Every event of the scenario as one JSON object (no newline), in non-decreasing ``ts`` order."""
    for lines, _ in blocks(scenario):
        for line in lines:
            yield line.encode()
