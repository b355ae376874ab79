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

import math
from collections.abc import Iterator

import numpy as np

from watcher.sim.plan import Plan, format_turns, marker_lines
from watcher.sim.scenario import ARMS, Metric, Mode, Regression, Scenario, Shape

__all__ = ["blocks", "generate", "timed_blocks"]

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
    s: Scenario, plan: Plan, rng: np.random.Generator, t0: float, t1: float, first_conv: int
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
    plan: Plan,
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


def blocks(s: Scenario) -> Iterator[tuple[list[str], set[int]]]:
    """Blocks of encoded events in ``ts`` order, with the positions of the deployment markers."""
    for lines, _, positions in timed_blocks(s):
        yield lines, positions


def timed_blocks(s: Scenario) -> Iterator[tuple[list[str], np.ndarray, set[int]]]:
    """``blocks`` with each line's event time in Unix milliseconds (what a merge of streams sorts by)."""
    plan = Plan(s)
    rng = np.random.default_rng(s.seed)
    markers = marker_lines(s, plan)
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
        lines = format_turns(plan, {c: v[:cut] for c, v in cols.items()}, sec_cache)
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
