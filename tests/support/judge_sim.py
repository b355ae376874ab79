"""Seeded numpy traffic for the judge tests (turn objects with watcher.contract.Turn's attributes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

T0 = 1_795_766_400.0
INTENTS = np.array(["billing", "tech", "sales", "other"])
INTENT_P = [0.3, 0.4, 0.2, 0.1]
LANGS = np.array(["en", "de"])


@dataclass(slots=True)
class T:
    ts: float
    conversation_id: str
    arm: str
    segment: dict[str, str]
    latency_ms: float | None
    quality: float | None
    escalated: bool
    error: bool
    compliance_violation: bool
    agent_id: str = "bot"
    environment: str = "prod"
    version: str = "v1"
    turn: int = 0


@dataclass
class Scenario:
    hours: float = 2.0
    conv_per_min: float = 60.0
    weight: Callable[[np.ndarray], np.ndarray] = field(default=lambda t: np.full(np.shape(t), 0.2))
    turns_mean: float = 3.0
    z_sd: float = 0.08  # conversation latent (within-conversation correlation)
    drift: float = 0.0  # time-of-day amplitude moving both arms
    p_escalation: float = 0.06
    p_error_turn: float = 0.0015
    p_compliance_turn: float = 0.0005
    # regressions on the canary from `onset_h` on
    onset_h: float = 0.0
    quality_shift: float = 0.0
    quality_segment: str | None = None  # intent value the quality shift is limited to
    quality_ramp: bool = False  # shift grows linearly from onset to the end
    escalation_add: float = 0.0
    latency_factor: float = 1.0
    slow_tail: float = 0.0  # share of canary turns 5x slower
    error_factor: float = 1.0
    compliance_factor: float = 1.0
    canary_share_bias: float = 1.0  # SRM: canary conversations kept with this probability


def generate(sc: Scenario, seed: int, batch_s: float = 60.0) -> Iterator[tuple[list[T], list[str], float]]:
    """Yields one batch per ``batch_s`` of event time: (turns, arms, canary weight then)."""
    rng = np.random.default_rng(seed)
    minutes = int(sc.hours * 60)
    n_conv = rng.poisson(sc.conv_per_min * minutes)
    start = np.sort(rng.uniform(0, minutes * 60, n_conv))
    w = sc.weight(start)
    canary = rng.random(n_conv) < w
    keep = ~canary | (rng.random(n_conv) < sc.canary_share_bias)
    start, canary = start[keep], canary[keep]
    n_conv = len(start)
    z = rng.normal(0, 1, n_conv)
    intent = rng.choice(4, n_conv, p=INTENT_P)
    lang = rng.choice(2, n_conv, p=[0.7, 0.3])
    nt = 1 + rng.poisson(sc.turns_mean - 1, n_conv)
    conv = np.repeat(np.arange(n_conv), nt)
    j = np.concatenate([np.arange(k) for k in nt])
    ts = start[conv] + 20.0 * j
    nturn = len(ts)
    day = np.sin(2 * np.pi * ts / (6 * 3600))  # a compressed "day" so drifts show within hours
    cz, can = z[conv], canary[conv]
    active = can & (ts >= sc.onset_h * 3600)
    q = 0.8 + sc.z_sd * cz + 0.08 * rng.normal(0, 1, nturn) - sc.drift * 0.1 * day
    shift = np.full(nturn, sc.quality_shift)
    if sc.quality_ramp:
        shift = shift * np.clip((ts - sc.onset_h * 3600) / (sc.hours * 3600 - sc.onset_h * 3600), 0, 1)
    if sc.quality_segment is not None:
        shift = np.where(INTENTS[intent[conv]] == sc.quality_segment, shift, 0.0)
    q = np.clip(q + np.where(active, shift, 0.0), 0, 1)
    lat = np.exp(np.log(400) + 3 * sc.z_sd * cz + 0.4 * rng.normal(0, 1, nturn) + sc.drift * 0.3 * day)
    lat = lat * np.where(active, sc.latency_factor, 1.0)
    slow = rng.random(nturn) < sc.slow_tail
    lat = np.where(active & slow, lat * 5, lat)
    mult = 1 + sc.drift * 0.5 * day
    last = j == nt[conv] - 1
    p_esc = np.clip(sc.p_escalation * np.exp(0.3 * cz) * mult + np.where(active, sc.escalation_add, 0), 0, 1)
    esc = last & (rng.random(nturn) < p_esc)
    err = rng.random(nturn) < sc.p_error_turn * mult * np.where(active, sc.error_factor, 1.0)
    comp = rng.random(nturn) < sc.p_compliance_turn * mult * np.where(active, sc.compliance_factor, 1.0)
    order = np.argsort(ts, kind="stable")
    minute = (ts[order] // batch_s).astype(int)
    bounds = np.searchsorted(minute, np.arange(int(minute.max()) + 2)) if nturn else np.zeros(1, int)
    seg_cache = {
        (a, b): {"intent": str(INTENTS[a]), "language": str(LANGS[b])} for a in range(4) for b in range(2)
    }
    cids = [f"c{seed}-{i}" for i in range(n_conv)]
    for mnt in range(len(bounds) - 1):
        idx = order[bounds[mnt] : bounds[mnt + 1]]
        if not len(idx):
            continue
        c = conv[idx]
        turns = [
            T(T0 + t, cids[ci], "canary" if k else "baseline", seg_cache[(a, b)], la, qu, e, r, m)
            for t, ci, k, a, b, la, qu, e, r, m in zip(
                ts[idx].tolist(),
                c.tolist(),
                can[idx].tolist(),
                intent[c].tolist(),
                lang[c].tolist(),
                lat[idx].tolist(),
                q[idx].tolist(),
                esc[idx].tolist(),
                err[idx].tolist(),
                comp[idx].tolist(),
            )
        ]
        yield turns, [t.arm for t in turns], float(sc.weight(np.asarray(mnt * batch_s)))
