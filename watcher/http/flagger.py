"""Pull hooks for deployers: Flagger's webhooks, answered from watcher's in-memory state.

Flagger POSTs ``{"name", "namespace", "phase", "checksum", "metadata"}`` to one URL per hook type
(the body does not say which hook it is) and reads only the status: 200-202 is success, anything
else a failure, whose meaning depends on the hook. So every answer here is a status chosen per hook
(``answer``, a pure function of the hook and what watcher knows) plus a JSON body that starts with
the reason, which Flagger copies into its events for the check hooks. Non-2xx answers are 4xx:
Flagger's client drops the body of a 5xx (see ``flagger_protocol.HOLD_STATUS``).

    gates   confirm-rollout, confirm-traffic-increase, confirm-promotion: a non-2xx holds Flagger
            (no failed check). Watcher holds while a pause or rollback is latched, while it is not
            ready, and holds promotion until it decided ``promote``.
    checks  pre-rollout, rollout: a non-2xx adds a failed check (rollback at the threshold). They
            fail only on positive evidence of harm (a latched ``rollback``): no data, a restart or
            a rebalance is not a failure (confirm-rollout holds a release while watcher is not ready).
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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from watcher.clock import Clock, SystemClock
from watcher.config import FlaggerTarget, HooksSettings, validate_targets
from watcher.contract import Action, Deployment
from watcher.http.flagger_protocol import (
    FLAGGER_PREFIX,
    HOLD_STATUS,
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


@dataclass(frozen=True, slots=True)
class Known:
    """The last decision an instance saw for a canary (its own, or in its owner's answer)."""

    action: Action
    reason: str
    rollout_id: str
    at: float  # monotonic


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
        wait_s: float = 0.0,
        poll_s: float = 0.1,
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
        # While the group rebalances (the agent's owner unknown, or this instance not ready yet) a
        # hook waits up to ``wait_s`` for it to settle (keep it below the webhook's ``timeout``),
        # then answers from the last decision it knows for the canary: never a failed check for it.
        self.wait_s = wait_s
        self.poll_s = poll_s
        self._known: dict[tuple[str, str], Known] = {}

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
        deadline = self.clock.monotonic() + self.wait_s
        while True:
            final = self.clock.monotonic() >= deadline
            response = await self._attempt(hook, request, raw, target, payload, final=final)
            if response is not None:
                return response
            await asyncio.sleep(self.poll_s)

    async def _attempt(
        self,
        hook: HookType,
        request: web.Request,
        raw: bytes,
        target: FlaggerTarget,
        payload: FlaggerPayload,
        *,
        final: bool,
    ) -> web.Response | None:
        """The answer, or None to try again shortly (a rebalance is under way and time is left)."""
        if self.peers is not None and not self.peers.forwarded(request):
            owner = self.peers.owner_of_agent(target.agent_id)
            if owner is not None:  # another instance holds this agent's rollouts: it answers
                if owner:
                    forwarded = await self.peers.forward(request, owner, raw)
                    if forwarded.status < 500:
                        self._learn(target, forwarded)
                        return forwarded
                if not final:
                    return None
                why = "the instances are rebalancing: the one that owns this agent does not answer yet"
                return await self._answer(hook, target, payload, self._recalled(target, why))
        ctx = self.context(target, payload)
        if not ctx.ready:
            if not final:
                return None
            if ctx.rollout is None:  # e.g. its partition is still being restored here
                ctx = self._recalled(target, ctx.ready_reason)
        return await self._answer(hook, target, payload, ctx)

    async def _answer(
        self, hook: HookType, target: FlaggerTarget, payload: FlaggerPayload, ctx: HookContext
    ) -> web.Response:
        result = answer(hook, ctx)
        known = self._known.get((target.namespace, target.name))
        rollout_id = ctx.rollout.rollout_id if ctx.rollout else None
        if ctx.rollout is None and known is not None and ctx.action is known.action:
            rollout_id = known.rollout_id
        # the reason first: Flagger puts the whole body of a failed check into its event
        body: dict[str, Any] = {
            "reason": result.reason,
            "outcome": result.outcome.value,
            "hook": hook.value,
            "canary": payload.canary,
            "agent": target.agent_id,
            "environment": target.environment,
            "decision": ctx.action.value,
            "rollout_id": rollout_id,
            "marker": None,
        }
        status = result.status
        if hook in MARKING_HOOKS or (hook is HookType.PRE_ROLLOUT and status == 200 and ctx.ready):
            marker, why = marker_for(target, hook, payload, active=self._active(target), now=self.clock.now())
            body["marker"] = await self._apply(marker, why)
            if body["marker"]["status"] == "failed":
                # not stored, not applied: a non-2xx, and a 4xx so that Flagger keeps the reason
                status = HOLD_STATUS
            elif hook is not HookType.PRE_ROLLOUT and body["marker"]["status"] not in (
                "duplicate",
                "skipped",
            ):
                status = 202  # a marker was applied (the pre-rollout check keeps its 200)
        if ctx.ready and ctx.rollout is not None:
            self._known[(target.namespace, target.name)] = Known(
                ctx.action, ctx.reason, ctx.rollout.rollout_id, self.clock.monotonic()
            )
        return _json(body, status)

    def _learn(self, target: FlaggerTarget, response: web.Response) -> None:
        """Remember the decision in the owner's answer, for the next rebalance."""
        try:
            data = json.loads(response.body or b"{}")  # type: ignore[arg-type]
            action = Action(data["decision"])
        except (ValueError, KeyError, TypeError):
            return
        if data.get("rollout_id"):
            reason = str(data.get("reason", ""))
            self._known[(target.namespace, target.name)] = Known(
                action, reason, str(data["rollout_id"]), self.clock.monotonic()
            )

    def _recalled(self, target: FlaggerTarget, why: str) -> HookContext:
        """Not ready and no local rollout: the last decision this instance knows for the canary."""
        known = self._known.get((target.namespace, target.name))
        if known is None:
            return HookContext(False, why, None)
        age = self.clock.monotonic() - known.at
        reason = f"{known.reason} (last known decision, {age:.0f} s old; {why})"
        return HookContext(False, why, None, known.action, reason)

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
