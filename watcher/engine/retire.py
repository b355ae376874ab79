"""Retired and idle versions leave the engine's state (issue #13).

A platform that ships many times a week sees a new version per agent every few hours. Without this the
series of every version ever seen stay in memory, in the checkpoint and in ``/metrics`` for ever. A
version leaves the per-series state (and so ``/metrics``), the drift detectors and the deployment
marker times when, in event time (the platform's watermark):

* it is **retired** (the canary of a rollout rolled back or aborted, the baseline a promotion replaced)
  and has had no turn for ``state.retired_after_s`` (its late turns are still counted meanwhile); or
* it has had no turn for ``state.idle_after_s``, whatever it is (a quiet agent's live version starts
  afresh with its next turn).

A version in a running rollout never leaves. The check runs every ``SWEEP_EVERY_S`` of event time and
costs one pass over the versions (not the series). The bookkeeping of rollouts the registry no longer
lists (its bound on ended rollouts) goes at the same time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from watcher.state import Rollout, RolloutState

if TYPE_CHECKING:
    from watcher.engine.engine import Engine

__all__ = ["SWEEP_EVERY_S", "retired_version", "sweep"]

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 60.0

VersionKey = tuple[str, str, str]


def retired_version(rollout: Rollout) -> str | None:
    """The version an ended rollout retires: the baseline a promotion replaced, else its canary."""
    if rollout.state is RolloutState.PROMOTED:
        return rollout.baseline_version
    return rollout.canary_version


def sweep(engine: Engine, watermark: float) -> list[VersionKey]:
    """Drop the retired and idle versions at event time ``watermark``; returns them."""
    settings = engine.settings.state
    running = engine.registry.active_rollouts()
    live = {(r.agent_id, r.environment, v) for r in running for v in (r.baseline_version, r.canary_version)}
    retired = engine.retired_versions
    gone: list[tuple[VersionKey, float, str]] = []
    for key, last in engine.state.version_last().items():
        if key in live:
            continue
        idle = watermark - last
        # a version retired once may be the baseline again (promoted later): then only idleness counts
        was_retired = key in retired and engine.registry.baseline(key[0], key[1]) != key[2]
        if was_retired and watermark - max(last, retired[key]) >= settings.retired_after_s:
            gone.append((key, idle, "retired"))
        elif settings.idle_after_s is not None and idle >= settings.idle_after_s:
            gone.append((key, idle, "idle"))
    for (agent, env, version), idle, why in gone:
        engine.state.forget_version(agent, env, version)
        engine.drift.unwatch(agent, env, version)
        engine.registry.forget_version(agent, env, version)
        retired.pop((agent, env, version), None)
        log.info(
            "version %s of %s/%s leaves the state (%s: no turn for %.0fs)", version, agent, env, why, idle
        )
    known = engine.state.version_last()
    for key, ts in list(retired.items()):  # retired without a turn here: only its marker times to drop
        if key not in known and watermark - ts >= settings.retired_after_s:
            engine.registry.forget_version(*key)
            del retired[key]
    listed = {r.rollout_id for r in engine.registry.all()}
    for rid in [rid for rid in engine.last_action if rid not in listed]:
        del engine.last_action[rid]
    # settled evidence only (``dict.keys``): reading the map would build every running rollout's rows
    for rid in [rid for rid in dict.keys(engine.evidence) if rid not in listed and rid not in engine.judges]:
        engine.evidence.pop(rid)
    return [key for key, _, _ in gone]
