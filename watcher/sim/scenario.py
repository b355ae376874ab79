"""What a simulated stream is made of: the scenario, each arm's profile and the injected regressions.

Frozen, validated values (a bad one raises ConfigError naming the field); equal scenarios give
byte-identical output. ``watcher.sim.traffic`` turns a scenario into events, ``watcher.sim.presets`` names
the scenarios of the demo and the benchmarks, ``watcher.sim.simulate`` is the command. docs/simulator.md
documents the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from watcher.errors import ConfigError

__all__ = [
    "ARMS",
    "DEFAULT_START_TS",
    "SEGMENTS",
    "STRATEGIES",
    "ArmProfile",
    "Metric",
    "Mode",
    "Regression",
    "Scenario",
    "Shape",
    "expected_outcome",
]

DEFAULT_START_TS = 1795766400.0  # 2026-11-27T08:00:00Z, the example date of EVENT_SCHEMA.md
SEGMENTS: dict[str, dict[str, float]] = {
    "intent": {"billing": 0.30, "tech_support": 0.35, "cancellation": 0.10, "sales": 0.15, "other": 0.10},
    "language": {"en": 0.60, "de": 0.18, "fr": 0.12, "es": 0.10},
    "channel": {"chat": 0.65, "voice": 0.35},
}
# The strategies the simulator makes traffic for (each shapes the stream its own way, below); which
# strategies exist is the registry's (``watcher.judges.strategies``): tests/sim checks these are in it.
STRATEGIES = ("canary", "shadow", "blue_green", "flag")


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
ARMS = ("baseline", "canary")


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
            raise ConfigError("regression.mode", f"{Metric(self.metric).value} supports only mode=add")
        if self.mode is Mode.MULTIPLY and self.size < 0:
            raise ConfigError("regression.size", "a multiplier must be >= 0")
        if self.metric is Metric.LATENCY and self.mode is Mode.ADD and self.size <= -1:
            raise ConfigError("regression.size", "a relative latency change must be > -1")
        if self.metric is Metric.LATENCY_TAIL and not (0 <= self.size <= 1 and self.slow_factor > 0):
            raise ConfigError("regression.size", "latency_tail needs 0 <= size <= 1 and slow_factor > 0")
        if self.shape is Shape.GRADUAL and self.ramp_s <= 0:
            raise ConfigError("regression.ramp_s", "must be > 0 for a gradual regression")
        if not self.arms or any(a not in ARMS for a in self.arms):
            raise ConfigError("regression.arms", f"must be a non-empty subset of {ARMS}, got {self.arms}")

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
    shadow_share: float = 1.0  # share of live conversations mirrored to the shadow version
    # the ``arm`` every turn carries instead of the strategy's own labels ("live", "baseline", ...; ""
    # for null): what a router that knows only "live" traffic writes, e.g. during a blue-green switch
    arm_label: str | None = None
    shadow_shared_noise: float = 0.7  # correlation of a shadow answer's noise with the live answer's
    flag_name: str = "new_prompt"
    flag_variants: tuple[str, str] = ("control", "treatment")
    regressions: tuple[Regression, ...] = ()
    # ids: "<prefix><conversation>-<turn>"; None: "c" + a hash of the seed (a platform of many agents
    # names each stream's prefix, as 32-bit seed hashes would collide among ~10^5 streams)
    id_prefix: str | None = None
    max_block_s: float = 60.0  # longest generation block (a quiet stream is cheaper in long blocks)
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
            (
                "weight_steps",
                all(0 <= w <= 1 and at >= 0 for at, w in self.weight_steps),
                "weights in [0, 1]",
            ),
            ("strategy", self.strategy in STRATEGIES, f"must be one of {', '.join(STRATEGIES)}"),
            ("shadow_drop", 0 <= self.shadow_drop < 1, "must be in [0, 1)"),
            ("shadow_share", 0 < self.shadow_share <= 1, "must be in (0, 1]"),
            ("shadow_shared_noise", 0 <= self.shadow_shared_noise <= 1, "must be in [0, 1]"),
            ("switch_s", 0 <= self.switch_s < self.duration_s, "must be in [0, duration_s)"),
            ("max_block_s", self.max_block_s > 0, "must be > 0"),
        ]
        for name, ok, message in checks:
            if not ok:
                raise ConfigError(f"scenario.{name}", message)
        for key, dist in [*self.segments.items(), *(self.mix_after or {}).items()]:
            if (
                key not in self.segments
                or not dist
                or min(dist.values()) < 0
                or sum(dist.values()) <= 0
                or not set(dist) <= set(self.segments[key])
            ):
                raise ConfigError(
                    f"scenario.segments.{key}", "needs known keys/values and non-negative weights"
                )
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
    if (
        canary.quality_mean < b.quality_mean
        or canary.latency_factor > b.latency_factor
        or canary.escalation_rate > b.escalation_rate
        or canary.error_rate > b.error_rate
        or canary.compliance_rate > b.compliance_rate
    ):
        return "regression"
    return "srm" if s.srm_drop > 0 else "null"
