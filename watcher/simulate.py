"""Seeded, reproducible contact-center telemetry: ``watcher.turn/v1`` turns and deployment markers.

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

import argparse
import asyncio
import calendar
import hashlib
import math
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from watcher.clock import Clock, SystemClock
from watcher.errors import ConfigError

__all__ = [
    "ArmProfile", "Metric", "Mode", "PRESETS", "STRATEGIES", "STRATEGY_PRESETS", "Regression", "Scenario", "Shape", "add_arguments",
    "expected_outcome", "generate", "parse_regression", "produce", "run", "scenario_from_args",
    "write_jsonl",
]

DEFAULT_START_TS = 1795766400.0  # 2026-11-27T08:00:00Z, the example date of EVENT_SCHEMA.md
SEGMENTS: dict[str, dict[str, float]] = {
    "intent": {"billing": 0.30, "tech_support": 0.35, "cancellation": 0.10, "sales": 0.15, "other": 0.10},
    "language": {"en": 0.60, "de": 0.18, "fr": 0.12, "es": 0.10},
    "channel": {"chat": 0.65, "voice": 0.35},
}
# Segment effects, applied when the key/value exists: cancellations are hard and want a human.
_QUALITY_OFFSET = {("intent", "cancellation"): -0.06, ("intent", "tech_support"): -0.03,
                   ("intent", "sales"): 0.02, ("language", "de"): -0.01, ("language", "fr"): -0.015,
                   ("language", "es"): -0.02, ("channel", "voice"): -0.02}
_ESCALATION_FACTOR = {("intent", "cancellation"): 2.5, ("intent", "billing"): 1.2, ("channel", "voice"): 1.3}
_LATENCY_MEDIAN_MS = {"voice": 600.0, "chat": 350.0}
_LATENCY_DEFAULT_MS = 450.0
_THINK_MEDIAN_S = {"voice": 4.0, "chat": 9.0}
STRATEGIES = ("canary", "shadow", "blue_green", "flag")
_BLOCK_CONVERSATIONS = 2000  # conversations per block: large enough to amortise numpy calls


class Metric(str, Enum):
    QUALITY = "quality"
    LATENCY = "latency"
    LATENCY_TAIL = "latency_tail"
    ESCALATION = "escalation"
    ERROR = "error"
    COMPLIANCE = "compliance"


class Mode(str, Enum):
    ADD = "add"
    MULTIPLY = "multiply"


class Shape(str, Enum):
    STEP = "step"
    GRADUAL = "gradual"


_RATES = (Metric.ESCALATION, Metric.ERROR, Metric.COMPLIANCE)
_ARMS = ("baseline", "canary")


def _freeze(v: Any) -> Any:
    if isinstance(v, Mapping):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    return tuple(_freeze(x) for x in v) if isinstance(v, tuple) else v


def _hash_fields(obj: Any) -> int:
    """Hash of a frozen dataclass with mapping fields (mappings hash by content, like ``==``)."""
    return hash(tuple(_freeze(getattr(obj, f)) for f in obj.__dataclass_fields__))


@dataclass(frozen=True)
class Regression:
    """A change injected into the telemetry of ``arms`` (the canary by default).

    metric        mode=add (default)                      mode=multiply
    quality       mean score += size (e.g. -0.15)         not allowed
    latency       latency × (1 + size) (0.25 = +25 %)     latency × size
    latency_tail  fraction ``size`` of turns × slow_factor  not allowed
    rates         per-turn probability += size            per-turn probability × size

    A turn is affected when its nominal time (scenario seconds) is ≥ ``start_s`` and it belongs to
    ``segment`` (all pairs match; None = every turn). ``gradual`` ramps linearly over ``ramp_s``.
    """

    metric: Metric | str
    size: float
    start_s: float = 0.0
    segment: Mapping[str, str] | None = None
    shape: Shape | str = Shape.STEP
    ramp_s: float = 600.0
    mode: Mode | str = Mode.ADD
    slow_factor: float = 4.0
    arms: tuple[str, ...] = ("canary",)

    __hash__ = _hash_fields

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "metric", Metric(self.metric))
            object.__setattr__(self, "mode", Mode(self.mode))
            object.__setattr__(self, "shape", Shape(self.shape))
        except ValueError as exc:
            raise ConfigError("regression", str(exc)) from None
        if self.mode is Mode.MULTIPLY and self.metric in (Metric.QUALITY, Metric.LATENCY_TAIL):
            raise ConfigError("regression.mode", f"{self.metric.value} supports only mode=add")
        if self.mode is Mode.MULTIPLY and self.size < 0:
            raise ConfigError("regression.size", "a multiplier must be >= 0")
        if self.metric is Metric.LATENCY and self.mode is Mode.ADD and self.size <= -1:
            raise ConfigError("regression.size", "a relative latency change must be > -1")
        if self.metric is Metric.LATENCY_TAIL and not (0 <= self.size <= 1 and self.slow_factor > 0):
            raise ConfigError("regression.size", "latency_tail needs 0 <= size <= 1 and slow_factor > 0")
        if self.shape is Shape.GRADUAL and self.ramp_s <= 0:
            raise ConfigError("regression.ramp_s", "must be > 0 for a gradual regression")
        if not self.arms or any(a not in _ARMS for a in self.arms):
            raise ConfigError("regression.arms", f"must be a non-empty subset of {_ARMS}, got {self.arms}")

    @property
    def harmful(self) -> bool:
        """True when the change makes the metric worse (what a judge should catch)."""
        if self.metric is Metric.QUALITY:
            return self.size < 0
        if self.metric is Metric.LATENCY_TAIL:
            return self.size > 0 and self.slow_factor > 1
        return self.size > 1 if self.mode is Mode.MULTIPLY else self.size > 0


@dataclass(frozen=True)
class ArmProfile:
    """Base behaviour of one arm before segment effects, the latent and regressions."""

    quality_mean: float = 0.80
    latency_factor: float = 1.0
    escalation_rate: float = 0.004  # per-turn hazard at turn 0; later turns up to 4x (≈4 %/conversation)
    error_rate: float = 0.005
    compliance_rate: float = 0.002


@dataclass(frozen=True)
class Scenario:
    """Everything that determines a simulated stream; equal scenarios give byte-identical output."""

    seed: int = 1
    agent_id: str = "support-bot"
    environment: str = "prod"
    baseline_version: str = "v41"
    canary_version: str = "v42"
    canary_weight: float = 0.1
    start_ts: float = DEFAULT_START_TS
    duration_s: float = 1800.0
    conversations_per_s: float = 20.0
    mean_turns: float = 4.0
    max_turns: int = 20
    segments: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: SEGMENTS)
    baseline: ArmProfile = ArmProfile()
    canary: ArmProfile | None = None  # None: same as baseline (regressions express the difference)
    conversation_effect: float = 1.0  # scales the conversation latent (0 = independent turns)
    judged_fraction: float = 1.0  # share of turns with a quality score (an LLM judge samples)
    daily_cycle: bool = False
    cycle_period_s: float = 86400.0
    mix_change_s: float | None = None
    mix_after: Mapping[str, Mapping[str, float]] | None = None
    emit_markers: bool = True
    weight_steps: tuple[tuple[float, float], ...] = ()
    explicit_arms: bool = True
    srm_drop: float = 0.0  # share of canary conversations whose telemetry is lost
    # Rollout strategy (docs/strategies/): "canary" (default), "shadow" (every live turn of the baseline
    # version is shadowed by the canary version: arm "shadow", same conversation_id and turn), "blue_green"
    # (conversations starting at/after ``switch_s`` are served by the canary version; the marker is sent
    # then) or "flag" (both variants on the baseline version, turns carry flags {flag_name: variant}).
    strategy: str = "canary"
    switch_s: float = 0.0
    shadow_drop: float = 0.0  # share of shadow turns lost (they stay unpaired)
    shadow_shared_noise: float = 0.7  # correlation of a shadow answer's noise with the live answer's
    flag_name: str = "new_prompt"
    flag_variants: tuple[str, str] = ("control", "treatment")
    regressions: tuple[Regression, ...] = ()
    name: str = "custom"
    description: str = ""

    __hash__ = _hash_fields  # hashable although it holds mappings: usable as a cache key

    def __post_init__(self) -> None:
        checks = [
            ("canary_weight", 0 <= self.canary_weight <= 1, "must be in [0, 1]"),
            ("duration_s", self.duration_s > 0, "must be > 0"),
            ("conversations_per_s", self.conversations_per_s > 0, "must be > 0"),
            ("mean_turns", self.mean_turns >= 1, "must be >= 1"),
            ("max_turns", self.max_turns >= 1, "must be >= 1"),
            ("judged_fraction", 0 <= self.judged_fraction <= 1, "must be in [0, 1]"),
            ("srm_drop", 0 <= self.srm_drop < 1, "must be in [0, 1)"),
            ("cycle_period_s", self.cycle_period_s > 0, "must be > 0"),
            ("weight_steps", all(0 <= w <= 1 and at >= 0 for at, w in self.weight_steps), "weights in [0, 1]"),
            ("strategy", self.strategy in STRATEGIES, f"must be one of {', '.join(STRATEGIES)}"),
            ("shadow_drop", 0 <= self.shadow_drop < 1, "must be in [0, 1)"),
            ("shadow_shared_noise", 0 <= self.shadow_shared_noise <= 1, "must be in [0, 1]"),
            ("switch_s", 0 <= self.switch_s < self.duration_s, "must be in [0, duration_s)"),
        ]
        for name, ok, message in checks:
            if not ok:
                raise ConfigError(f"scenario.{name}", message)
        for key, dist in [*self.segments.items(), *(self.mix_after or {}).items()]:
            if (key not in self.segments or not dist or min(dist.values()) < 0 or sum(dist.values()) <= 0
                    or not set(dist) <= set(self.segments[key])):
                raise ConfigError(f"scenario.segments.{key}", "needs known keys/values and non-negative weights")
        for r in self.regressions:
            for key, value in (r.segment or {}).items():
                if value not in self.segments.get(key, {}):
                    raise ConfigError("regression.segment", f"{key}:{value} is not a simulated segment")


def expected_outcome(s: Scenario) -> str:
    """What a correct judge should conclude: "regression", "srm" or "null" (no harmful difference)."""
    if any(r.harmful and "canary" in r.arms and "baseline" not in r.arms for r in s.regressions):
        return "regression"
    canary = s.canary or s.baseline
    b = s.baseline
    if (canary.quality_mean < b.quality_mean or canary.latency_factor > b.latency_factor
            or canary.escalation_rate > b.escalation_rate or canary.error_rate > b.error_rate
            or canary.compliance_rate > b.compliance_rate):
        return "regression"
    return "srm" if s.srm_drop > 0 else "null"


# ---------------------------------------------------------------------------------------------------
# Generation


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
        self.cum_after = [self._cum(after[k], v) if k in after else c
                          for k, v, c in zip(self.keys, self.values, self.cum)]
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
        self.arm_segment = [f'"version":{version[a]},"arm":{arm[a]},"segment":{seg},{extra[a]}'
                            for a in (0, 1) for seg in self.seg_json]
        self.head = '{"schema":"watcher.turn/v1","event_id":"'
        self.agent_env = (f'"agent_id":{enc(s.agent_id).decode()},"environment":{enc(s.environment).decode()},'
                          '"conversation_id":"')
        self.prefix = "c" + hashlib.blake2b(str(s.seed).encode(), digest_size=4).hexdigest() + "-"

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


def _block(s: Scenario, plan: _Plan, rng: np.random.Generator, t0: float, t1: float,
           first_conv: int) -> tuple[dict[str, np.ndarray], int]:
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
        code = np.where(late_mix, np.searchsorted(plan.cum_after[i], u, side="right"),
                        np.searchsorted(plan.cum[i], u, side="right"))
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
    log_lat = (np.log(plan.lat_median[c_combo] * prof["latency_factor"][c_arm]) + 0.1 * c_z + 0.4 * eps_lat
               + 0.25 * (np.log(tokens_out) - math.log(110)))
    gap = np.exp(log_lat) / 1000 + think
    t_nom = start[conv] + _group_cumsum(gap, starts, n_turns) - think  # answer time without regressions
    cyc = _cycle(s, t_nom)
    log_lat = log_lat + 0.1 * cyc  # peak hours are slower for everyone
    quality = (prof["quality_mean"][c_arm] + plan.q_offset[c_combo] - 0.06 * c_z - 0.02 * cyc
               + 0.08 * eps_q)
    hazard = np.minimum(1 + 0.5 * k, 4.0)  # customers give up on the bot late, not at the greeting
    p_esc = (prof["escalation_rate"][c_arm] * hazard * plan.esc_factor[c_combo]
             * np.exp(0.5 * c_z - 0.125 * s.conversation_effect**2) * (1 + 0.25 * cyc))
    p_err = prof["error_rate"][c_arm] * np.exp(0.3 * c_z - 0.045 * s.conversation_effect**2)
    p_comp = prof["compliance_rate"][c_arm] * np.ones(total)
    slow = np.ones(total)
    probs = {Metric.ESCALATION: p_esc, Metric.ERROR: p_err, Metric.COMPLIANCE: p_comp}
    for r in s.regressions:
        affected = np.isin(c_arm, [_ARMS.index(a) for a in r.arms]) & plan.segment_mask(c_combo, r.segment)
        f = _ramp(r, t_nom) * affected
        if r.metric is Metric.QUALITY:
            quality += r.size * f
        elif r.metric is Metric.LATENCY:
            change = r.size * f if r.mode is Mode.ADD else (r.size - 1) * f
            log_lat += np.log1p(change)
        elif r.metric is Metric.LATENCY_TAIL:
            slow = np.where(u_tail < r.size * f, slow * r.slow_factor, slow)
        else:
            p = probs[r.metric]  # in place: the arrays in ``probs`` are p_esc, p_err, p_comp
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
        "conv": (conv + first_conv)[keep], "k": k[keep], "arm": c_arm[keep], "seg": c_combo[keep],
        "lat": np.round(latency, 1)[keep], "q": np.round(quality, 3)[keep], "esc": escalated[keep],
        "err": error[keep], "comp": (u_comp < p_comp)[keep], "tin": tokens_in[keep],
        "tout": tokens_out[keep], "cost": np.round(cost, 6)[keep], "sh": np.zeros(int(keep.sum()), np.int8),
    }
    if s.strategy == "shadow":
        request = ts - latency / 1000  # the shadow answers the same request as the live turn
        shadow = _shadow_rows(s, plan, rng, c_combo, c_z, k, t_nom, cyc, eps_lat, eps_q, raw_tokens_out,
                              tokens_in, request, keep)
        shadow["conv"] = (conv + first_conv)[shadow.pop("at")]
        out = {c: np.concatenate((out[c], shadow[c])) for c in out}
    return out, n


def _shadow_rows(s: Scenario, plan: _Plan, rng: np.random.Generator, c_combo: np.ndarray, c_z: np.ndarray,
                 k: np.ndarray, t_nom: np.ndarray, cyc: np.ndarray, eps_lat: np.ndarray, eps_q: np.ndarray,
                 tokens_out: np.ndarray, tokens_in: np.ndarray, request: np.ndarray,
                 keep: np.ndarray) -> dict[str, np.ndarray]:
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
    log_lat = (np.log(plan.lat_median[c_combo] * prof["latency_factor"]) + 0.1 * c_z + 0.4 * e_lat
               + 0.25 * (np.log(tokens_out) - math.log(110)) + 0.1 * cyc)
    quality = prof["quality_mean"] + plan.q_offset[c_combo] - 0.06 * c_z - 0.02 * cyc + 0.08 * e_q
    hazard = np.minimum(1 + 0.5 * k, 4.0)
    p_esc = (prof["escalation_rate"] * hazard * plan.esc_factor[c_combo]
             * np.exp(0.5 * c_z - 0.125 * s.conversation_effect**2) * (1 + 0.25 * cyc))
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
            p = probs[r.metric]
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
    return {"ms": np.floor(s.start_ts * 1000 + ts * 1000).astype(np.int64)[sel], "at": np.flatnonzero(sel),
            "k": k[sel], "arm": np.ones(int(sel.sum()), np.int8), "seg": c_combo[sel],
            "lat": np.round(latency, 1)[sel], "q": np.round(quality, 3)[sel], "esc": (u_esc < p_esc)[sel],
            "err": error[sel], "comp": (u_comp < p_comp)[sel], "tin": tokens_in[sel], "tout": t_out[sel],
            "cost": np.round(cost, 6)[sel], "sh": np.ones(int(sel.sum()), np.int8)}


_QUALITY_TEXT = [f"{i / 1000}" for i in range(1001)] + ["null"]  # quality has 3 decimals: 1002 strings
_MS_TEXT = [f".{i:03d}Z" for i in range(1000)]
_SUFFIX_TEXT = ["", "-shadow"]  # event id suffix of shadow turns (live turns keep "{conversation}-{turn}")
_FLAGS_TEXT = [f'"escalated":{e},"error":{r},"compliance_violation":{c},'
               for e in ("false", "true") for r in ("false", "true") for c in ("false", "true")]


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
            secs, (ms % 1000).tolist(), cols["conv"].tolist(), cols["k"].tolist(), cols["sh"].tolist(), arm_seg.tolist(),
            (lat10 // 10).tolist(), (lat10 % 10).tolist(), q_code.tolist(), flags.tolist(),
            cols["tin"].tolist(), cols["tout"].tolist(), (micro // 1_000_000).tolist(),
            (micro % 1_000_000).tolist())
    ]


def _markers(s: Scenario, plan: _Plan) -> list[tuple[int, str]]:
    if not s.emit_markers:
        return []
    base: dict[str, Any] = {"schema": "watcher.deployment/v1", "agent_id": s.agent_id, "environment": s.environment,
                            "strategy": s.strategy, "baseline_version": s.baseline_version,
                            "canary_version": s.canary_version, "actor": "watcher-simulate"}
    start, weight = 0.0, s.canary_weight
    if s.strategy == "flag":
        base["canary_version"] = None
        base["flag"] = {"name": s.flag_name, "control": s.flag_variants[0], "treatment": s.flag_variants[1]}
    elif s.strategy in ("shadow", "blue_green"):
        start, weight = (s.switch_s if s.strategy == "blue_green" else 0.0), 1.0
    steps = [(start, "started", weight)] + [
        (at, "weight_changed", w) for at, w in sorted(s.weight_steps) if at < s.duration_s and s.strategy in ("canary", "flag")]
    out = []
    for i, (at, action, weight) in enumerate(steps):
        ms = math.floor(s.start_ts * 1000 + at * 1000)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
        d = {**base, "event_id": f"{plan.prefix}dep-{i}", "ts": ts, "action": action, "canary_weight": weight}
        out.append((ms, msgspec.json.encode(d).decode()))
    return out


def _blocks(s: Scenario) -> Iterator[tuple[list[str], set[int]]]:
    """Blocks of encoded events in ``ts`` order, with the positions of the deployment markers."""
    plan = _Plan(s)
    rng = np.random.default_rng(s.seed)
    markers = _markers(s, plan)
    block_s = min(max(_BLOCK_CONVERSATIONS / (1.5 * s.conversations_per_s), 0.5), 60.0)
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
        markers = markers[len(due):]
        positions: set[int] = set()
        for shift, (ms, line) in enumerate(due):
            pos = int(np.searchsorted(cols["ms"][:cut], ms, side="left")) + shift
            lines.insert(pos, line)
            positions.add(pos)
        if lines:
            yield lines, positions
        t0 = t1


def generate(scenario: Scenario) -> Iterator[bytes]:
    """Every event of the scenario as one JSON object (no newline), in non-decreasing ``ts`` order."""
    for lines, _ in _blocks(scenario):
        for line in lines:
            yield line.encode()


def write_jsonl(scenario: Scenario, path: str | Path) -> int:
    """Write the scenario as JSON Lines; returns the number of events written."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for lines, _ in _blocks(scenario):
            f.write("\n".join(lines))
            f.write("\n")
            n += len(lines)
    return n


class _Pacer:
    """Sleeps so that ``rate`` events per second are not exceeded (None: as fast as possible)."""

    def __init__(self, rate: float | None, clock: Clock) -> None:
        self.rate, self.clock, self.sent = rate, clock, 0
        self.t0 = clock.monotonic()

    async def tick(self, n: int) -> None:
        self.sent += n
        if self.rate:
            delay = self.t0 + self.sent / self.rate - self.clock.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)


def _chunks(lines: list[str], rate: float | None) -> Iterator[tuple[int, list[str]]]:
    step = max(1, int(rate / 20)) if rate else len(lines)  # paced: ~20 sends a second, smooth enough
    for i in range(0, len(lines), step):
        yield i, lines[i:i + step]


async def produce(scenario: Scenario, bootstrap_servers: str, topic: str, *, rate: float | None = None,
                  deployments_topic: str | None = None, clock: Clock | None = None) -> int:
    """Send the scenario to Kafka (key = agent_id); markers go to ``deployments_topic`` if given.

    acks=1 and no idempotence: the embedded test broker (Tansu) rejects InitProducerId. Records are
    appended to batches by hand (the partition the default partitioner picks for the key): a
    ``send()`` per record costs ~30 µs, which would cap the throughput benchmark's feed at ~30k/s.
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks=1, enable_idempotence=False,
                                linger_ms=5 if rate else 50, max_batch_size=1 << 20)
    await producer.start()
    key = scenario.agent_id.encode()
    pacer = _Pacer(rate, clock or SystemClock())
    partitions: dict[str, int] = {}
    inflight: list[asyncio.Future[Any]] = []
    try:
        for dest in {topic, deployments_topic or topic}:
            available = sorted(await producer.partitions_for(dest))
            partitions[dest] = DefaultPartitioner()(key, available, available)
        for lines, marker_pos in _blocks(scenario):
            for offset, chunk in _chunks(lines, rate):
                batches = {dest: producer.create_batch() for dest in partitions}
                for i, line in enumerate(chunk, offset):
                    dest = deployments_topic if deployments_topic and i in marker_pos else topic
                    value = line.encode()
                    while batches[dest].append(key=key, value=value, timestamp=None) is None:
                        inflight.append(await producer.send_batch(batches[dest], dest, partition=partitions[dest]))
                        batches[dest] = producer.create_batch()
                for dest, batch in batches.items():
                    if batch.record_count():
                        inflight.append(await producer.send_batch(batch, dest, partition=partitions[dest]))
                # Paced: deliver now (a live demo). Unpaced: keep a few batches in flight, as the
                # broker's round trip would otherwise dominate; delivery errors surface either way.
                if rate or len(inflight) > 32:
                    keep = 0 if rate else 16
                    await asyncio.gather(*inflight[:len(inflight) - keep])
                    del inflight[:len(inflight) - keep]
                await pacer.tick(len(chunk))
        await asyncio.gather(*inflight)
    finally:
        await producer.stop()
    return pacer.sent


async def _write_paced(scenario: Scenario, path: str | Path, rate: float, clock: Clock) -> int:
    pacer = _Pacer(rate, clock)
    with open(path, "w", encoding="utf-8") as f:
        for lines, _ in _blocks(scenario):
            for _, chunk in _chunks(lines, rate):
                f.write("".join(line + "\n" for line in chunk))
                f.flush()  # a follower (tail -f, FileSource) sees events as they are "produced"
                await pacer.tick(len(chunk))
    return pacer.sent


# ---------------------------------------------------------------------------------------------------
# Presets: the scenarios of the demo and the detection benchmark (documented in docs/simulator.md)


def _preset(name: str, description: str, **kw: Any) -> Scenario:
    return Scenario(name=name, description=description, **kw)


_R = Regression
PRESETS: dict[str, Scenario] = {p.name: p for p in (
    _preset("healthy", "canary behaves like the baseline; daily cycle on", daily_cycle=True),
    _preset("demo", "quality -0.2 for intent=billing from minute 2 (the live demo)",
            duration_s=900.0, conversations_per_s=10.0, canary_weight=0.2,
            regressions=(_R("quality", -0.2, start_s=120.0, segment={"intent": "billing"}),)),
    _preset("escalation_up", "escalation probability x2 from 300 s",
            regressions=(_R("escalation", 2.0, start_s=300.0, mode="multiply"),)),
    _preset("latency_up", "latency +25 % from 300 s", regressions=(_R("latency", 0.25, start_s=300.0),)),
    _preset("slow_tail", "5 % of turns 4x slower from 300 s (p95/p99 move, the median barely)",
            regressions=(_R("latency_tail", 0.05, start_s=300.0, slow_factor=4.0),)),
    _preset("errors_x4", "error probability x4 from 300 s",
            regressions=(_R("error", 4.0, start_s=300.0, mode="multiply"),)),
    _preset("compliance_x5", "compliance-violation probability x5 from 300 s",
            regressions=(_R("compliance", 5.0, start_s=300.0, mode="multiply"),)),
    _preset("gradual_quality", "quality ramps down to -0.1 between 300 s and 1200 s", duration_s=2400.0,
            regressions=(_R("quality", -0.1, start_s=300.0, shape="gradual", ramp_s=900.0),)),
    _preset("segment_quality_while_average_improves",
            "quality +0.03 everywhere but -0.2 for intent=cancellation: the average improves",
            regressions=(_R("quality", 0.03), _R("quality", -0.2, segment={"intent": "cancellation"}))),
    _preset("broken_from_start", "canary broken from its first turn: errors x20, quality -0.25",
            duration_s=600.0, regressions=(_R("error", 20.0, mode="multiply"), _R("quality", -0.25))),
    _preset("a_a", "identical arms under two version labels (type-I error runs)", duration_s=3600.0),
    _preset("both_arms_drift", "both arms degrade together (quality -0.1, latency +30 %), a fast daily "
            "cycle and a traffic-mix shift towards cancellations: no canary difference",
            duration_s=3600.0, daily_cycle=True, cycle_period_s=1800.0, mix_change_s=1800.0,
            mix_after={"intent": {"billing": 0.2, "tech_support": 0.3, "cancellation": 0.3, "sales": 0.1,
                                  "other": 0.1}},
            regressions=(_R("quality", -0.1, start_s=600.0, shape="gradual", ramp_s=1200.0,
                            arms=("baseline", "canary")),
                         _R("latency", 0.3, start_s=900.0, arms=("baseline", "canary")))),
    _preset("low_traffic", "0.2 conversations/s: the judge must stay inconclusive, never fail",
            conversations_per_s=0.2, duration_s=3600.0),
    _preset("rare_events", "errors 0.05 %, compliance 0.02 %, identical arms: rare-event false alarms",
            duration_s=3600.0, baseline=ArmProfile(error_rate=0.0005, compliance_rate=0.0002)),
    _preset("long_conversations", "~15 turns per conversation (up to 60), strong within-conversation "
            "correlation, identical arms", mean_turns=15.0, max_turns=60, conversations_per_s=5.0,
            conversation_effect=1.5),
    _preset("srm", "20 % of canary conversations lose their telemetry (sample-ratio mismatch)",
            srm_drop=0.2),
)}


# Strategy scenarios (shadow, blue-green, flag): kept apart from PRESETS, whose set the canary
# benchmark and docs/simulator.md enumerate. docs/strategies/ documents them.
STRATEGY_PRESETS: dict[str, Scenario] = {p.name: p for p in (
    _preset("shadow_healthy", "shadow answers every live turn, no difference", strategy="shadow",
            duration_s=1800.0, conversations_per_s=5.0),
    _preset("shadow_quality_down", "the shadow's quality is 0.08 lower", strategy="shadow",
            duration_s=1800.0, conversations_per_s=5.0, regressions=(_R("quality", -0.08),)),
    _preset("shadow_errors_x4", "the shadow errs 4x as often", strategy="shadow", duration_s=1800.0,
            conversations_per_s=5.0, regressions=(_R("error", 4.0, mode="multiply"),)),
    _preset("blue_green_healthy", "switch to an identical green after 30 min", strategy="blue_green",
            duration_s=3000.0, switch_s=1800.0, conversations_per_s=5.0),
    _preset("blue_green_regression", "green's quality is 0.08 lower after the switch", strategy="blue_green",
            duration_s=3000.0, switch_s=1800.0, conversations_per_s=5.0, regressions=(_R("quality", -0.08),)),
    _preset("blue_green_healthy_daily", "switch to an identical green after 30 min, daily cycle on (time-of-day "
            "drift across the switch)", strategy="blue_green", duration_s=3000.0, switch_s=1800.0,
            conversations_per_s=5.0, daily_cycle=True),
    _preset("blue_green_errors_x4", "green errs 4x as often after the switch, daily cycle on", strategy="blue_green",
            duration_s=3000.0, switch_s=1800.0, conversations_per_s=5.0, daily_cycle=True,
            regressions=(_R("error", 4.0, start_s=1800.0, mode="multiply"),)),
    _preset("flag_healthy", "flag treatment on 50 % of conversations, no difference", strategy="flag",
            canary_weight=0.5, duration_s=1800.0, conversations_per_s=5.0),
    _preset("flag_errors_x4", "the flag's treatment errs 4x as often", strategy="flag", canary_weight=0.5,
            duration_s=1800.0, conversations_per_s=5.0, regressions=(_R("error", 4.0, mode="multiply"),)),
)}


# ---------------------------------------------------------------------------------------------------
# Command line


_REGRESSION_KEYS = {"metric", "size", "start", "segment", "shape", "ramp", "mode", "slow", "arms"}


def parse_regression(text: str) -> Regression:
    """``metric=quality,size=-0.15,start=600,segment=intent:billing,shape=step``.

    Also ``size=x4`` (= mode=multiply, size=4), ``segment=intent:billing+language:de``,
    ``ramp=900``, ``slow=4`` (latency_tail), ``arms=canary|baseline|both``.
    """
    parts: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not value.strip():
            raise argparse.ArgumentTypeError(f"bad part {part!r} in {text!r}: expected key=value")
        if key not in _REGRESSION_KEYS:
            raise argparse.ArgumentTypeError(
                f"bad part {part!r} in {text!r}: unknown key {key!r} (known: {', '.join(sorted(_REGRESSION_KEYS))})")
        parts[key] = value.strip()
    if "metric" not in parts or "size" not in parts:
        raise argparse.ArgumentTypeError(f"regression {text!r} needs metric= and size=")
    kw: dict[str, Any] = {"metric": parts["metric"]}
    try:
        size = parts["size"]
        if size.lower().startswith("x"):
            kw["mode"], size = "multiply", size[1:]
        kw["size"] = float(size)
        for key, name in (("start", "start_s"), ("ramp", "ramp_s"), ("slow", "slow_factor")):
            if key in parts:
                kw[name] = float(parts[key])
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad number in regression {text!r}") from None
    for key in ("shape", "mode"):
        if key in parts:
            kw[key] = parts[key]
    if "segment" in parts:
        pairs = [p.partition(":") for p in parts["segment"].split("+")]
        if any(not k or not v for k, _, v in pairs):
            raise argparse.ArgumentTypeError(f"bad segment {parts['segment']!r} in {text!r}: expected key:value")
        kw["segment"] = {k: v for k, _, v in pairs}
    if "arms" in parts:
        kw["arms"] = _ARMS if parts["arms"] == "both" else (parts["arms"],)
    try:
        return Regression(**kw)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"bad regression {text!r}: {exc}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``watcher simulate``; unset options keep the preset's (or the default) value."""
    out = parser.add_argument_group("output (one of)")
    out.add_argument("--out", metavar="FILE", help="write JSON Lines to FILE")
    out.add_argument("--bootstrap-servers", help="produce to this Kafka cluster")
    out.add_argument("--topic", default="watcher.telemetry", help="telemetry topic (default %(default)s)")
    out.add_argument("--deployments-topic", help="send markers here (default: the telemetry topic)")
    out.add_argument("--rate", type=float, help="pace output to this many events per second")
    sc = parser.add_argument_group("scenario")
    sc.add_argument("--preset", choices=sorted(PRESETS) + sorted(STRATEGY_PRESETS),
                    help="start from a named scenario")
    sc.add_argument("--strategy", choices=STRATEGIES, help="rollout strategy (default canary)")
    sc.add_argument("--switch", type=float, metavar="SECONDS", help="blue_green: the switch time")
    sc.add_argument("--seed", type=int)
    sc.add_argument("--duration", type=float, metavar="SECONDS", help="simulated seconds")
    sc.add_argument("--conversations-per-second", type=float)
    sc.add_argument("--canary-weight", type=float)
    sc.add_argument("--start", metavar="TS", help="start time: RFC 3339, Unix seconds or 'now'")
    sc.add_argument("--agent-id")
    sc.add_argument("--no-markers", action="store_true", help="emit no deployment markers")
    sc.add_argument("--implicit-arms", action="store_true", help="arm: null (the rollout resolves it)")
    sc.add_argument("--regression", action="append", type=parse_regression, default=[], metavar="SPEC",
                    help="repeatable; e.g. metric=quality,size=-0.15,start=600,segment=intent:billing")


def _parse_start(text: str, clock: Clock) -> float:
    if text == "now":
        return float(int(clock.now()))
    try:
        return float(text)
    except ValueError:
        pass
    try:
        base, _, frac = text.rstrip("Z").partition(".")
        return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + (float("0." + frac) if frac else 0.0)
    except ValueError:
        raise ConfigError("simulate.start", f"{text!r} is not 'now', Unix seconds or RFC 3339 UTC") from None


def scenario_from_args(args: argparse.Namespace, clock: Clock | None = None) -> Scenario:
    base = ({**PRESETS, **STRATEGY_PRESETS}[args.preset] if getattr(args, "preset", None) else Scenario())
    kw: dict[str, Any] = {}
    if getattr(args, "strategy", None):
        kw["strategy"] = args.strategy
    if getattr(args, "switch", None) is not None:
        kw["switch_s"] = args.switch
    for attr, name in (("seed", "seed"), ("duration", "duration_s"), ("agent_id", "agent_id"),
                       ("conversations_per_second", "conversations_per_s"), ("canary_weight", "canary_weight")):
        if getattr(args, attr, None) is not None:
            kw[name] = getattr(args, attr)
    if getattr(args, "start", None):
        kw["start_ts"] = _parse_start(args.start, clock or SystemClock())
    if getattr(args, "no_markers", False):
        kw["emit_markers"] = False
    if getattr(args, "implicit_arms", False):
        kw["explicit_arms"] = False
    if getattr(args, "regression", None):
        kw["regressions"] = base.regressions + tuple(args.regression)
    return replace(base, **kw)


async def run(args: argparse.Namespace) -> int:
    """``watcher simulate``: returns the process exit code. Raises ConfigError on a bad combination."""
    if bool(args.out) == bool(args.bootstrap_servers):
        raise ConfigError("simulate.output", "give exactly one of --out FILE or --bootstrap-servers")
    if args.rate is not None and args.rate <= 0:
        raise ConfigError("simulate.rate", "must be > 0")
    scenario = scenario_from_args(args)
    started = time.monotonic()
    if args.out:
        if args.rate:
            n = await _write_paced(scenario, args.out, args.rate, SystemClock())
        else:
            n = write_jsonl(scenario, args.out)
        where = args.out
    else:
        n = await produce(scenario, args.bootstrap_servers, args.topic, rate=args.rate,
                          deployments_topic=args.deployments_topic)
        where = f"{args.bootstrap_servers}/{args.topic}"
    elapsed = time.monotonic() - started
    print(f"simulate: {n} events ({scenario.name}, seed {scenario.seed}, expected {expected_outcome(scenario)})"
          f" to {where} in {elapsed:.1f}s", file=sys.stderr)
    return 0
