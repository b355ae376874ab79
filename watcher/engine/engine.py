"""The engine: one batch of raw messages in, updated state and decisions out.

The same engine runs in the daemon (batches from Kafka) and in ``watcher replay`` (batches from a
JSONL file), so a backtest makes exactly the decisions the daemon would. It does no I/O: the caller
publishes the rejected messages, appends the decisions to the log, and only then commits offsets.
Time is event time throughout: windows and decisions are stamped with the events' own ``ts``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import numpy as np

from watcher.clock import Clock, SystemClock
from watcher.config import Settings
from watcher.contract import (
    Action,
    Decision,
    DecodedBatch,
    Deduplicator,
    Deployment,
    Example,
    Expansion,
    NullOtlp,
    OtlpCounts,
    OtlpDecoder,
    Rejected,
    TurnColumns,
    decode_batch,
)
from watcher.engine import parts, retire
from watcher.engine.coverage import Coverage, roles
from watcher.engine.history import EvidenceHistory, EvidenceMap, RolloutHistory
from watcher.judges import (
    STRATEGIES,
    DriftMonitor,
    DriftSignal,
    PolicySet,
    PolicyState,
    RolloutJudge,
    StrategyRegistry,
    decide,
    layout_change,
    load_policy,
)
from watcher.state import Change, LatenessFilter, MetricsState, Registry, Rollout

_DECIDED = frozenset({Action.ROLLBACK, Action.PROMOTE})  # latched: the policy decides nothing more

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BatchResult:
    turns: int = 0
    deployments: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    drift_signals: list[DriftSignal] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    otlp: OtlpCounts | None = None  # what the batch's OTLP trace requests held, if it had any
    # CPU seconds of the batch per stage (decode, state, judge): watcher_engine_seconds_total, the
    # judge's share of the work (thread time, so other threads' work is not counted)
    seconds: dict[str, float] = field(default_factory=dict)

    def merge(self, other: BatchResult) -> None:
        """Add another engine's result for the same batch (one engine per partition)."""
        self.turns += other.turns
        self.deployments += other.deployments
        self.duplicates += other.duplicates
        self.rejected.extend(other.rejected)
        self.decisions.extend(other.decisions)
        self.drift_signals.extend(other.drift_signals)
        self.changes.extend(other.changes)
        if other.otlp is not None:
            if self.otlp is None:
                self.otlp = OtlpCounts()
            self.otlp.add(other.otlp)
        for stage, s in other.seconds.items():
            self.seconds[stage] = self.seconds.get(stage, 0.0) + s


class Engine:
    def __init__(
        self,
        settings: Settings,
        *,
        policies: PolicySet | None = None,
        strategies: StrategyRegistry = STRATEGIES,
        max_batch_turns: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        # watcher's own clock bounds how far ahead of it a turn's event time may be (state.max_future_s);
        # the rest of the engine runs on event time alone
        self.clock: Clock = clock if clock is not None else SystemClock()
        # the most turns of OTLP requests applied at once (default: a Kafka batch's message count)
        self.max_batch_turns = max_batch_turns or settings.kafka.max_batch_records
        self.policies = policies if policies is not None else load_policy(settings.judge.policy_file)
        self.strategies = strategies  # what each rollout strategy needs (the engine names none)
        self.dedup = Deduplicator(settings.state.dedup_capacity)
        self.state = MetricsState(
            window_seconds=settings.state.window_seconds,
            window_buckets=settings.state.window_buckets,
            max_segment_values=settings.state.max_segment_values,
        )
        self.registry = self._new_registry()
        self.drift = DriftMonitor()
        self.lateness = self._new_lateness()  # per-agent event-time watermarks, and the future bound
        otlp = settings.otlp
        # OTLP trace requests in a batch become turn messages before decoding (watcher.contract.otlp)
        self.otlp: OtlpDecoder | NullOtlp = (
            OtlpDecoder(otlp.mapping, max_message_bytes=otlp.max_message_bytes)
            if otlp.enabled
            else NullOtlp()
        )
        self.history = self.strategies.new_history()  # read by the strategies that compare with the past
        self.judges: dict[str, RolloutJudge] = {}
        self.policy_states: dict[str, PolicyState] = {}
        self.evidence = EvidenceMap()  # rollout id -> the evidence of its last look
        self.coverage: dict[str, Coverage] = {}  # rollout id -> what its judge can use of its traffic
        self.evidence_history = EvidenceHistory()  # each rollout's evidence over time (the report's data)
        self.last_action: dict[str, Action] = {}
        self._last_look: dict[str, float] = {}  # rollout id -> event time of the last evaluation
        self._judges_touched: set[str] = set()  # judges changed since the last checkpoint (parts.changed)
        self._parts_generation = 0  # the dedup generation the last checkpoint wrote
        self._seen: dict[str, float] = {}  # rollout id -> latest event time of the turns its judge got
        # versions that ended rollouts retired (they leave the state when quiet: watcher.engine.retire)
        self.retired_versions: dict[tuple[str, str, str], float] = {}  # -> event time it was retired
        self._next_sweep = -math.inf  # event time of the next retired-version sweep
        # observers of every rollout change, whether from a batch, the HTTP API or a deployer hook
        # (the daemon queues signals for them); called synchronously, before the batch is committed
        self.change_listeners: list[Callable[[Change], None]] = []

    # -- the hot path ---------------------------------------------------------------------------
    def process(self, raws: Sequence[bytes], origins: Sequence[str] | None = None) -> BatchResult:
        spans: Expansion | None = self.otlp.expand(raws, origins)
        if spans is None:
            return self._process(raws, origins)
        # Its OTLP messages replaced by their turns (each with its message's origin). One request may
        # hold hundreds of turns: they are applied in batches of at most max_batch_turns, so the judge
        # looks as often in event time as it does on the same turns sent as JSON.
        result = BatchResult(rejected=list(spans.rejected), otlp=spans.counts)
        raws, origins, step = spans.raws, spans.origins, self.max_batch_turns
        for i in range(0, len(raws), step):
            result.merge(
                self._process(raws[i : i + step], origins[i : i + step] if origins is not None else None)
            )
        return result

    def _process(self, raws: Sequence[bytes], origins: Sequence[str] | None) -> BatchResult:
        started = time.thread_time()
        batch: DecodedBatch = decode_batch(
            raws,
            self.dedup,
            origins=origins,
            max_bytes=self.settings.state.max_event_bytes,
            columnar=not self._reads_whole_turns(),
            check_marker=self.strategies.check_marker,
        )
        # too-early and too-late turns leave the batch, as rejected (lateness.py)
        self.lateness.apply(batch, raws, origins, now=self.clock.now())
        result = BatchResult(
            turns=len(batch.turns),
            deployments=len(batch.deployments),
            duplicates=batch.duplicates,
            rejected=batch.rejected,
            seconds={"decode": time.thread_time() - started},
        )
        # one posted over HTTP and read back from the deployments topic is not applied twice
        fresh = (m for m in batch.deployments if not self.registry.knows(m.event_id))
        markers = sorted(fresh, key=lambda d: d.ts)
        turns = batch.turns
        if not turns:
            for marker in markers:
                result.changes.append(self._apply(marker))
            return result
        cols = batch.columns  # extracted once, read by every consumer below
        if not markers:
            self._turns(cols, result)
            return result
        # Markers take effect at their own event time: the turns before a marker are processed before
        # it, those at or after it after it, whatever the batch boundaries (docs/guarantees.md).
        ts = cols.ts
        done = np.zeros(len(ts), bool)
        for marker in markers:
            before = np.flatnonzero(~done & (ts < marker.ts))
            if len(before):
                done[before] = True
                self._turns(cols.take(before), result)
            result.changes.append(self._apply(marker))
        rest = np.flatnonzero(~done)
        if len(rest):
            self._turns(cols if len(rest) == len(ts) else cols.take(rest), result)
        return result

    def _new_lateness(self) -> LatenessFilter:
        state = self.settings.state
        return LatenessFilter(state.allowed_lateness_s, max_future_s=state.max_future_s)

    def _turns(self, cols: TurnColumns, result: BatchResult) -> None:
        """Route, count and judge a batch's turns (``cols``: theirs)."""
        counting = time.thread_time()
        turns = cols.turns
        arms, started = self.registry.route(turns, cols)
        for change in started:
            self._on_change(change)
        result.changes.extend(started)
        self.state.update(turns, arms, cols)
        routes = self.registry.last_routes
        agents = {(a, e) for (a, e, _, _) in routes}
        if self._needs_history(agents):
            self.history.update(turns, arms, cols)  # blue-green's reference: each version's recent past
        watches = self.drift.watches
        if any(arm == "live" or watches((a, e, v)) for (a, e, v, _), arm in routes.items()):
            result.drift_signals.extend(self.drift.update(turns, arms, cols))
        judging = time.thread_time()
        result.decisions.extend(self._judge(turns, arms, agents, cols))
        done = time.thread_time()
        seconds = result.seconds
        seconds["state"] = seconds.get("state", 0.0) + judging - counting
        seconds["judge"] = seconds.get("judge", 0.0) + done - judging
        wm = self.state.watermark
        if wm is not None and wm >= self._next_sweep:
            self._next_sweep = wm + retire.SWEEP_EVERY_S
            retire.sweep(self, wm)

    def _new_registry(self) -> Registry:
        rollouts = self.settings.rollouts
        return Registry(
            auto_start=rollouts.auto_start,
            auto_canary_weight=rollouts.auto_canary_weight,
            terms=self.strategies.get,
        )

    def _reads_whole_turns(self) -> bool:
        """A judge that reads whole ``Turn`` objects (shadow pairs them): while one runs, the batch is
        decoded into objects at once rather than into columns and then again into objects."""
        return any(
            self.strategies.get(r.strategy).whole_turns and r.rollout_id in self.judges
            for r in self.registry.active_rollouts()
        )

    def _needs_history(self, agents: set[tuple[str, str]]) -> bool:
        """History serves strategies that compare with the past (blue-green switches): it is kept for
        agents running without a rollout (what a switch will be compared with) or in such a rollout,
        not during rollouts whose judges compare with concurrent traffic (it would only cost time)."""
        for agent, env in agents:
            rollout = self.registry.active(agent, env)
            if rollout is None or self.strategies.get(rollout.strategy).history is not None:
                return True
        return False

    def apply_marker(self, marker: Deployment) -> Change | None:
        """A marker from the HTTP API: applied at once; None if its event_id was already seen (by the
        dedup window, or among the markers applied: its copy read back from the deployments topic is
        ignored however long it took to come back)."""
        if self.dedup.seen(marker.event_id) or self.registry.knows(marker.event_id):
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
        self.judges[rollout.rollout_id] = self.strategies.get(rollout.strategy).judge(
            rollout, policy, self.history
        )
        self._judges_touched.add(rollout.rollout_id)
        self.policy_states[rollout.rollout_id] = PolicyState()
        self._last_look.pop(rollout.rollout_id, None)
        self._seen.pop(rollout.rollout_id, None)

    def _retire(self, rollout: Rollout) -> None:
        # the last look's evidence is built now: a deferred one would keep the judge's tables alive
        self.evidence.get(rollout.rollout_id)
        self.judges.pop(rollout.rollout_id, None)
        self.coverage.pop(rollout.rollout_id, None)
        self._last_look.pop(rollout.rollout_id, None)
        self._seen.pop(rollout.rollout_id, None)
        self.policy_states.pop(rollout.rollout_id, None)
        live = rollout.canary_version if rollout.state.value == "promoted" else rollout.baseline_version
        if live:
            self.drift.watch(rollout.agent_id, rollout.environment, live)
        key = (rollout.agent_id, rollout.environment)
        old = retire.retired_version(rollout)
        if old and old != live:
            self.retired_versions[(*key, old)] = rollout.ended_ts or rollout.started_ts
        self.retired_versions.pop((*key, live or ""), None)  # a version rolled back once may be live again

    def _judge(
        self,
        turns: Sequence[Any],
        arms: Sequence[str],
        agents: set[tuple[str, str]],
        cols: TurnColumns | None = None,
    ) -> list[Decision]:
        decisions: list[Decision] = []
        if cols is None:
            cols = TurnColumns(turns)
        # only the rollouts of the batch's agents: a rollout without new turns costs nothing
        judged = [
            r
            for r in self.registry.active_rollouts()
            if (r.agent_id, r.environment) in agents and r.rollout_id in self.judges
        ]
        if not judged:
            return decisions
        per_agent = (
            self._per_agent(cols, [(r.agent_id, r.environment) for r in judged]) if len(agents) > 1 else None
        )
        for j, rollout in enumerate(judged):
            judge = self.judges[rollout.rollout_id]
            if per_agent is None:  # the common case: one agent per partition and batch
                mine, my_arms = cols, arms
            else:  # the turns of this agent
                idx = per_agent[j]
                mine = cols.take(idx)
                my_arms = [arms[i] for i in idx.tolist()]
            weight = rollout.canary_weight if rollout.source == "marker" else self._observed_weight(rollout)
            strategy = self.strategies.get(rollout.strategy)
            if strategy.arms is not None:  # e.g. a flag's variants within one version
                my_arms = strategy.arms(rollout, mine.turns, my_arms, mine)
            treat, ctrl, rest = roles(my_arms, strategy.treatment_arm, strategy.control_arms)
            self._assess(rollout, judge, int(treat.sum()), int(ctrl.sum()), rest)
            rid = rollout.rollout_id
            self._judges_touched.add(rid)
            step = self.settings.judge.evaluate_every_s
            if step <= 0:  # a look after every batch (not independent of the batch boundaries)
                judge.update(mine.turns, my_arms, weight, mine)
                decisions.extend(self._look(rollout, judge, float(mine.ts.max())))
                continue
            # Looks on a fixed event-time grid (rollout start + k * step): the look at a grid point
            # covers exactly the rollout's turns that came before the first turn at or past it, so
            # decisions, their times and their evidence do not depend on where batches are cut.
            ts = mine.ts
            prev = self._seen.get(rid, rollout.started_ts)
            cell = np.floor((np.maximum.accumulate(np.maximum(ts, prev)) - rollout.started_ts) / step)
            self._seen[rid] = max(prev, float(ts.max()))
            cross = np.flatnonzero(np.diff(cell, prepend=math.floor((prev - rollout.started_ts) / step)) > 0)
            at = 0
            for c in cross.tolist():
                if c > at:
                    sub = mine.take(np.arange(at, c))
                    judge.update(sub.turns, my_arms[at:c], weight, sub)
                    at = c
                decisions.extend(self._look(rollout, judge, rollout.started_ts + float(cell[c]) * step))
            if at < len(ts):
                sub = mine if at == 0 else mine.take(np.arange(at, len(ts)))
                judge.update(sub.turns, my_arms[at:], weight, sub)
        return decisions

    def _assess(
        self,
        rollout: Rollout,
        judge: RolloutJudge,
        treatment: int,
        control: int,
        rest: Sequence[str],
    ) -> None:
        """Count what the rollout's judge can use of its traffic; say so when it cannot judge it."""
        rid = rollout.rollout_id
        cov = self.coverage.get(rid)
        if cov is None:
            cov = self.coverage[rid] = Coverage(self.strategies.get(rollout.strategy).control_arms)
        cov.add(treatment, control, list(rest))
        reference = getattr(getattr(judge, "ref", None), "mode", None)  # blue-green's reference
        problem, detail = cov.assess(reference)
        if problem is not cov.problem:
            if problem is not None:
                log.warning("rollout %s is not judged (%s): %s", rid, problem.value, detail)
            elif cov.problem is not None:
                log.info("rollout %s is judged again (%s is over)", rid, cov.problem.value)
        cov.problem, cov.detail = problem, detail

    def _look(self, rollout: Rollout, judge: RolloutJudge, ts: float) -> list[Decision]:
        """Evaluate a rollout's evidence at event time ``ts`` and apply its policy."""
        rid = rollout.rollout_id
        self._last_look[rid] = ts
        look = getattr(judge, "look", None)  # the canary judge: verdict arrays first, rows on demand
        if look is not None:
            lk = look(ts)
            self.evidence.defer(rid, lk.evidence)
            if self.policy_states[rid].action in _DECIDED or not lk.may_decide():
                if self.evidence_history.due(rid, ts):  # decide could not act: rows only for the history
                    self.evidence_history.add(rid, lk.evidence())
                return []
            evidence = lk.evidence()
        else:
            evidence = judge.evidence(ts)
            self.evidence[rid] = evidence
        # the policy the judge runs with: after a reload, a rollout may keep the one it started with
        conduct = self.strategies.get(rollout.strategy).conduct
        decision, new_state = decide(self.policy_states[rid], evidence, judge.policy, rollout.ref(), conduct)
        self.policy_states[rid] = new_state
        if decision is not None and decision.trigger is not None:
            decision = replace(decision, examples=self._examples(judge, decision.trigger))
        if decision is not None or self.evidence_history.due(rid, ts):
            self.evidence_history.add(rid, evidence, decision)
        if decision is None:
            return []
        self.last_action[rid] = decision.action
        return [decision]

    def _examples(self, judge: RolloutJudge, trigger: dict[str, str]) -> tuple[Example, ...]:
        """The treatment's worst conversations behind a decision's trigger, linked to their traces.
        Judges that keep no conversations (the ``examples`` method is optional) give none."""
        cfg = self.settings.judge
        find = getattr(judge, "examples", None)
        if find is None or not cfg.examples or trigger.get("metric") is None:
            return ()
        return tuple(
            Example(cid, value, trace, _link(cfg.trace_link, cid, trace))
            for cid, value, trace in find(trigger["metric"], trigger.get("slice", "all"), cfg.examples)
        )

    def histories(self, rollout_ids: Sequence[str] | None = None) -> list[RolloutHistory]:
        """The rollouts' evidence over time (all known rollouts, oldest first, or these ids)."""
        rollouts = sorted(self.registry.all(), key=lambda r: r.started_ts)
        if rollout_ids is not None:
            rollouts = [r for r in rollouts if r.rollout_id in rollout_ids]
        return [
            self.evidence_history.get(r.to_dict(), gates=self.registry.gates(r.agent_id, r.canary_version))
            for r in rollouts
        ]

    @staticmethod
    def _per_agent(cols: TurnColumns, agents: list[tuple[str, str]]) -> list[np.ndarray]:
        """The indices of each of ``agents``' turns in the batch (ascending), in one pass: a code per
        route key, one stable sort, one split (not a scan of the batch per agent)."""
        at = {ae: i for i, ae in enumerate(agents)}
        lut = np.fromiter((at.get((k[0], k[1]), -1) for k in cols.route_keys), np.intp, len(cols.route_keys))
        code = lut[cols.route_code]
        order = np.argsort(code, kind="stable")
        bounds = np.searchsorted(code[order], np.arange(len(agents) + 1))
        return [order[bounds[i] : bounds[i + 1]] for i in range(len(agents))]

    def _observed_weight(self, rollout: Rollout) -> float:
        """A rollout telemetry started has no announced weight: the treatment's share of the
        conversations seen since its start stands in (the configured guess until there are any).
        The sample-ratio check then has nothing to test, which is right: nobody said what to expect."""
        counts = {"canary": 0, "baseline": 0}
        for key in self.state.series_of(rollout.agent_id, rollout.environment):
            _, _, version, arm, seg_key, _ = key
            if seg_key or arm not in counts:
                continue
            if version in (rollout.canary_version, rollout.baseline_version):
                counts[arm] += self.state.snapshot(key, "cumulative").conversations
        total = counts["canary"] + counts["baseline"]
        if total < 20:
            return rollout.canary_weight
        return min(max(counts["canary"] / total, 0.001), 0.999)

    def replace_policies(self, policies: PolicySet) -> dict[str, str]:
        """Swap the policy set (a configuration reload, ``watcher.service.reload``) without losing any state.

        Rollouts that start from now on use ``policies``. A running judge whose agent's policy changed
        is rebuilt from its own ``to_state()`` with the new policy (as a restore does): its counts,
        sums and e-values are unchanged, its thresholds, tolerances, alpha, actions and promotion rule
        are the new ones from its next look on (the evidence of its last look is recomputed now, so
        the API shows them at once). A judge the new policy would *measure* differently (other enabled
        metrics, segment layout or change-point schedule: ``policy.layout_change``) cannot keep its
        state under it: it keeps the policy it runs with until its rollout ends. Returns those rollout
        ids with the reason. Nothing is replaced if rebuilding any judge fails.
        """
        rebuilt: dict[str, RolloutJudge] = {}
        kept: dict[str, str] = {}
        for rid, judge in self.judges.items():
            ref = judge.rollout
            new = policies.for_agent(ref.agent_id, ref.environment)
            if judge.policy == new:
                continue
            why = layout_change(judge.policy, new)
            if why is not None:
                kept[rid] = why
                continue
            rebuilt[rid] = judge.with_policy(new)
        self.policies = policies
        self.judges.update(rebuilt)
        self._judges_touched.update(rebuilt)
        for rid, judge in rebuilt.items():
            if rid in self._last_look:
                try:
                    self.evidence[rid] = judge.evidence(self._last_look[rid])
                except Exception:
                    log.warning("evidence of %s not recomputed after the policy change", rid, exc_info=True)
        return kept

    def record_override(self, rollout_id: str, decision: Decision, state: PolicyState) -> None:
        self.policy_states[rollout_id] = state
        self.last_action[rollout_id] = decision.action

    # -- checkpoint -----------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """Everything the engine accumulated, as checkpoint parts ``{name: state}`` (``watcher.engine.parts``;
        ``watcher.storage.checkpoint`` stores them with the offsets they cover). The evidence is not
        stored: it is recomputed from the judges."""
        built = (item for item in parts.build(self, parts.names(self)) if item is not None)
        return {name: state() if callable(state) else state for name, state in built}

    def load_state(self, d: dict[str, Any]) -> None:
        """Replace the engine's state by a ``to_state()`` dict (or a checkpoint's v1 document); raises
        ``CheckpointError`` and leaves the engine as it was when it is of another version or malformed."""
        parts.restore(self, d)

    def part_names(self) -> set[str]:
        """The names of every part of the state now."""
        return parts.names(self)

    def take_changed(self) -> set[str]:
        """The parts changed since the last call (the next checkpoint writes only these)."""
        return parts.changed(self)

    def build_parts(self, wanted: set[str]) -> Iterator[tuple[str, Any] | None]:
        """``(name, state)`` of the wanted parts, ``None`` between them (see ``parts.build``)."""
        return parts.build(self, wanted)


def _link(template: str | None, conversation_id: str, trace_id: str | None) -> str | None:
    """An example's link (``judge.trace_link``, ids URL-quoted); None without a template, or when the
    template needs a trace id and the conversation's turns carry none."""
    if template is None or (trace_id is None and "{trace_id}" in template):
        return None
    return template.format(
        conversation_id=quote(conversation_id, safe=""), trace_id=quote(trace_id or "", safe="")
    )
