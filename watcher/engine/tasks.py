"""Per-partition tasks: an instance's state split by Kafka partition, so several instances can share
a consumer group and hand state over when partitions move.

Producers key telemetry (and markers) by ``agent_id``, so one agent lives in one partition, and
every series, rollout, judge and policy state belongs to exactly one partition. With
``checkpoint.scope: partition`` the daemon keeps one ``Engine`` per partition *number* it owns (a
"task", as Kafka Streams calls it): partition ``p`` of the telemetry topic and partition ``p`` of the
deployments topic feed task ``p`` (the two topics must be co-partitioned: same partition count,
same key; the range assignor then gives both to the same member). Each task is checkpointed on its
own row (``partition-<p>``) of a store the instances share, with the offsets of its partitions; when
a partition is revoked its task is checkpointed, committed and dropped, and when it is assigned the
task is rebuilt from that row. A single instance with every partition makes exactly the decisions
the group makes: the tasks are independent.

``Tasks`` is also the read view the HTTP API, the Prometheus collector, the deployer hooks and the
demo use: it answers like one ``Engine`` (``registry``, ``state``, ``evidence``, ``last_action``...)
by looking through the tasks.
"""

from __future__ import annotations

import contextlib
from collections import ChainMap
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from watcher.contract import Decision, Deployment
from watcher.engine.engine import Engine
from watcher.engine.history import RolloutHistory
from watcher.judges import PolicySet, PolicyState
from watcher.state import Change, MetricsState, Rollout, SeriesKey, SeriesSnapshot, Window

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SCOPE_PREFIX", "Tasks", "partition_for", "scope_of"]

SCOPE_PREFIX = "partition-"


def scope_of(partition: int) -> str:
    """The checkpoint row of a partition's task."""
    return f"{SCOPE_PREFIX}{partition}"


def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java's and aiokafka's: murmur2 of the key bytes)
    puts a message keyed ``key`` in, among ``partitions``."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


class Tasks:
    """The engines of the partitions this instance owns, and one read view across them."""

    def __init__(self, new_engine: Callable[[], Engine], policies: PolicySet | None = None) -> None:
        self._new_engine = new_engine
        self.policies = policies  # what new tasks start with (a reload replaces it)
        self.engines: dict[int, Engine] = {}
        # partitions of the telemetry topic, from the cluster metadata: where an agent's markers
        # posted over HTTP belong (None until known)
        self.partition_count: int | None = None

    # -- ownership ------------------------------------------------------------------------------
    def create(self, partition: int) -> Engine:
        engine = self._new_engine()
        self.engines[partition] = engine
        return engine

    def drop(self, partition: int) -> Engine | None:
        return self.engines.pop(partition, None)

    def get(self, partition: int) -> Engine | None:
        return self.engines.get(partition)

    def partitions(self) -> list[int]:
        return sorted(self.engines)

    def owner_of_agent(self, agent_id: str) -> Engine | None:
        """The task an agent's partition maps to, if this instance owns it (None when the partition
        count is not known yet or another instance owns it)."""
        if self.partition_count is None:
            return self.engines.get(0) if len(self.engines) == 1 and 0 in self.engines else None
        return self.engines.get(partition_for(agent_id, self.partition_count))

    def owner_of_rollout(self, rollout_id: str) -> Engine | None:
        for engine in self.engines.values():
            if engine.registry.get(rollout_id) is not None:
                return engine
        return None

    # -- what the API and hooks change ----------------------------------------------------------
    def apply_marker(self, marker: Deployment) -> Change | None:
        """Applied by the task that owns the marker's agent. When another instance owns it, the
        change is ``forwarded``: the caller publishes the marker to the deployments topic (it always
        does), and the owner applies it from there."""
        engine = self.owner_of_agent(marker.agent_id)
        if engine is None:
            return Change("forwarded", None)
        return engine.apply_marker(marker)

    def record_override(self, rollout_id: str, decision: Decision, state: PolicyState) -> None:
        engine = self.owner_of_rollout(rollout_id)
        if engine is not None:
            engine.record_override(rollout_id, decision, state)

    def replace_policies(self, policies: PolicySet) -> dict[str, str]:
        """A reloaded policy set for every task and the tasks to come (running judges keep their
        statistics); returns the rollouts that keep their old policy, with the reason."""
        kept: dict[str, str] = {}
        for engine in self.engines.values():
            kept.update(engine.replace_policies(policies))
        self.policies = policies
        return kept

    # -- the read view: answers like one Engine ------------------------------------------------
    @property
    def registry(self) -> _Registries:
        return _Registries(self)

    @property
    def state(self) -> _States:
        return _States(self)

    @property
    def evidence(self) -> ChainMap[str, Any]:
        return ChainMap(*(e.evidence for e in self.engines.values()))

    def histories(self, rollout_ids: Sequence[str] | None = None) -> list[RolloutHistory]:
        out = [h for e in self.engines.values() for h in e.histories(rollout_ids)]
        return sorted(out, key=lambda h: h.rollout["started_ts"])

    @property
    def coverage(self) -> ChainMap[str, Any]:
        return ChainMap(*(e.coverage for e in self.engines.values()))

    @property
    def last_action(self) -> ChainMap[str, Any]:
        return ChainMap(*(e.last_action for e in self.engines.values()))

    @property
    def policy_states(self) -> ChainMap[str, Any]:
        return ChainMap(*(e.policy_states for e in self.engines.values()))

    @property
    def judges(self) -> ChainMap[str, Any]:
        return ChainMap(*(e.judges for e in self.engines.values()))


class _Registries:
    """The rollouts of every task (an agent's rollouts are all in its own task)."""

    def __init__(self, tasks: Tasks) -> None:
        self._tasks = tasks

    def _all(self) -> Iterator[Any]:
        return (e.registry for e in self._tasks.engines.values())

    def all(self) -> list[Rollout]:
        return [r for reg in self._all() for r in reg.all()]

    def get(self, rollout_id: str) -> Rollout | None:
        for reg in self._all():
            rollout = reg.get(rollout_id)
            if rollout is not None:
                return rollout
        return None

    def active(self, agent_id: str, environment: str) -> Rollout | None:
        for reg in self._all():
            rollout = reg.active(agent_id, environment)
            if rollout is not None:
                return rollout
        return None

    def active_rollouts(self) -> list[Rollout]:
        return [r for reg in self._all() for r in reg.active_rollouts()]

    def gates(self, agent_id: str, version: str | None) -> list[dict[str, Any]]:
        return [g for reg in self._all() for g in reg.gates(agent_id, version)]

    @property
    def marker_times(self) -> dict[tuple[str, str, str, str], float]:
        merged: dict[tuple[str, str, str, str], float] = {}
        for reg in self._all():
            merged.update(reg.marker_times)
        return merged


class _States:
    """The per-series state of every task, read-only."""

    def __init__(self, tasks: Tasks) -> None:
        self._tasks = tasks
        self._owner: dict[SeriesKey, Any] = {}

    def keys(self) -> list[SeriesKey]:
        out: list[SeriesKey] = []
        for engine in self._tasks.engines.values():
            keys = engine.state.keys()
            for key in keys:
                self._owner[key] = engine.state
            out.extend(keys)
        return out

    def snapshot(self, key: SeriesKey, window: Window = "cumulative") -> SeriesSnapshot:
        owner = self._tasks.owner_of_agent(key[0])  # where the agent's partition says, at once
        if owner is not None:
            with contextlib.suppress(KeyError):
                return owner.state.snapshot(key, window)
        state = self._owner.get(key)  # else a pass over every task's series, once per view
        if state is None:
            self.keys()
            state = self._owner[key]  # KeyError for an unknown series, as MetricsState raises
        return state.snapshot(key, window)

    def traffic_share(
        self, agent_id: str, environment: str, window: Window = "cumulative"
    ) -> dict[Any, float]:
        for engine in self._tasks.engines.values():
            share = engine.state.traffic_share(agent_id, environment, window)
            if share:
                return share
        return {}

    def take_dirty(self) -> set[tuple[str, str]]:
        """Across the tasks (a task dropped at a rebalance takes its series with it: the exposition
        sees them gone from ``keys``)."""
        out: set[tuple[str, str]] = set()
        for engine in self._tasks.engines.values():
            out |= engine.state.take_dirty()
        return out

    @property
    def watermark(self) -> float | None:
        marks = [e.state.watermark for e in self._tasks.engines.values() if e.state.watermark is not None]
        return max(marks) if marks else None

    def summary_frame(self, window: Window = "cumulative") -> pd.DataFrame:
        import pandas as pd  # lazily: pandas costs a second of start-up, only reports need it

        frames = [e.state.summary_frame(window) for e in self._tasks.engines.values()]
        filled = [f for f in frames if not f.empty]
        if not filled:  # an empty frame with the columns (no task yet: an empty state's)
            return frames[0] if frames else MetricsState().summary_frame(window)
        return pd.concat(filled)
