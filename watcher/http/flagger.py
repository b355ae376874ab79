"""Pull hooks for deployers: Flagger's webhooks, answered from watcher's in-memory state.

Flagger POSTs ``{"name", "namespace", "phase", "checksum", "metadata"}`` to one URL per hook type
(the body does not say which hook it is) and reads only the status: 200-202 is success, anything
else a failure, whose meaning depends on the hook. So every answer here is a status chosen per hook
(``answer``, a pure function of the hook and what watcher knows) plus a JSON body with the reason,
which Flagger copies into its events for the check hooks.

    gates   confirm-rollout, confirm-traffic-increase, confirm-promotion: a non-2xx holds Flagger
            (no failed check). Watcher holds while a pause or rollback is latched, while it is not
            ready, and holds promotion until it decided ``promote``.
    checks  pre-rollout, rollout: a non-2xx adds a failed check (rollback at the threshold). They
            fail only on positive evidence of harm (a latched ``rollback``): no data is not a failure.
            pre-rollout also fails while watcher is not ready (nobody would be watching the canary).
    rollback   2xx makes Flagger roll back: only when watcher decided ``rollback``.
    event, post-rollout   errors are only logged; they become deployment markers (see
            ``lifecycle``), applied to the engine and handed to ``on_marker`` (the deployments topic).

Which watcher rollout a canary is about is configuration: ``hooks.flagger`` maps a Canary's
namespace/name to an agent and environment. See docs/deployers.md for the full tables.

This module is the HTTP side; the pure parts are ``watcher.http.flagger_protocol`` (hook types, ``answer``,
payload, markers) and ``watcher.config.hooks`` (targets), re-exported here.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from watcher.clock import Clock, SystemClock
from watcher.config import FlaggerTarget, HooksSettings, validate_targets
from watcher.contract import Action, Deployment
from watcher.http.flagger_protocol import (
    FLAGGER_PREFIX,
    MARKING_HOOKS,
    FlaggerPayload,
    HookAnswer,
    HookContext,
    HookType,
    Outcome,
    answer,
    lifecycle,
    marker_for,
    parse_payload,
)
from watcher.state import Rollout, RolloutState

if TYPE_CHECKING:
    # config may import this module for its settings (re-exported here; watcher.config itself uses
    # watcher.config.hooks): importing the engine would be circular, and aiohttp (imported where a
    # request is served) would make every settings load ~0.2 s slower
    from aiohttp import web

    from watcher.engine import EngineView
    from watcher.http.peers import Peers
    from watcher.storage import DecisionLog

__all__ = [
    "FLAGGER_PREFIX",
    "FlaggerHooks",
    "FlaggerPayload",
    "FlaggerTarget",
    "HookAnswer",
    "HookContext",
    "HookType",
    "HooksSettings",
    "Outcome",
    "answer",
    "lifecycle",
    "marker_for",
    "parse_payload",
]

log = logging.getLogger(__name__)

MarkerHook = Callable[[Deployment], Awaitable[bool]]  # durable on return; True: in Kafka too
Readiness = Callable[[], tuple[bool, str]]


# -- the HTTP side ----------------------------------------------------------------------------------
class FlaggerHooks:
    """Flagger's webhooks on watcher's port: ``app.add_routes(hooks.routes())``."""

    def __init__(
        self,
        engine: EngineView,
        targets: Sequence[FlaggerTarget],
        *,
        on_marker: MarkerHook | None = None,
        readiness: Readiness = lambda: (True, "ready"),
        decision_log: DecisionLog | None = None,
        clock: Clock | None = None,
        max_body_bytes: int = 65_536,
        marker_timeout_s: float = 0.5,
        peers: Peers | None = None,
    ) -> None:
        validate_targets(targets, "flagger")
        self.engine = engine
        self.targets = {(t.namespace, t.name): t for t in targets}
        self.on_marker = on_marker
        self.readiness = readiness
        self.decision_log = decision_log
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.max_body_bytes = max_body_bytes
        self.peers = peers  # several instances: a hook about an agent another one owns goes there
        # Flagger gives up after 10 s; a slow broker must not make a hook answer late. The marker
        # is applied before the publish, and a publish that takes longer goes on in the background.
        self.marker_timeout_s = marker_timeout_s
        self._publishing: set[asyncio.Task[bool]] = set()

    def routes(self) -> list[web.RouteDef]:
        from aiohttp import web

        return [web.post(hook.path, self._handler(hook)) for hook in HookType]

    def _handler(self, hook: HookType) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            return await self.handle(hook, request)

        return handle

    async def handle(self, hook: HookType, request: web.Request) -> web.Response:
        raw = await self._read(request)
        if raw is None:
            return _json({"error": f"body larger than {self.max_body_bytes} bytes", "hook": hook.value}, 413)
        payload = parse_payload(raw)
        if isinstance(payload, str):
            return _json({"error": payload, "hook": hook.value}, 400)
        target = self.targets.get((payload.namespace, payload.name))
        if target is None:
            # Misconfiguration: fail closed (gates hold, checks fail, no rollback) and say how to fix it.
            log.warning("flagger %s hook for unknown canary %s", hook.value, payload.canary)
            return _json(
                {
                    "error": f"unknown canary {payload.canary}",
                    "hook": hook.value,
                    "hint": "map it in hooks.flagger (namespace, name, agent_id, environment)",
                },
                404,
            )
        if self.peers is not None and not self.peers.forwarded(request):
            owner = self.peers.owner_of_agent(target.agent_id)
            if owner is not None:  # another instance holds this agent's rollouts: it answers
                return await self.peers.forward(request, owner, raw)
        ctx = self.context(target, payload)
        result = answer(hook, ctx)
        body: dict[str, Any] = {
            "hook": hook.value,
            "canary": payload.canary,
            "agent": target.agent_id,
            "environment": target.environment,
            "outcome": result.outcome.value,
            "reason": result.reason,
            "decision": ctx.action.value,
            "rollout_id": ctx.rollout.rollout_id if ctx.rollout else None,
            "marker": None,
        }
        status = result.status
        if hook in MARKING_HOOKS or (hook is HookType.PRE_ROLLOUT and status == 200):
            marker, why = marker_for(target, hook, payload, active=self._active(target), now=self.clock.now())
            body["marker"] = await self._apply(marker, why)
            if body["marker"]["status"] == "failed":
                status = 503  # not stored, not applied: Flagger calls the hook again
            elif hook is not HookType.PRE_ROLLOUT and body["marker"]["status"] not in (
                "duplicate",
                "skipped",
            ):
                status = 202  # a marker was applied (the pre-rollout check keeps its 200)
        return _json(body, status)

    def context(self, target: FlaggerTarget, payload: FlaggerPayload) -> HookContext:
        ready, why = self.readiness()
        rollout = self._active(target)
        version = payload.metadata.get("canary_version")
        if rollout is not None and version and rollout.canary_version not in (None, version):
            rollout = None  # watcher's active rollout is another revision than the one Flagger asks about
        if rollout is None:
            return HookContext(ready, why, None)
        action = self.engine.last_action.get(rollout.rollout_id, Action.CONTINUE)
        if action is Action.RESUME:
            action = Action.CONTINUE
        if action is Action.CONTINUE and rollout.state is RolloutState.PAUSED:
            action = Action.PAUSE  # paused by a marker (a human, another tool)
        return HookContext(ready, why, rollout, action, self._reason(rollout))

    # -- internals ------------------------------------------------------------------------------
    def _active(self, target: FlaggerTarget) -> Rollout | None:
        return self.engine.registry.active(target.agent_id, target.environment)

    def _reason(self, rollout: Rollout) -> str:
        if self.decision_log is not None:
            latest = self.decision_log.latest(rollout.rollout_id)
            if latest:
                return str(latest["reason"])
        evidence = self.engine.evidence.get(rollout.rollout_id)
        failing = [f"{m.metric}[{m.slice}]" for m in evidence.failing()] if evidence else []
        return f"failing {', '.join(failing)}" if failing else ""

    async def _read(self, request: web.Request) -> bytes | None:
        """The body, or None when it is over the limit (also the app's ``client_max_size``)."""
        from aiohttp import web

        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return None
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return None
        return None if len(raw) > self.max_body_bytes else raw

    async def _apply(self, marker: Deployment | None, why: str) -> dict[str, Any]:
        """Store the marker durably (``on_marker``), then apply it: a marker Flagger was told about
        is never lost. Status ``failed`` when it could not be stored (the hook answers 503: Flagger
        calls again)."""
        if marker is None:
            return {"status": "skipped", "reason": why}
        info: dict[str, Any] = {
            "action": marker.action,
            "event_id": marker.event_id,
            "canary_version": marker.canary_version,
            "canary_weight": marker.canary_weight,
        }
        if self.on_marker is not None:
            try:
                info["published"] = await self._publish(marker)
            except Exception as exc:
                log.error("marker %s could not be stored, not applied: %s", marker.event_id, exc)
                return {**info, "status": "failed", "reason": f"the marker could not be stored: {exc}"}
        change = self.engine.apply_marker(marker)
        if change is None:  # Flagger retried the same call: applied the first time
            return {**info, "status": "duplicate"}
        info["status"] = change.kind
        return info

    async def _publish(self, marker: Deployment) -> bool | None:
        """Durable once this returns (or raises); True when the deployments topic has it, False when
        it waits in the spool, None when that is not known yet (the answer does not wait longer)."""
        assert self.on_marker is not None
        task = asyncio.ensure_future(self.on_marker(marker))
        done, _ = await asyncio.wait({task}, timeout=self.marker_timeout_s)
        if not done:  # stored already (the first step of on_marker); Kafka's answer comes later
            self._publishing.add(task)
            task.add_done_callback(self._published_late)
            return None
        return bool(task.result())

    def _published_late(self, task: asyncio.Task[bool]) -> None:
        self._publishing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("marker not published: %s", task.exception())

    async def close(self) -> None:
        """Wait for publishes still in flight (at shutdown, before the publisher stops)."""
        if self._publishing:
            await asyncio.gather(*self._publishing, return_exceptions=True)


def _json(data: Any, status: int = 200) -> web.Response:
    from aiohttp import web

    return web.Response(
        text=json.dumps(data, separators=(",", ":")), status=status, content_type="application/json"
    )
