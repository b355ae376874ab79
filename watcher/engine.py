"""The engine: one batch of raw messages in, updated state and decisions out.

The same engine runs in the daemon (batches from Kafka) and in ``watcher replay`` (batches from a
JSONL file), so a backtest makes exactly the decisions the daemon would. It does no I/O: the caller
publishes the rejected messages, appends the decisions to the log, and only then commits offsets.
Time is event time throughout: windows and decisions are stamped with the events' own ``ts``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from watcher.config import Settings
from watcher.drift import DriftMonitor, DriftSignal
from watcher.events import DecodedBatch, Deduplicator, Deployment, Rejected, TurnColumns, decode_batch
from watcher import strategies
from watcher.policy import PolicySet, PolicyState, decide, load_policy
from watcher.rollouts import Change, Registry, Rollout
from watcher.state import MetricsState
from watcher.verdicts import Action, Decision, RolloutEvidence



@dataclass(slots=True)
class BatchResult:
    turns: int = 0
    deployments: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    drift_signals: list[DriftSignal] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)


class Engine:
    def __init__(self, settings: Settings, *, policies: PolicySet | None = None) -> None:
        self.settings = settings
        self.policies = policies if policies is not None else load_policy(settings.judge.policy_file)
        self.dedup = Deduplicator(settings.state.dedup_capacity)
        self.state = MetricsState(
            window_seconds=settings.state.window_seconds,
            window_buckets=settings.state.window_buckets,
            max_segment_values=settings.state.max_segment_values,
        )
        self.registry = Registry(
            auto_start=settings.rollouts.auto_start, auto_canary_weight=settings.rollouts.auto_canary_weight
        )
        self.drift = DriftMonitor()
        self.history = strategies.VersionHistory()
        self.judges: dict[str, strategies.RolloutJudge] = {}
        self.policy_states: dict[str, PolicyState] = {}
        self.evidence: dict[str, RolloutEvidence] = {}
        self.last_action: dict[str, Action] = {}
        self._last_look: dict[str, float] = {}  # rollout id -> event time of the last evaluation
        # observers of every rollout change, whether from a batch, the HTTP API or a deployer hook
        # (the daemon queues signals for them); called synchronously, before the batch is committed
        self.change_listeners: list[Callable[[Change], None]] = []

    # -- the hot path ---------------------------------------------------------------------------
    def process(self, raws: Sequence[bytes], origins: Sequence[str] | None = None) -> BatchResult:
        batch: DecodedBatch = decode_batch(
            raws, self.dedup, origins=origins, max_bytes=self.settings.state.max_event_bytes
        )
        result = BatchResult(
            turns=len(batch.turns),
            deployments=len(batch.deployments),
            duplicates=batch.duplicates,
            rejected=batch.rejected,
        )
        for marker in sorted(batch.deployments, key=lambda d: d.ts):
            result.changes.append(self._apply(marker))
        turns = batch.turns
        if turns:
            cols = batch.columns  # extracted once, read by every consumer below
            arms, started = self.registry.route(turns, cols)
            for change in started:
                self._on_change(change)
            result.changes.extend(started)
            self.state.update(turns, arms, cols)
            routes = self.registry.last_routes
            agents = {(a, e) for (a, e, _, _) in routes}
            if self._needs_history(agents):
                self.history.update(turns, arms)  # blue-green's reference: each version's recent past
            watched = self.drift.watched()
            if any(arm == "live" or (a, e, v) in watched for (a, e, v, _), arm in routes.items()):
                result.drift_signals.extend(self.drift.update(turns, arms, cols))
            result.decisions.extend(self._judge(turns, arms, agents, cols))
        return result

    def _needs_history(self, agents: set[tuple[str, str]]) -> bool:
        """History serves blue-green switches: it is kept for agents running without a rollout (what
        a switch will be compared with) or in a blue-green one, not during canary, shadow or flag
        rollouts, whose judges compare with concurrent traffic (and where it would only cost time)."""
        for agent, env in agents:
            rollout = self.registry.active(agent, env)
            if rollout is None or rollout.strategy == "blue_green":
                return True
        return False

    def apply_marker(self, marker: Deployment) -> Change | None:
        """A marker from the HTTP API: applied at once; None if its event_id was already seen."""
        if self.dedup.seen(marker.event_id):
            return None
        return self._apply(marker)

    # -- rollouts and the judge -----------------------------------------------------------------
    def _apply(self, marker: Deployment) -> Change:
        change = self.registry.apply(marker)
        self._on_change(change)
        return change

    def _on_change(self, change: Change) -> None:
        for listener in self.change_listeners:
            listener(change)
        if change.superseded is not None:
            self._retire(change.superseded)
        rollout = change.rollout
        if rollout is None:
            return
        if change.kind == "rebased" and rollout.rollout_id not in self.last_action:
            # the auto-started comparison ran on a guessed weight: start it again on the marker's
            self._start_judge(rollout)
        elif change.kind == "started":
            self.state.reset_cumulative(rollout.agent_id, rollout.environment)
            for version in (rollout.baseline_version, rollout.canary_version):
                if version:
                    self.drift.unwatch(rollout.agent_id, rollout.environment, version)
            self._start_judge(rollout)
        elif change.kind == "ended":
            self._retire(rollout)

    def _start_judge(self, rollout: Rollout) -> None:
        policy = self.policies.for_agent(rollout.agent_id, rollout.environment)
        judge = strategies.judge_for(rollout, policy, self.history)  # canary, shadow, blue-green, flag
        if judge is None:
            return
        self.judges[rollout.rollout_id] = judge
        self.policy_states[rollout.rollout_id] = PolicyState()
        self._last_look.pop(rollout.rollout_id, None)

    def _retire(self, rollout: Rollout) -> None:
        self.judges.pop(rollout.rollout_id, None)
        self._last_look.pop(rollout.rollout_id, None)
        self.policy_states.pop(rollout.rollout_id, None)
        live = rollout.canary_version if rollout.state.value == "promoted" else rollout.baseline_version
        if live:
            self.drift.watch(rollout.agent_id, rollout.environment, live)

    def _judge(self, turns: Sequence[Any], arms: Sequence[str], agents: set[tuple[str, str]],
               cols: TurnColumns | None = None) -> list[Decision]:
        decisions: list[Decision] = []
        if cols is None:
            cols = TurnColumns(turns)
        for rollout in self.registry.active_rollouts():
            judge = self.judges.get(rollout.rollout_id)
            if judge is None:
                continue
            agent, env = rollout.agent_id, rollout.environment
            if (agent, env) not in agents:
                continue
            if len(agents) == 1:  # the common case: one agent per partition and batch
                mine, my_arms = cols, arms
            else:  # the turns of this agent, selected per route key
                lut = np.fromiter([k[0] == agent and k[1] == env for k in cols.route_keys], bool)
                idx = np.flatnonzero(lut[cols.route_code])
                mine = cols.take(idx)
                my_arms = [arms[i] for i in idx.tolist()]
            judge.update(mine.turns, strategies.arms_for(rollout, mine.turns, my_arms), rollout.canary_weight, mine)
            ts = float(mine.ts.max())
            last = self._last_look.get(rollout.rollout_id)
            if last is not None and ts - last < self.settings.judge.evaluate_every_s:
                continue
            self._last_look[rollout.rollout_id] = ts
            evidence = judge.evidence(ts)
            self.evidence[rollout.rollout_id] = evidence
            policy = self.policies.for_agent(agent, env)
            decision, new_state = decide(self.policy_states[rollout.rollout_id], evidence, policy, rollout.ref())
            self.policy_states[rollout.rollout_id] = new_state
            if decision is not None:
                self.last_action[rollout.rollout_id] = decision.action
                decisions.append(decision)
        return decisions

    def record_override(self, rollout_id: str, decision: Decision, state: PolicyState) -> None:
        self.policy_states[rollout_id] = state
        self.last_action[rollout_id] = decision.action
