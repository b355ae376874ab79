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
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from watcher.clock import Clock, SystemClock
from watcher.errors import ConfigError
from watcher.events import Deployment, Rejected, decode_deployment, encode_deployment
from watcher.rollouts import Rollout, RolloutState
from watcher.verdicts import Action

if TYPE_CHECKING:
    # config imports this module for its settings: importing the engine would be circular, and
    # aiohttp (imported where a request is served) would make every settings load ~0.2 s slower
    from aiohttp import web

    from watcher.decisions import DecisionLog
    from watcher.engine import Engine
    from watcher.peers import Peers

__all__ = [
    "FLAGGER_PREFIX", "FlaggerHooks", "FlaggerPayload", "FlaggerTarget", "HookAnswer", "HookContext",
    "HookType", "HooksSettings", "Outcome", "answer", "lifecycle", "marker_for", "parse_payload",
]

log = logging.getLogger(__name__)

FLAGGER_PREFIX = "/v1/flagger/"
MarkerHook = Callable[[Deployment], Awaitable[None]]
Readiness = Callable[[], tuple[bool, str]]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # RFC 1123 label: a namespace
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")  # RFC 1123 subdomain: an object name
_WEIGHT = re.compile(r"\bcanary weight (\d+(?:\.\d+)?)\b")
_MAX_NAME = 253
_MAX_NOTES = 512


# -- settings ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlaggerTarget:
    """One Flagger Canary (namespace/name) and the watcher rollouts it drives (agent/environment)."""

    namespace: str
    name: str
    agent_id: str
    environment: str = "prod"

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every invalid value; validated with its index by ``HooksSettings``."""
        out: list[tuple[str, str]] = []
        ns, name = self.namespace, self.name
        if not isinstance(ns, str) or len(ns) > 63 or not _DNS_LABEL.match(ns):
            out.append(("namespace", f"must be a Kubernetes namespace (RFC 1123 label), got {ns!r}"))
        if not isinstance(name, str) or len(name) > _MAX_NAME or not _DNS_SUBDOMAIN.match(name):
            out.append(("name", f"must be a Kubernetes object name (RFC 1123 subdomain), got {name!r}"))
        for name, value in (("agent_id", self.agent_id), ("environment", self.environment)):
            if not isinstance(value, str) or not 0 < len(value) <= 128:
                out.append((name, f"must be a string of 1-128 characters, got {value!r}"))
        return out


@dataclass(frozen=True)
class HooksSettings:
    """The ``hooks`` section: which deployer objects map to which agent/environment."""

    flagger: tuple[FlaggerTarget, ...] = ()

    def __post_init__(self) -> None:
        validate_targets(self.flagger, "hooks.flagger")


def validate_targets(targets: Sequence[FlaggerTarget], where: str) -> None:
    seen: dict[tuple[str, str], int] = {}
    for i, target in enumerate(targets):
        problems = target.problems()
        if problems:
            raise ConfigError(f"{where}[{i}].{problems[0][0]}", problems[0][1])
        key = (target.namespace, target.name)
        if key in seen:
            first = f"{where}[{seen[key]}]"
            raise ConfigError(f"{where}[{i}]", f"canary {'/'.join(key)} is already mapped by {first}")
        seen[key] = i


# -- the vocabulary ---------------------------------------------------------------------------------
class HookType(str, Enum):
    """Flagger's webhook types; the value is the last segment of watcher's URL."""

    CONFIRM_ROLLOUT = "confirm-rollout"
    CONFIRM_TRAFFIC_INCREASE = "confirm-traffic-increase"
    CONFIRM_PROMOTION = "confirm-promotion"
    ROLLBACK = "rollback"
    PRE_ROLLOUT = "pre-rollout"
    ROLLOUT = "rollout"
    POST_ROLLOUT = "post-rollout"
    EVENT = "event"

    @property
    def path(self) -> str:
        return FLAGGER_PREFIX + self.value


class Outcome(str, Enum):
    """What an answer means to Flagger (closed vocabulary, in every response body)."""

    PROCEED = "proceed"  # a gate lets Flagger go on
    HOLD = "hold"  # a gate holds Flagger where it is
    PASS = "pass"  # a check passed
    FAIL = "fail"  # a check failed: Flagger counts a failed check
    ROLLBACK = "rollback"  # Flagger rolls back
    NO_ROLLBACK = "no_rollback"
    ACCEPTED = "accepted"  # event / post-rollout: received


@dataclass(frozen=True, slots=True)
class HookContext:
    """What an answer depends on: watcher's readiness and the target's active rollout."""

    ready: bool
    ready_reason: str
    rollout: Rollout | None
    action: Action = Action.CONTINUE  # latched: continue, pause, rollback or promote
    reason: str = ""  # why (the last decision's reason), "" if watcher decided nothing yet


@dataclass(frozen=True, slots=True)
class HookAnswer:
    status: int
    outcome: Outcome
    reason: str


_GATES = (HookType.CONFIRM_ROLLOUT, HookType.CONFIRM_TRAFFIC_INCREASE, HookType.CONFIRM_PROMOTION)
_MARKING = (HookType.EVENT, HookType.POST_ROLLOUT)  # only logged by Flagger: markers, nothing else


def answer(hook: HookType, ctx: HookContext) -> HookAnswer:
    """The status Flagger gets for ``hook`` given what watcher knows. Pure.

    Latched decisions come first: they stand without fresh data, so readiness matters only where
    watcher would otherwise answer from evidence it may not have caught up with.
    """
    why = f": {ctx.reason}" if ctx.reason else ""
    if hook in _MARKING:
        return HookAnswer(200, Outcome.ACCEPTED, "received")
    if hook is HookType.ROLLBACK:
        if ctx.action is Action.ROLLBACK:
            return HookAnswer(200, Outcome.ROLLBACK, f"watcher decided rollback{why}")
        state = "no active rollout" if ctx.rollout is None else f"decision is {ctx.action.value}"
        return HookAnswer(409, Outcome.NO_ROLLBACK, f"no rollback: {state}")
    if hook in (HookType.PRE_ROLLOUT, HookType.ROLLOUT):
        if ctx.action is Action.ROLLBACK:
            return HookAnswer(409, Outcome.FAIL, f"watcher decided rollback{why}")
        if not ctx.ready:
            if hook is HookType.PRE_ROLLOUT:  # nobody would be watching the canary's first traffic
                return HookAnswer(503, Outcome.FAIL, f"watcher is not ready: {ctx.ready_reason}")
            # not having caught up is not evidence of harm: never a failed check (and a rollback) for it
            return HookAnswer(200, Outcome.PASS, f"watcher is not ready ({ctx.ready_reason}): not a failure")
        if ctx.rollout is None:
            return HookAnswer(200, Outcome.PASS, "no active rollout yet: nothing against the canary")
        return HookAnswer(200, Outcome.PASS, f"no harm established (decision {ctx.action.value})")
    assert hook in _GATES
    if hook is HookType.CONFIRM_PROMOTION and ctx.action is Action.PROMOTE:
        return HookAnswer(200, Outcome.PROCEED, f"watcher decided promote{why}")
    if ctx.action is Action.ROLLBACK:
        return HookAnswer(409, Outcome.HOLD, f"watcher decided rollback{why}")
    if ctx.action is Action.PAUSE:
        return HookAnswer(409, Outcome.HOLD, f"watcher paused the rollout{why}; acknowledge or override it")
    if not ctx.ready:
        return HookAnswer(503, Outcome.HOLD, f"watcher is not ready: {ctx.ready_reason}")
    if hook is HookType.CONFIRM_PROMOTION:
        if ctx.rollout is None:
            return HookAnswer(409, Outcome.HOLD, "no active rollout: watcher has not seen this canary yet")
        return HookAnswer(409, Outcome.HOLD, "evidence is accumulating: watcher has not decided promote yet")
    return HookAnswer(200, Outcome.PROCEED, "nothing holds the rollout")


# -- the request body -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FlaggerPayload:
    name: str
    namespace: str
    phase: str = ""
    checksum: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def canary(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse_payload(raw: bytes) -> FlaggerPayload | str:
    """Flagger's body, validated; a string is the reason for a 400."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return "body is not valid JSON"
    if not isinstance(body, dict):
        return "body must be a JSON object"
    values: dict[str, str] = {}
    for name, required in (("name", True), ("namespace", True), ("phase", False), ("checksum", False)):
        value = body.get(name)
        if value is None and not required:
            continue
        if not isinstance(value, str) or (required and not 0 < len(value) <= _MAX_NAME):
            rule = f"a non-empty string of at most {_MAX_NAME} characters" if required else "a string"
            return f"field {name!r} must be {rule}"
        values[name] = value
    metadata = body.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        return "field 'metadata' must be an object of strings"
    for key, value in metadata.items():
        if not isinstance(value, str):  # Flagger sends map[string]string
            return f"metadata.{key} must be a string"
    for key in ("canary_version", "baseline_version"):  # they become marker versions (1-128 chars)
        if key in metadata and not 0 < len(metadata[key]) <= 128:
            return f"metadata.{key} must be a string of 1-128 characters"
    return FlaggerPayload(metadata=metadata, **values)


# -- lifecycle: Flagger calls -> deployment markers -------------------------------------------------
def lifecycle(hook: HookType, p: FlaggerPayload) -> tuple[str, float | None] | None:
    """What a Flagger call says about the rollout: (marker action, canary weight 0..1) or None.

    Events are recognised by phase and, where a phase is shared by unrelated events (Flagger reports
    the canary's current phase with every event, e.g. "Confirm-rollout check passed" while still
    ``Succeeded``), by the start of Flagger's message. post-rollout is called exactly once at the end
    (phase Succeeded or Failed), so it is the reliable end signal.
    """
    phase = p.phase
    if hook is HookType.POST_ROLLOUT:
        return {"Succeeded": ("promoted", None), "Failed": ("rolled_back", None)}.get(phase)
    if hook is HookType.PRE_ROLLOUT:
        return ("started", None) if phase in ("", "Progressing") else None
    if hook is not HookType.EVENT:
        return None
    message = p.metadata.get("eventMessage", "")
    if message.startswith("Rolling back"):
        return "rolled_back", None
    if phase == "Progressing":
        if message.startswith("Starting canary analysis"):
            return "started", None
        m = _WEIGHT.search(message) if message.startswith("Advance") else None
        if m is not None:  # Flagger's weights are percent of its default total weight (100)
            return "weight_changed", min(float(m.group(1)) / 100.0, 1.0)
        return None
    if phase in ("Promoting", "Finalising"):
        return "promoted", None
    if phase == "Succeeded" and message.startswith("Promotion completed"):
        return "promoted", None
    if phase == "Failed" and message.startswith("Canary failed"):
        return "rolled_back", None
    if phase in ("Terminating", "Terminated"):
        return "aborted", None
    return None  # Initializing, Initialized, Waiting, WaitingPromotion, checks passed...: no change


def marker_for(target: FlaggerTarget, hook: HookType, p: FlaggerPayload, *, active: Rollout | None,
               now: float) -> tuple[Deployment | None, str]:
    """The marker a call means, given the target's active rollout; (None, why not) if none. Pure.

    The version is ``metadata.canary_version`` when the Canary's webhook sets it (it should: it is
    the version the agent's telemetry carries), else Flagger's ``checksum``. A call that the active
    rollout already reflects makes no marker (Flagger repeats itself every analysis interval).
    """
    change = lifecycle(hook, p)
    if change is None:
        return None, "no lifecycle change"
    action, weight = change
    explicit = p.metadata.get("canary_version") or None
    if explicit is not None and active is not None and active.canary_version not in (None, explicit):
        active = None  # the active rollout is another revision: it is not what this call is about
    if action == "weight_changed" and active is None:
        action = "started"  # watcher missed the start (restart, events not configured): start here
    if action == "started":
        if active is not None and (explicit is None or active.canary_version == explicit):
            if weight is None or math.isclose(active.canary_weight, weight):
                return None, f"rollout {active.rollout_id} is already active"
            action = "weight_changed"
    elif action == "weight_changed":
        assert active is not None and weight is not None
        if math.isclose(active.canary_weight, weight):
            return None, "the canary weight is unchanged"
    elif active is None:
        return None, f"no active rollout to mark {action}"
    version = explicit or (active.canary_version if active is not None else None) or p.checksum or None
    ts = _event_ts(p.metadata.get("timestamp"), now)
    key = f"{p.namespace}|{p.name}|{hook.value}|{action}|{version}|{weight}|{ts:.3f}"
    notes = p.metadata.get("eventMessage") or f"flagger {hook.value} (phase {p.phase or 'unknown'})"
    marker = Deployment(
        event_id="flagger-" + hashlib.sha256(key.encode()).hexdigest()[:24],
        ts=ts,
        agent_id=target.agent_id,
        environment=target.environment,
        action=action,  # type: ignore[arg-type]  # one of the contract's actions by construction
        strategy="canary" if action == "started" else None,
        baseline_version=p.metadata.get("baseline_version") or None,
        canary_version=version,
        canary_weight=weight,
        actor="flagger",
        notes=notes[:_MAX_NOTES],
    )
    # The same contract as a marker from Kafka: what is applied here must also be valid when the
    # daemon reads it back from the deployments topic (e.g. a 300-character version is not).
    checked = decode_deployment(encode_deployment(marker))
    if isinstance(checked, Rejected):
        return None, f"invalid marker: {checked.detail}"
    return checked, f"marker {action}"


def _event_ts(value: str | None, now: float) -> float:
    """Flagger's event ``timestamp`` (Unix milliseconds) if usable, else now."""
    try:
        ts = int(value) / 1000.0 if value else now
    except ValueError:
        return now
    return ts if 0 < ts < 253402300800 else now  # up to year 9999, like every ts watcher accepts


# -- the HTTP side ----------------------------------------------------------------------------------
class FlaggerHooks:
    """Flagger's webhooks on watcher's port: ``app.add_routes(hooks.routes())``."""

    def __init__(
        self,
        engine: Engine,
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
        self._publishing: set[asyncio.Task[None]] = set()

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
            return _json({"error": f"unknown canary {payload.canary}", "hook": hook.value,
                          "hint": "map it in hooks.flagger (namespace, name, agent_id, environment)"}, 404)
        if self.peers is not None and not self.peers.forwarded(request):
            owner = self.peers.owner_of_agent(target.agent_id)
            if owner is not None:  # another instance holds this agent's rollouts: it answers
                return await self.peers.forward(request, owner, raw)
        ctx = self.context(target, payload)
        result = answer(hook, ctx)
        body: dict[str, Any] = {
            "hook": hook.value, "canary": payload.canary, "agent": target.agent_id,
            "environment": target.environment, "outcome": result.outcome.value, "reason": result.reason,
            "decision": ctx.action.value, "rollout_id": ctx.rollout.rollout_id if ctx.rollout else None,
            "marker": None,
        }
        status = result.status
        if hook in _MARKING or (hook is HookType.PRE_ROLLOUT and status == 200):
            marker, why = marker_for(target, hook, payload, active=self._active(target), now=self.clock.now())
            body["marker"] = await self._apply(marker, why)
            if hook is not HookType.PRE_ROLLOUT and body["marker"]["status"] not in ("duplicate", "skipped"):
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
        if marker is None:
            return {"status": "skipped", "reason": why}
        change = self.engine.apply_marker(marker)
        info: dict[str, Any] = {"action": marker.action, "event_id": marker.event_id,
                                "canary_version": marker.canary_version,
                                "canary_weight": marker.canary_weight}
        if change is None:  # Flagger retried the same call: applied and published the first time
            return {**info, "status": "duplicate"}
        info["status"] = change.kind
        if self.on_marker is not None:
            info["published"] = await self._publish(marker)
        return info

    async def _publish(self, marker: Deployment) -> bool | None:
        """True when published, False when it failed, None when still going on in the background."""
        assert self.on_marker is not None
        task = asyncio.ensure_future(self.on_marker(marker))
        done, _ = await asyncio.wait({task}, timeout=self.marker_timeout_s)
        if not done:
            self._publishing.add(task)
            task.add_done_callback(self._published_late)
            return None
        if task.exception() is not None:
            log.warning("marker %s not published: %s", marker.event_id, task.exception())
            return False
        return True

    def _published_late(self, task: asyncio.Task[None]) -> None:
        self._publishing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("marker not published: %s", task.exception())

    async def close(self) -> None:
        """Wait for publishes still in flight (at shutdown, before the publisher stops)."""
        if self._publishing:
            await asyncio.gather(*self._publishing, return_exceptions=True)


def _json(data: Any, status: int = 200) -> web.Response:
    from aiohttp import web

    return web.Response(text=json.dumps(data, separators=(",", ":")), status=status,
                        content_type="application/json")
