"""Rollouts: deployment markers, the rollout lifecycle, and which arm a turn belongs to.

A rollout is one comparison inside one (agent, environment): a control version against a treatment
version with a strategy and an expected treatment share. It starts with a ``started`` marker (from
Kafka or ``POST /v1/deployments``) or by itself when telemetry shows a ``canary`` arm next to a known
baseline; it ends promoted, rolled back or aborted. One rollout at a time is active per
(agent, environment): a new ``started`` marker supersedes (aborts) the running one.

A ``gated`` marker records what a pre-production gate (``watcher gate``) concluded about a version in
an environment; it changes no rollout, and the rollout of that version shows it (``gates``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Protocol

from watcher.contract import RolloutRef, TurnColumns


class RolloutState(str, Enum):
    RUNNING = "running"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


ENDED = frozenset({RolloutState.PROMOTED, RolloutState.ROLLED_BACK, RolloutState.ABORTED})

# marker action -> the state it moves a rollout to
_TRANSITIONS = {
    "paused": RolloutState.PAUSED,
    "resumed": RolloutState.RUNNING,
    "promoted": RolloutState.PROMOTED,
    "rolled_back": RolloutState.ROLLED_BACK,
    "aborted": RolloutState.ABORTED,
}
MAX_MARKERS_PER_ROLLOUT = 200
MAX_ENDED_ROLLOUTS = 200
MAX_GATED_VERSIONS = 1000  # versions whose gate verdicts are kept (the oldest recorded is dropped)
MAX_GATES_PER_VERSION = 20


class Marker(Protocol):
    """What the registry reads of a deployment marker (``events.Deployment``; read-only, so that its
    ``Literal`` fields satisfy these ``str`` ones)."""

    @property
    def event_id(self) -> str: ...

    @property
    def ts(self) -> float: ...

    @property
    def agent_id(self) -> str: ...

    @property
    def environment(self) -> str: ...

    @property
    def action(self) -> str: ...

    @property
    def strategy(self) -> str | None: ...

    @property
    def baseline_version(self) -> str | None: ...

    @property
    def canary_version(self) -> str | None: ...

    @property
    def canary_weight(self) -> float | None: ...

    @property
    def actor(self) -> str | None: ...


class StrategyTerms(Protocol):
    """What the registry needs to know of a rollout strategy (``watcher.judges.strategies`` registers
    them; the registry itself names none)."""

    @property
    def treatment_arm(self) -> str:
        """The arm of the treatment version's turns that carry none ("canary", "shadow")."""
        ...

    @property
    def start_weight(self) -> float | None:
        """The treatment's share when the start marker gives none (None: ``auto_canary_weight``)."""
        ...


@dataclass(frozen=True, slots=True)
class PlainTerms:
    """The terms of a strategy the registry is told nothing about: a canary's."""

    treatment_arm: str = "canary"
    start_weight: float | None = None


class TurnLike(Protocol):
    agent_id: str
    environment: str
    version: str
    arm: str | None
    ts: float


@dataclass(frozen=True, slots=True)
class Rollout:
    rollout_id: str
    agent_id: str
    environment: str
    strategy: str
    baseline_version: str | None
    canary_version: str | None
    canary_weight: float
    state: RolloutState
    started_ts: float
    ended_ts: float | None = None
    flag: dict[str, str] | None = None
    source: str = "marker"  # "marker" | "auto"
    markers: tuple[dict[str, Any], ...] = ()

    @property
    def active(self) -> bool:
        return self.state not in ENDED

    def ref(self) -> RolloutRef:
        return RolloutRef(
            rollout_id=self.rollout_id,
            agent_id=self.agent_id,
            environment=self.environment,
            strategy=self.strategy,
            baseline_version=self.baseline_version,
            canary_version=self.canary_version,
            canary_weight=self.canary_weight,
            flag=self.flag,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "agent_id": self.agent_id,
            "environment": self.environment,
            "strategy": self.strategy,
            "baseline_version": self.baseline_version,
            "canary_version": self.canary_version,
            "canary_weight": self.canary_weight,
            "state": self.state.value,
            "started_ts": self.started_ts,
            "ended_ts": self.ended_ts,
            "flag": self.flag,
            "source": self.source,
            "markers": list(self.markers),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rollout:
        return cls(
            rollout_id=d["rollout_id"],
            agent_id=d["agent_id"],
            environment=d["environment"],
            strategy=d["strategy"],
            baseline_version=d["baseline_version"],
            canary_version=d["canary_version"],
            canary_weight=float(d["canary_weight"]),
            state=RolloutState(d["state"]),
            started_ts=float(d["started_ts"]),
            ended_ts=d["ended_ts"],
            flag=d.get("flag"),
            source=d.get("source", "marker"),
            markers=tuple(d.get("markers", ())),
        )


@dataclass(frozen=True, slots=True)
class Change:
    """What applying a marker (or observing telemetry) did to the registry."""

    kind: str  # "started" | "rebased" | "updated" | "ended" | "orphan" | "gated"
    rollout: Rollout | None
    superseded: Rollout | None = None
    note: str = ""  # what the marker did not change, and why (shown to whoever posted it)


def rollout_id(
    agent_id: str, environment: str, strategy: str, canary_version: str | None, started_ts: float
) -> str:
    """Stable for the same marker, so a replay names rollouts the same way."""
    key = f"{agent_id}|{environment}|{strategy}|{canary_version}|{started_ts:.3f}"
    return "ro-" + hashlib.sha256(key.encode()).hexdigest()[:16]


MARKER_IDS = 10_000  # markers are rare (a few per rollout): days of them


class Registry:
    """The rollouts watcher knows, and the last known baseline version per (agent, environment)."""

    def __init__(
        self,
        *,
        auto_start: bool = True,
        auto_canary_weight: float = 0.1,
        terms: Callable[[str], StrategyTerms] = lambda strategy: PlainTerms(),
    ) -> None:
        self._auto_start = auto_start
        self._auto_weight = auto_canary_weight
        self._terms = terms  # strategy name -> its terms (the engine passes the strategy registry's)
        self._active: dict[tuple[str, str], Rollout] = {}
        self._ended: dict[str, Rollout] = {}
        self._baselines: dict[tuple[str, str], str] = {}
        # the last batch's distinct (agent, environment, version, arm) -> resolved arm
        self.last_routes: dict[tuple[str, str, str, str | None], str] = {}
        # (agent, env, action, version) -> event time of the last such marker; Grafana draws these
        self.marker_times: dict[tuple[str, str, str, str], float] = {}
        # the event ids of the markers applied, newest last (bounded): a marker reaches watcher twice,
        # over HTTP and read back from the deployments topic (or published twice after a lost
        # acknowledgement), maybe after the dedup window forgot it; it is applied once
        self.marker_ids: dict[str, None] = {}
        # (agent, version) -> the gate verdicts recorded for it, oldest first (``gated`` markers)
        self._gates: dict[tuple[str, str], list[dict[str, Any]]] = {}

    # -- markers --------------------------------------------------------------------------------
    def knows(self, event_id: str) -> bool:
        """Whether a marker with this event id was applied (among the last ``MARKER_IDS``)."""
        return event_id in self.marker_ids

    def apply(self, marker: Marker) -> Change:
        self.marker_ids[marker.event_id] = None
        if len(self.marker_ids) > MARKER_IDS:
            del self.marker_ids[next(iter(self.marker_ids))]
        key = (marker.agent_id, marker.environment)
        version = marker.canary_version or marker.baseline_version or ""
        self.marker_times[(marker.agent_id, marker.environment, marker.action, version)] = marker.ts
        record = _marker_record(marker)
        if marker.action == "gated":
            self._record_gate(marker)
            return Change("gated", None)
        current = self._active.get(key)
        if marker.action == "started":
            if current is not None and current.canary_version == marker.canary_version:
                if current.source == "auto":
                    return self._adopt(key, current, record, marker)
                return self._update(key, current, record, marker)  # a repeated start marker
            superseded = self._end(key, RolloutState.ABORTED, marker.ts, record) if current else None
            strategy = marker.strategy or "canary"
            flag = getattr(marker, "flag", None)
            rollout = Rollout(
                rollout_id=rollout_id(
                    marker.agent_id, marker.environment, strategy, marker.canary_version, marker.ts
                ),
                agent_id=marker.agent_id,
                environment=marker.environment,
                strategy=strategy,
                baseline_version=marker.baseline_version or self._baselines.get(key),
                canary_version=marker.canary_version,
                canary_weight=_weight(marker.canary_weight, self._default_weight(strategy)),
                state=RolloutState.RUNNING,
                started_ts=marker.ts,
                flag=_flag_dict(flag),
                markers=(record,),
            )
            self._active[key] = rollout
            if rollout.baseline_version:
                self._baselines[key] = rollout.baseline_version
            return Change("started", rollout, superseded)
        if current is None:
            return Change("orphan", None)
        if marker.action == "weight_changed":
            return self._update(key, current, record, marker)
        target = _TRANSITIONS.get(marker.action)
        if target is None:
            return Change("orphan", None)
        if target in ENDED:
            return Change("ended", self._end(key, target, marker.ts, record))
        updated = replace(current, state=target, markers=_append(current.markers, record))
        self._active[key] = updated
        return Change("updated", updated)

    def _default_weight(self, strategy: str) -> float:
        weight = self._terms(strategy).start_weight
        return self._auto_weight if weight is None else weight

    # -- telemetry ------------------------------------------------------------------------------
    def route(
        self, turns: Sequence[TurnLike], columns: TurnColumns | None = None
    ) -> tuple[list[str], list[Change]]:
        """Resolve every turn's arm (parallel list) and start rollouts that telemetry reveals.

        Work is per distinct (agent, environment, version, arm) of the batch, not per turn: the
        batch's ``columns`` (built here when not given) number the keys once for every consumer.
        """
        cols = columns if columns is not None else TurnColumns(turns)
        combos = cols.route_keys
        changes: list[Change] = []
        first: list[int] | None = None
        for j, (agent, env, version, arm) in enumerate(combos):
            key = (agent, env)
            if arm in ("baseline", "live"):
                active = self._active.get(key)
                if active is None or active.baseline_version in (None, version):
                    self._baselines[key] = version
                if active is not None and active.baseline_version is None and arm == "baseline":
                    self._active[key] = replace(active, baseline_version=version)
            elif arm == "canary" and self._auto_start and key not in self._active:
                baseline = self._baselines.get(key)
                if baseline is not None and baseline != version:
                    if first is None:
                        first = cols.route_first.tolist()
                    changes.append(self._auto(agent, env, baseline, version, turns[first[j]].ts))
        resolved = [self._arm(*k) for k in combos]
        self.last_routes = dict(zip(combos, resolved))
        arms = list(map(resolved.__getitem__, cols.route_code.tolist()))
        cols.routed = (arms, resolved)
        return arms, changes

    def _arm(self, agent: str, env: str, version: str, arm: str | None) -> str:
        """A turn's role in the active rollout. ``canary``, ``baseline`` and ``shadow`` are taken as
        labelled; null and ``live`` (the turn served customers, nothing more) are resolved by version:
        during a blue-green switch or a canary, a router that knows only live traffic labels both
        versions ``live``, and each is still judged as what it is."""
        if arm is not None and arm != "live":
            return arm
        active = self._active.get((agent, env))
        if active is not None:
            if version == active.canary_version:
                treatment = self._terms(active.strategy).treatment_arm
                if treatment == "shadow" and arm == "live":
                    return "live"  # a shadow version that served customers is not a shadow answer
                return treatment
            if version == active.baseline_version:
                return "baseline"
        return "live"

    def _auto(self, agent: str, env: str, baseline: str, canary: str, ts: float) -> Change:
        record = {"action": "started", "ts": ts, "actor": "watcher", "notes": "canary arm seen in telemetry"}
        rollout = Rollout(
            rollout_id=rollout_id(agent, env, "canary", canary, ts),
            agent_id=agent,
            environment=env,
            strategy="canary",
            baseline_version=baseline,
            canary_version=canary,
            canary_weight=self._auto_weight,
            state=RolloutState.RUNNING,
            started_ts=ts,
            source="auto",
            markers=(record,),
        )
        self._active[(agent, env)] = rollout
        self.marker_times[(agent, env, "started", canary)] = ts
        return Change("started", rollout)

    # -- queries --------------------------------------------------------------------------------
    def active(self, agent_id: str, environment: str) -> Rollout | None:
        return self._active.get((agent_id, environment))

    def active_rollouts(self) -> list[Rollout]:
        return list(self._active.values())

    def all(self) -> list[Rollout]:
        return sorted(
            [*self._active.values(), *self._ended.values()], key=lambda r: r.started_ts, reverse=True
        )

    def get(self, rollout_id_: str) -> Rollout | None:
        for r in self._active.values():
            if r.rollout_id == rollout_id_:
                return r
        return self._ended.get(rollout_id_)

    def baseline(self, agent_id: str, environment: str) -> str | None:
        return self._baselines.get((agent_id, environment))

    def gates(self, agent_id: str, version: str | None) -> list[dict[str, Any]]:
        """The gate verdicts recorded for a version (any environment), oldest first."""
        return list(self._gates.get((agent_id, version or ""), ()))

    def _record_gate(self, marker: Marker) -> None:
        gate = getattr(marker, "gate", None)
        key = (marker.agent_id, marker.canary_version or "")
        entry = {
            "environment": marker.environment,
            "verdict": getattr(gate, "verdict", None),
            "decision_id": getattr(gate, "decision_id", None),
            "baseline_version": marker.baseline_version,
            "ts": marker.ts,
            "actor": marker.actor,
            "event_id": marker.event_id,
        }
        entries = self._gates.pop(key, [])  # re-inserted: the most recently gated version is kept longest
        self._gates[key] = [*entries, entry][-MAX_GATES_PER_VERSION:]
        while len(self._gates) > MAX_GATED_VERSIONS:
            del self._gates[next(iter(self._gates))]

    def forget_version(self, agent_id: str, environment: str, version: str) -> None:
        """A retired version's marker times leave /metrics (the rollouts that name it stay, bounded)."""
        for key in [k for k in self.marker_times if k[3] == version and k[:2] == (agent_id, environment)]:
            del self.marker_times[key]

    # -- persistence ----------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {
            "v": 1,
            "active": [r.to_dict() for r in self._active.values()],
            "ended": [r.to_dict() for r in self._ended.values()],
            "baselines": [[a, e, v] for (a, e), v in self._baselines.items()],
            "marker_times": [[*k, ts] for k, ts in self.marker_times.items()],
            "marker_ids": list(self.marker_ids),
            "gates": [[a, v, entries] for (a, v), entries in self._gates.items()],
        }

    def load_state(self, d: dict[str, Any]) -> None:
        if d.get("v") != 1:
            raise ValueError(f"unsupported rollout registry state version {d.get('v')!r}")
        self._active = {(r.agent_id, r.environment): r for r in map(Rollout.from_dict, d["active"])}
        self._ended = {r.rollout_id: r for r in map(Rollout.from_dict, d["ended"])}
        self._baselines = {(a, e): v for a, e, v in d["baselines"]}
        self.marker_times = {(a, e, act, v): float(ts) for a, e, act, v, ts in d["marker_times"]}
        self.marker_ids = dict.fromkeys(map(str, d.get("marker_ids", ())))  # absent before v1.1
        self._gates = {(a, v): list(entries) for a, v, entries in d.get("gates", [])}  # absent before gates

    # -- internals ------------------------------------------------------------------------------
    def _update(
        self, key: tuple[str, str], current: Rollout, record: dict[str, Any], marker: Marker
    ) -> Change:
        weight = current.canary_weight if marker.canary_weight is None else float(marker.canary_weight)
        note = ""
        newest = max((m["ts"] for m in current.markers if m.get("canary_weight") is not None), default=None)
        if marker.canary_weight is not None and newest is not None and marker.ts < newest:
            # markers arrive out of order (topics, retries, a copied example): the weight is the
            # newest marker's in event time, not the last one to arrive
            weight = current.canary_weight
            note = f"canary_weight {marker.canary_weight} not applied: a newer marker (ts {newest}) set it"
        updated = replace(current, canary_weight=weight, markers=_append(current.markers, record))
        self._active[key] = updated
        return Change("updated", updated, note=note)

    def _adopt(
        self, key: tuple[str, str], current: Rollout, record: dict[str, Any], marker: Marker
    ) -> Change:
        """The start marker of a rollout telemetry revealed first (markers and telemetry travel in
        different topics, so their order is not guaranteed): the marker's weight and versions replace
        the guesses, and the comparison starts again from the marker ("rebased")."""
        adopted = replace(
            current,
            strategy=marker.strategy or current.strategy,
            baseline_version=marker.baseline_version or current.baseline_version,
            canary_weight=_weight(marker.canary_weight, current.canary_weight),
            started_ts=marker.ts,
            source="marker",
            markers=_append(current.markers, record),
        )
        self._active[key] = adopted
        return Change("rebased", adopted)

    def _end(self, key: tuple[str, str], state: RolloutState, ts: float, record: dict[str, Any]) -> Rollout:
        current = self._active.pop(key)
        ended = replace(current, state=state, ended_ts=ts, markers=_append(current.markers, record))
        if state is RolloutState.PROMOTED and ended.canary_version:
            self._baselines[key] = ended.canary_version
        self._ended[ended.rollout_id] = ended
        while len(self._ended) > MAX_ENDED_ROLLOUTS:
            del self._ended[next(iter(self._ended))]
        return ended


def _marker_record(marker: Marker) -> dict[str, Any]:
    return {
        "event_id": marker.event_id,
        "action": marker.action,
        "ts": marker.ts,
        "canary_weight": marker.canary_weight,
        "actor": marker.actor,
    }


def _append(markers: tuple[dict[str, Any], ...], record: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    return (*markers, record)[-MAX_MARKERS_PER_ROLLOUT:]


def _weight(value: float | None, default: float) -> float:
    return default if value is None else float(value)


def _flag_dict(flag: Any) -> dict[str, str] | None:
    if flag is None:
        return None
    if isinstance(flag, dict):
        return {str(k): str(v) for k, v in flag.items()}
    return {"name": flag.name, "control": flag.control, "treatment": flag.treatment}
