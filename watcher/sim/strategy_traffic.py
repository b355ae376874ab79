"""Seeded numpy traffic for the strategy judges: shadow pairs, a blue-green switch, flag variants.

Turn objects carry ``watcher.contract.Turn``'s attributes; batches are (turns, arms) as the engine would
resolve them. Small and fast, so tests can run hundreds of null runs (the JSON simulator,
``watcher.sim.simulate``, is what the replay tests use).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

T0 = 1_795_766_400.0  # 2026-11-27T08:00:00Z
INTENTS = ("billing", "tech", "sales", "other")


@dataclass(slots=True)
class T:
    ts: float
    conversation_id: str
    turn: int
    version: str
    segment: dict[str, str]
    latency_ms: float | None
    quality: float | None
    escalated: bool
    error: bool
    compliance_violation: bool
    flags: dict[str, str] = field(default_factory=dict)
    agent_id: str = "bot"
    environment: str = "prod"


@dataclass(frozen=True)
class Traffic:
    minutes: float = 60.0
    conv_per_min: float = 60.0
    turns_mean: float = 3.0
    z_sd: float = 1.0  # conversation latent (difficulty): shared by its turns and by a shadow's answers
    mix_sd: float = 0.06  # quality spread between segments (traffic mix)
    p_escalation: float = 0.004
    p_error: float = 0.005
    p_compliance: float = 0.002
    daily_amp: float = (
        0.0  # time-of-day amplitude (quality -0.03*amp, latency +15 %*amp, event rates x(1+25 %*amp) at peak)
    )
    # treatment effects (shadow answers, green after the switch, the flag's treatment)
    quality_shift: float = 0.0
    latency_factor: float = 1.0
    error_factor: float = 1.0
    escalation_factor: float = 1.0
    compliance_factor: float = 1.0
    tail_share: float = (
        0.0  # this share of treated turns is ``tail_factor`` x slower (the simulator's latency_tail)
    )
    tail_factor: float = 4.0
    onset_min: float = 0.0  # blue-green: the effects start this long after the switch (a late regression)
    shared_noise: float = 0.7  # shadow: correlation of a turn's noise with the live answer's


def _conversations(tr: Traffic, rng: np.random.Generator, t0: float, minutes: float) -> dict[str, np.ndarray]:
    n = rng.poisson(tr.conv_per_min * minutes)
    start = t0 + np.sort(rng.uniform(0, minutes * 60, n))
    nt = 1 + rng.poisson(tr.turns_mean - 1, n)
    conv = np.repeat(np.arange(n), nt)
    j = np.arange(len(conv)) - np.repeat(np.cumsum(nt) - nt, nt)
    return {
        "n": np.array(n),
        "start": start,
        "z": rng.normal(0, tr.z_sd, n),
        "intent": rng.integers(0, 4, n),
        "conv": conv,
        "j": j,
        "ts": start[conv] + 15.0 * j,
    }


def _answers(
    tr: Traffic,
    rng: np.random.Generator,
    c: dict[str, np.ndarray],
    treated: np.ndarray,
    eps: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, ...]:
    conv, ts = c["conv"], c["ts"]
    m = len(conv)
    day = np.sin(2 * np.pi * (ts - T0) / 86400.0)
    z = c["z"][conv]
    offset = (np.array([-0.5, -1.0, 1.0, 0.5]) * tr.mix_sd)[c["intent"][conv]]
    e_q, e_l = (rng.standard_normal(m), rng.standard_normal(m)) if eps is None else eps
    q = (
        0.8
        + offset
        - 0.05 * z
        - 0.03 * tr.daily_amp * day
        + 0.08 * e_q
        + np.where(treated, tr.quality_shift, 0.0)
    )
    lat = np.exp(np.log(450) + 0.15 * z + 0.4 * e_l + 0.15 * tr.daily_amp * day) * np.where(
        treated, tr.latency_factor, 1
    )
    if tr.tail_share > 0:  # drawn only then: the other scenarios keep their random streams
        lat = lat * np.where(treated & (rng.random(m) < tr.tail_share), tr.tail_factor, 1.0)
    risk = np.exp(0.4 * z - 0.08) * (1 + 0.25 * tr.daily_amp * day).clip(0.1)  # busier hours, more trouble
    esc = rng.random(m) < tr.p_escalation * risk * np.where(treated, tr.escalation_factor, 1.0)
    err = rng.random(m) < tr.p_error * risk * np.where(treated, tr.error_factor, 1.0)
    comp = rng.random(m) < tr.p_compliance * np.where(treated, tr.compliance_factor, 1.0)
    return np.clip(q, 0, 1), lat, esc, err, comp, e_q, e_l


def _turns(
    c: dict[str, np.ndarray],
    idx: np.ndarray,
    prefix: str,
    version: list[str],
    outs: tuple[np.ndarray, ...],
    ts: np.ndarray,
    flags: list[dict[str, str]] | None = None,
) -> list[T]:
    q, lat, esc, err, comp = outs[:5]
    conv, j, intent = c["conv"], c["j"], c["intent"]
    segs = [{"intent": i} for i in INTENTS]
    return [
        T(t, f"{prefix}{ci}", k, v, segs[intent[ci]], la, qu, e, r, mm, fl)
        for t, ci, k, v, la, qu, e, r, mm, fl in zip(
            ts[idx].tolist(),
            conv[idx].tolist(),
            j[idx].tolist(),
            [version[i] for i in idx.tolist()],
            lat[idx].tolist(),
            q[idx].tolist(),
            esc[idx].tolist(),
            err[idx].tolist(),
            comp[idx].tolist(),
            [flags[i] for i in idx.tolist()] if flags else [{}] * len(idx),
        )
    ]


def _batches(turns: list[T], arms: list[str], batch_s: float) -> Iterator[tuple[list[T], list[str]]]:
    order = sorted(range(len(turns)), key=lambda i: turns[i].ts)
    if not order:
        return
    t0 = turns[order[0]].ts
    cur: list[int] = []
    edge = t0 + batch_s
    for i in order:
        if turns[i].ts >= edge:
            if cur:
                yield [turns[k] for k in cur], [arms[k] for k in cur]
            cur = []
            edge = turns[i].ts - (turns[i].ts - t0) % batch_s + batch_s
        cur.append(i)
    if cur:
        yield [turns[k] for k in cur], [arms[k] for k in cur]


def shadow(
    tr: Traffic, seed: int, *, paired: bool = True, batch_s: float = 60.0, start: float = T0
) -> Iterator[tuple[list[T], list[str]]]:
    """Live turns (arm "live", v1) and shadow copies (arm "shadow", v2) of the same conversations.

    ``paired=False`` gives the unpaired design of the same size: the treatment answers *other*
    conversations (a 50/50 canary), for the sample-size comparison.
    """
    rng = np.random.default_rng(seed)
    c = _conversations(tr, rng, start, tr.minutes)
    m = len(c["conv"])
    p = f"s{seed}-"
    if paired:
        live = _answers(tr, rng, c, np.zeros(m, bool))
        r = tr.shared_noise
        # the shadow's noise shares ``shared_noise`` of the live answer's (quality, latency)
        eps = (
            r * live[5] + np.sqrt(1 - r * r) * rng.standard_normal(m),
            r * live[6] + np.sqrt(1 - r * r) * rng.standard_normal(m),
        )
        sh = _answers(tr, rng, c, np.ones(m, bool), eps)
        idx = np.arange(m)
        turns = _turns(c, idx, p, ["v1"] * m, live, c["ts"]) + _turns(
            c, idx, p, ["v2"] * m, sh, c["ts"] + 0.5
        )
        arms = ["live"] * m + ["shadow"] * m
    else:
        treated = (rng.random(int(c["n"])) < 0.5)[c["conv"]]
        outs = _answers(tr, rng, c, treated)
        turns = _turns(c, np.arange(m), p, ["v2" if t else "v1" for t in treated.tolist()], outs, c["ts"])
        arms = ["canary" if t else "baseline" for t in treated.tolist()]
    yield from _batches(turns, arms, batch_s)


def blue_green(
    tr: Traffic,
    seed: int,
    *,
    history_days: int = 0,
    before_min: float = 60.0,
    history_min: float = 240.0,
    history_conv_per_min: float | None = None,
    batch_s: float = 60.0,
    switch: float = T0 + 86400 * 3,
) -> Iterator[tuple[list[T], list[str], bool]]:
    """Blue (v1) traffic: ``history_days`` previous days from 30 min before the switch's time of day for
    ``history_min`` minutes, then ``before_min``
    minutes before the switch; then green (v2, arm "canary") for ``tr.minutes``. Yields
    (turns, arms, after_switch)."""
    rng = np.random.default_rng(seed)
    blue_tr = Traffic(**{**tr.__dict__, "conv_per_min": history_conv_per_min or tr.conv_per_min})
    p = f"b{seed}-"
    for d in range(history_days, 0, -1):
        c = _conversations(blue_tr, rng, switch - d * 86400 - 1800, history_min)
        outs = _answers(blue_tr, rng, c, np.zeros(len(c["conv"]), bool))
        turns = _turns(c, np.arange(len(c["conv"])), f"{p}d{d}-", ["v1"] * len(c["conv"]), outs, c["ts"])
        for b, a in _batches(turns, ["live"] * len(turns), 600.0):
            yield b, a, False
    c = _conversations(tr, rng, switch - before_min * 60, before_min)
    outs = _answers(tr, rng, c, np.zeros(len(c["conv"]), bool))
    turns = _turns(c, np.arange(len(c["conv"])), f"{p}pre-", ["v1"] * len(c["conv"]), outs, c["ts"])
    for b, a in _batches(turns, ["live"] * len(turns), batch_s):
        yield b, a, False
    c = _conversations(tr, rng, switch, tr.minutes)
    outs = _answers(tr, rng, c, c["ts"] >= switch + 60 * tr.onset_min)
    turns = _turns(c, np.arange(len(c["conv"])), f"{p}post-", ["v2"] * len(c["conv"]), outs, c["ts"])
    for b, a in _batches(turns, ["canary"] * len(turns), batch_s):
        yield b, a, True


def flag(
    tr: Traffic,
    seed: int,
    *,
    share: float = 0.5,
    name: str = "new_prompt",
    batch_s: float = 60.0,
    start: float = T0,
) -> Iterator[tuple[list[T], list[str]]]:
    """One version (v1, arm "baseline" as the registry resolves it); turns carry flags {name: variant}."""
    rng = np.random.default_rng(seed)
    c = _conversations(tr, rng, start, tr.minutes)
    treated_conv = rng.random(int(c["n"])) < share
    treated = treated_conv[c["conv"]]
    outs = _answers(tr, rng, c, treated)
    fl = [{name: "on"}, {name: "off"}]
    flags = [fl[0] if t else fl[1] for t in treated.tolist()]
    m = len(c["conv"])
    turns = _turns(c, np.arange(m), f"f{seed}-", ["v1"] * m, outs, c["ts"], flags)
    yield from _batches(turns, ["baseline"] * m, batch_s)
