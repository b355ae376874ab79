"""Many agents, one watcher: the platform simulator behind ``watcher simulate --agents N``.

A platform team's watcher sees thousands of agents with very uneven traffic and a new version
somewhere every few minutes. ``Platform`` models that, seeded and reproducible:

* **Traffic**: ``conversations_per_s`` for the whole platform, split over the agents by a Zipf law
  (agent of rank k gets a share proportional to k^-``zipf``): a few busy agents, a long quiet tail.
* **Rollouts**: at any time about ``rollout_share`` of the agents run one. Each agent alternates a
  live period (its current version alone, ``arm: null``; exponential, with the mean that keeps the
  share) and a rollout of ``rollout_s`` on average (uniform between half and one and a half times
  that), with a strategy drawn from ``strategies``. The agents in a rollout at the start begin it at
  time 0 with what is left of it, so the share holds from the first minute. A canary or flag rollout
  gets a weight of ``canary_weight``; a shadow rollout shadows every live turn; a blue-green one
  switches at its start.
* **Regressions**: ``regression_share`` of the rollouts carry one of ``regressions`` (drawn per
  rollout), starting at a random point of the rollout's first third.
* **Churn**: a rollout ends with a marker, ``promoted`` when healthy and ``rolled_back`` when it
  regressed (the deployer's reaction to watcher, simplified); a promoted version becomes the agent's
  live version, and the next rollout ships the next version number.

Each period of each agent is an ordinary ``Scenario`` (same model of conversations, segments and
metrics as the single-agent simulator, docs/simulator.md); ``events`` merges their streams in event
time, a window at a time, creating a period's generator only when its start is reached.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import msgspec
import numpy as np

from watcher.errors import ConfigError
from watcher.sim.scenario import DEFAULT_START_TS, STRATEGIES, Regression, Scenario, _hash_fields
from watcher.sim.traffic import timed_blocks

__all__ = ["DEFAULT_REGRESSIONS", "DEFAULT_STRATEGY_MIX", "Period", "Platform", "events", "plan"]

DEFAULT_STRATEGY_MIX: Mapping[str, float] = {"canary": 0.55, "flag": 0.2, "blue_green": 0.15, "shadow": 0.1}
# what a regressed rollout carries (one, drawn per rollout): sizes the judges catch within minutes
DEFAULT_REGRESSIONS: tuple[Regression, ...] = (
    Regression("quality", -0.15, segment={"intent": "billing"}),
    Regression("error", 4.0, mode="multiply"),
    Regression("latency", 0.3),
    Regression("escalation", 2.5, mode="multiply"),
)
_WINDOW_S = 60.0  # merge window of event time


@dataclass(frozen=True)
class Platform:
    """Everything that determines a platform's stream; equal platforms give byte-identical output."""

    agents: int = 100
    seed: int = 1
    duration_s: float = 3600.0
    conversations_per_s: float = 50.0  # the whole platform's
    zipf: float = 1.0
    rollout_share: float = 0.1
    rollout_s: float = 1800.0
    strategies: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_STRATEGY_MIX))
    regression_share: float = 0.2
    regressions: tuple[Regression, ...] = DEFAULT_REGRESSIONS
    canary_weight: float = 0.1
    start_ts: float = DEFAULT_START_TS
    environment: str = "prod"
    mean_turns: float = 4.0
    emit_markers: bool = True
    explicit_arms: bool = True

    __hash__ = _hash_fields  # hashable although it holds a mapping: usable as a cache key

    def __post_init__(self) -> None:
        checks = [
            ("agents", self.agents >= 1, "must be >= 1"),
            ("duration_s", self.duration_s > 0, "must be > 0"),
            ("conversations_per_s", self.conversations_per_s > 0, "must be > 0"),
            ("zipf", self.zipf >= 0, "must be >= 0 (0: every agent the same traffic)"),
            ("rollout_share", 0 <= self.rollout_share < 1, "must be in [0, 1)"),
            ("rollout_s", self.rollout_s > 0, "must be > 0"),
            ("regression_share", 0 <= self.regression_share <= 1, "must be in [0, 1]"),
            ("canary_weight", 0 < self.canary_weight < 1, "must be in (0, 1)"),
            ("mean_turns", self.mean_turns >= 1, "must be >= 1"),
            (
                "strategies",
                bool(self.strategies)
                and set(self.strategies) <= set(STRATEGIES)
                and min(self.strategies.values()) >= 0
                and sum(self.strategies.values()) > 0,
                f"weights >= 0 of {', '.join(STRATEGIES)}, not all 0",
            ),
            ("regressions", bool(self.regressions) or self.regression_share == 0, "needs one regression"),
        ]
        for name, ok, message in checks:
            if not ok:
                raise ConfigError(f"platform.{name}", message)

    def agent_ids(self) -> list[str]:
        width = len(str(self.agents))
        return [f"agent-{i:0{width}d}" for i in range(1, self.agents + 1)]

    def rates(self) -> np.ndarray:
        """Conversations per second of each agent (rank order: the first agent is the busiest)."""
        w = np.arange(1, self.agents + 1, dtype=float) ** -self.zipf
        return self.conversations_per_s * w / w.sum()


@dataclass(frozen=True)
class Period:
    """One stretch of one agent's timeline: live (``scenario.canary_weight == 0``, no markers) or a
    rollout, which ends with ``end_marker`` (``promoted`` or ``rolled_back``) unless the platform's
    duration ends first."""

    agent: int  # index in ``Platform.agent_ids()``
    start_s: float
    scenario: Scenario
    rollout: bool
    end_marker: str | None = None


def plan(p: Platform) -> list[Period]:
    """Every agent's periods, ordered by start (then agent): the timeline ``events`` plays."""
    ids, rates = p.agent_ids(), p.rates()
    names = list(p.strategies)
    mix = np.array([p.strategies[n] for n in names], float)
    mix /= mix.sum()
    gap_mean = p.rollout_s * (1 - p.rollout_share) / p.rollout_share if p.rollout_share else math.inf
    periods: list[Period] = []
    for a, (agent, rate) in enumerate(zip(ids, rates.tolist())):
        rng = np.random.default_rng([p.seed, a])
        live, next_version, t, segment = 1, 2, 0.0, 0
        in_rollout = bool(rng.random() < p.rollout_share)
        while t < p.duration_s:
            if in_rollout:
                length = p.rollout_s * rng.uniform(0.5, 1.5)
                if segment == 0:  # under way at the start: what is left of it (the share stays steady)
                    length *= rng.uniform(0.05, 1.0)
                strategy = names[int(rng.choice(len(names), p=mix))]
                regressed = bool(rng.random() < p.regression_share)
                regression = p.regressions[int(rng.integers(len(p.regressions)))] if regressed else None
                onset = float(rng.uniform(0, length / 3))
            else:
                length = float(rng.exponential(gap_mean)) if math.isfinite(gap_mean) else math.inf
            end = min(t + length, p.duration_s)
            seed = int(rng.integers(2**31))
            base = dict(
                seed=seed,
                agent_id=agent,
                environment=p.environment,
                start_ts=p.start_ts + t,
                duration_s=end - t,
                conversations_per_s=rate,
                mean_turns=p.mean_turns,
                id_prefix=f"{agent}-{segment}-",
                max_block_s=math.inf,
            )
            if in_rollout:
                version = f"v{live}" if strategy == "flag" else f"v{next_version}"
                regs = () if regression is None else (_shifted(regression, onset),)
                s = Scenario(
                    **base,
                    strategy=strategy,
                    baseline_version=f"v{live}",
                    canary_version=version,
                    canary_weight=p.canary_weight if strategy in ("canary", "flag") else 1.0,
                    regressions=regs,
                    emit_markers=p.emit_markers,
                    explicit_arms=p.explicit_arms,
                )
                ended = t + length <= p.duration_s
                outcome = ("rolled_back" if regressed else "promoted") if ended else None
                periods.append(Period(a, t, s, True, outcome))
                if strategy != "flag":
                    if outcome == "promoted":
                        live = next_version
                    next_version += 1
            else:
                s = Scenario(
                    **base,
                    baseline_version=f"v{live}",
                    canary_version=f"v{live}",
                    canary_weight=0.0,
                    emit_markers=False,
                    explicit_arms=False,
                )
                periods.append(Period(a, t, s, False))
            t, segment, in_rollout = end, segment + 1, not in_rollout
    periods.sort(key=lambda q: (q.start_s, q.agent))
    return periods


def _shifted(r: Regression, onset: float) -> Regression:
    return Regression(
        r.metric,
        r.size,
        start_s=onset,
        segment=r.segment,
        shape=r.shape,
        ramp_s=r.ramp_s,
        mode=r.mode,
        slow_factor=r.slow_factor,
        arms=r.arms,
    )


def _end_marker(q: Period) -> tuple[int, str]:
    s = q.scenario
    ms = math.floor(s.start_ts * 1000 + s.duration_s * 1000)
    whole, frac = divmod(ms, 1000)
    flag = (
        {"name": s.flag_name, "control": s.flag_variants[0], "treatment": s.flag_variants[1]}
        if s.strategy == "flag"
        else None
    )
    doc = {
        "schema": "watcher.deployment/v1",
        "event_id": f"{s.id_prefix}end",
        "ts": _rfc3339(whole) + f".{frac:03d}Z",
        "agent_id": s.agent_id,
        "environment": s.environment,
        "action": q.end_marker,
        "strategy": s.strategy,
        "baseline_version": s.baseline_version,
        "canary_version": None if flag else s.canary_version,
        "canary_weight": s.canary_weight,
        "actor": "watcher-simulate",
        **({"flag": flag} if flag else {}),
    }
    return ms, msgspec.json.encode(doc).decode()


def _rfc3339(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


class _Stream:
    """One period's events, pulled a block at a time."""

    def __init__(self, q: Period) -> None:
        self.key = q.scenario.agent_id
        self._blocks = timed_blocks(q.scenario)
        self.lines: list[str] = []
        self.ms = np.zeros(0, np.int64)
        self.markers: set[int] = set()
        self.done = False
        self._end = _end_marker(q) if q.end_marker is not None and q.scenario.emit_markers else None

    def until(self, limit_ms: int) -> tuple[list[str], np.ndarray, list[int]]:
        """The buffered events before ``limit_ms`` (and the positions of markers among them), pulling
        blocks as needed."""
        while not self.done and (not len(self.ms) or self.ms[-1] < limit_ms):
            block = next(self._blocks, None)
            if block is None:
                self.done = True
                if self._end is not None:
                    self._append([self._end[1]], np.array([self._end[0]], np.int64), {0})
                break
            self._append(*block)
        cut = int(np.searchsorted(self.ms, limit_ms, side="left"))
        lines, ms = self.lines[:cut], self.ms[:cut]
        marks = sorted(i for i in self.markers if i < cut)
        self.lines, self.ms = self.lines[cut:], self.ms[cut:]
        self.markers = {i - cut for i in self.markers if i >= cut}
        return lines, ms, marks

    def _append(self, lines: list[str], ms: np.ndarray, markers: set[int]) -> None:
        n = len(self.lines)
        self.lines.extend(lines)
        self.ms = np.concatenate((self.ms, ms))
        self.markers |= {n + i for i in markers}

    @property
    def exhausted(self) -> bool:
        return self.done and not self.lines


def events(
    p: Platform, periods: list[Period] | None = None
) -> Iterator[tuple[list[str], list[str], set[int]]]:
    """The platform's events in event-time order, a window at a time: ``(agent ids, lines, positions
    of the deployment markers)``, the first two parallel.

    A period's generator is built when the window reaches its start (a period's first event is never
    before it) and dropped once exhausted; ties in event time keep the order of the periods.
    """
    pending = list(periods if periods is not None else plan(p))
    pending.reverse()  # popped from the end, earliest first
    active: list[_Stream] = []
    w = 0
    while pending or active:
        w += 1
        limit = math.floor((p.start_ts + w * _WINDOW_S) * 1000)
        while pending and (p.start_ts + pending[-1].start_s) * 1000 < limit:
            active.append(_Stream(pending.pop()))
        keys: list[str] = []
        lines: list[str] = []
        marks: list[int] = []
        stamps: list[np.ndarray] = []
        for stream in active:
            got, ms, mk = stream.until(limit)
            if got:
                marks.extend(len(lines) + i for i in mk)
                keys.extend([stream.key] * len(got))
                lines.extend(got)
                stamps.append(ms)
        active = [s for s in active if not s.exhausted]
        if lines:
            order = np.argsort(np.concatenate(stamps), kind="stable")
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order))
            yield _gather(keys, order), _gather(lines, order), set(rank[marks].tolist())


def _gather(items: list[str], order: np.ndarray) -> list[str]:
    arr = np.empty(len(items), object)
    arr[:] = items
    return arr[order].tolist()
