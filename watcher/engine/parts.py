"""The engine's state as checkpoint parts, so that a checkpoint writes only what changed.

A checkpoint of thousands of agents is too large to rewrite every few seconds (issue #13: 2,000 agents
took 12 s per checkpoint). The state is cut into named parts, each a msgpack-able value:

* ``engine``: rollouts, policy states, last actions and looks, lateness watermarks, the policy each
  judge runs with (small, changes with every batch);
* ``metrics``: the per-series state's settings and watermark; ``series/<agent, environment>``: one
  agent's series (``MetricsState.agent_state``), written again only when a batch touched the agent;
* ``judge/<rollout id>``: one running judge, written again only when it got turns or was rebuilt;
* ``dedup`` (the current generation of event ids) and ``dedup-previous`` (the previous one, which
  changes only when the window rotates);
* ``history`` (blue-green's reference) and ``drift`` (the detectors).

``changed`` names the parts to write since the last checkpoint; the store keeps the others as they
were, and deletes the parts that are gone (a retired judge, an agent without series).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from watcher.contract import Action, Deduplicator
from watcher.engine.history import EvidenceMap
from watcher.errors import CheckpointError, ConfigError
from watcher.judges import (
    DriftMonitor,
    PolicyState,
    RolloutJudge,
    layout_change,
    policy_from_doc,
    policy_to_doc,
)
from watcher.state import MetricsState, VersionHistory

if TYPE_CHECKING:
    from watcher.engine.engine import Engine

__all__ = ["ENGINE_PARTS_VERSION", "LATER", "build", "changed", "names", "restore"]

log = logging.getLogger(__name__)

ENGINE_PARTS_VERSION = 2  # v1: one document (every part nested in it), still restored
_GLOBAL = ("engine", "metrics", "dedup", "history", "drift")
# built where the checkpoint is written (``build``): read only by batches, which the lock holds off
LATER = frozenset({"dedup", "dedup-previous", "history", "drift"})
_SERIES, _JUDGE = "series/", "judge/"


def series_part(agent: str, env: str) -> str:
    return _SERIES + json.dumps([agent, env])


def names(engine: Engine) -> set[str]:
    """Every part the engine's state has now."""
    out = {*_GLOBAL, "dedup-previous"}
    out.update(series_part(a, e) for a, e in engine.state.agents())
    out.update(_JUDGE + rid for rid in engine.judges)
    return out


def changed(engine: Engine) -> set[str]:
    """The parts changed since the last call (the global ones always: they change with every batch)."""
    out = set(_GLOBAL)
    if engine.dedup.generation != engine._parts_generation:
        out.add("dedup-previous")
        engine._parts_generation = engine.dedup.generation
    out.update(series_part(a, e) for a, e in engine.state.take_touched())
    out.update(_JUDGE + rid for rid in engine._judges_touched if rid in engine.judges)
    engine._judges_touched = set()
    return out


def build(engine: Engine, wanted: set[str]) -> Iterator[tuple[str, Any] | None]:
    """``(name, state)`` of each wanted part (that exists), and ``None`` between them: a point where a
    caller holding the batch lock may let the event loop run (nothing changes the state meanwhile).

    The parts of ``LATER`` are given as a function that builds them, for the caller to run where it
    writes (the checkpointer: in its worker thread, the batch lock still held): each is one pass over
    every version or event id, a single step of hundreds of milliseconds at thousands of agents."""
    for name in sorted(wanted):
        if name in LATER:
            yield name, functools.partial(_part, engine, name)
            yield None
            continue
        state = _part(engine, name)
        if state is not None:
            yield name, state
        yield None


def _part(engine: Engine, name: str) -> Any:
    if name == "engine":
        return {
            "v": ENGINE_PARTS_VERSION,
            "registry": engine.registry.to_state(),
            "policy_states": {rid: ps.to_state() for rid, ps in engine.policy_states.items()},
            "last_action": {rid: action.value for rid, action in engine.last_action.items()},
            "last_look": dict(engine._last_look),
            "seen": dict(engine._seen),
            "retired": [[*k, ts] for k, ts in engine.retired_versions.items()],
            "lateness": engine.lateness.to_state(),
            # the policy each judge runs with: a restart with a policy that measures differently keeps it
            "judge_policies": {rid: policy_to_doc(j.policy) for rid, j in engine.judges.items()},
        }
    if name == "metrics":
        return engine.state.meta_state()
    if name == "dedup":
        return engine.dedup.current_state()
    if name == "dedup-previous":
        return engine.dedup.previous_state()
    if name == "history":
        return engine.history.to_state()
    if name == "drift":
        return engine.drift.to_state()
    if name.startswith(_SERIES):
        agent, env = json.loads(name[len(_SERIES) :])
        return engine.state.agent_state(agent, env)
    if name.startswith(_JUDGE):
        judge = engine.judges.get(name[len(_JUDGE) :])
        return judge.to_state() if judge is not None else None
    return None


def restore(engine: Engine, d: Mapping[str, Any]) -> None:
    """Replace the engine's state by its parts (or by a v1 document); raises ``CheckpointError`` and
    leaves the engine as it was when they are of another version or malformed. Judges are restored
    with the policy their agent has *now* (a changed policy file applies to running rollouts), unless
    it measures differently from the one the judge ran with (``Engine.replace_policies``)."""
    if not isinstance(d, Mapping):
        raise CheckpointError(f"engine state: unsupported {type(d).__name__}")
    legacy = d.get("v") == 1
    head = d if legacy else d.get("engine")
    if not isinstance(head, Mapping) or (not legacy and head.get("v") != ENGINE_PARTS_VERSION):
        version = head.get("v") if isinstance(head, Mapping) else d.get("v")
        raise CheckpointError(f"engine state: unsupported version {version!r}")
    try:
        if legacy:
            dedup = Deduplicator.from_state(d["dedup"])
            state = MetricsState.from_state(d["state"])
            judge_states = dict(d["judges"])
        else:
            dedup = Deduplicator.from_parts(d["dedup"], d["dedup-previous"])
            state = MetricsState.from_parts(d["metrics"], (v for k, v in d.items() if k.startswith(_SERIES)))
            judge_states = {k[len(_JUDGE) :]: v for k, v in d.items() if k.startswith(_JUDGE)}
        registry = engine._new_registry()
        registry.load_state(head["registry"])
        for rollout in registry.active_rollouts():
            engine.strategies.get(rollout.strategy)  # a strategy no longer installed: named here
        history = VersionHistory.from_state(d["history"], min_window=engine.history.min_window)
        drift = DriftMonitor.from_state(d["drift"])
        lateness = engine._new_lateness()
        if "lateness" in head:  # absent from checkpoints written before allowed lateness existed
            lateness.load_state(head["lateness"])
        ran_with = {rid: policy_from_doc(p) for rid, p in head.get("judge_policies", {}).items()}
        judges: dict[str, RolloutJudge] = {}
        for rid, js in judge_states.items():
            ref = js["rollout"]
            policy = engine.policies.for_agent(ref["agent_id"], ref["environment"])
            old = ran_with.get(rid)
            if old is not None and (why := layout_change(old, policy)) is not None:
                log.warning("rollout %s keeps the policy it started with: %s", rid, why)
                policy = old
            judges[rid] = engine.strategies.get(ref["strategy"]).restore(js, policy)
        policy_states = {rid: PolicyState.from_state(ps) for rid, ps in head["policy_states"].items()}
        last_action = {rid: Action(a) for rid, a in head["last_action"].items()}
        last_look = {rid: float(ts) for rid, ts in head["last_look"].items()}
        # absent before looks were on a grid: the grid then resumes from the last look
        seen = {rid: float(ts) for rid, ts in head.get("seen", last_look).items()}
        retired = {
            (str(a), str(e), str(v)): float(ts) for a, e, v, ts in head.get("retired", ())
        }  # since #13
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ConfigError) as exc:
        raise CheckpointError(f"invalid engine state: {exc!r}") from exc
    engine.dedup, engine.state, engine.registry, engine.history, engine.drift = (
        dedup,
        state,
        registry,
        history,
        drift,
    )
    engine.lateness = lateness
    engine.judges, engine.policy_states, engine.last_action, engine._last_look = (
        judges,
        policy_states,
        last_action,
        last_look,
    )
    engine._seen = seen
    engine.retired_versions = retired
    engine._parts_generation = dedup.generation
    engine._judges_touched = set()
    # the evidence of the last look, as the API showed it before the restart (evidence() only reads);
    # recomputable, so a judge that cannot produce it now simply shows none until its next look
    engine.evidence = EvidenceMap()
    for rid, judge in judges.items():
        if rid in last_look:
            try:
                engine.evidence[rid] = judge.evidence(last_look[rid])
            except Exception:
                log.warning("evidence of %s not recomputed after the restore", rid, exc_info=True)
