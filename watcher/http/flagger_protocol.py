"""Flagger's webhook protocol, pure: the hook types, the answer to each, the request body and the
deployment marker a call means. No I/O: ``watcher.http.flagger`` serves these over HTTP.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from watcher.config import MAX_NAME, FlaggerTarget
from watcher.contract import Action, Deployment, Rejected, decode_deployment, encode_deployment
from watcher.state import Rollout

__all__ = [
    "FLAGGER_PREFIX",
    "HOLD_STATUS",
    "MARKING_HOOKS",
    "FlaggerPayload",
    "HookAnswer",
    "HookContext",
    "HookType",
    "Outcome",
    "answer",
    "lifecycle",
    "marker_for",
    "parse_payload",
]

FLAGGER_PREFIX = "/v1/flagger/"
_WEIGHT = re.compile(r"\bcanary weight (\d+(?:\.\d+)?)\b")
_MAX_NOTES = 512


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
MARKING_HOOKS = (HookType.EVENT, HookType.POST_ROLLOUT)  # only logged by Flagger: markers, nothing else


# Flagger's HTTP client (hashicorp/go-retryablehttp) treats 429 and every 5xx but 501 as "retry": with
# the default ``retries: 0`` it gives up at once and drops the body, so Flagger's event says "giving up
# after 1 attempt(s)" instead of watcher's reason. Every non-2xx answer is therefore a 4xx.
HOLD_STATUS = 409


def answer(hook: HookType, ctx: HookContext) -> HookAnswer:
    """The status Flagger gets for ``hook`` given what watcher knows. Pure.

    Latched decisions come first: they stand without fresh data, so readiness matters only where
    watcher would otherwise answer from evidence it may not have caught up with. Only a latched
    ``rollback`` fails a check: watcher being behind, restarting or rebalancing is no evidence
    against the canary (confirm-rollout holds a new release while watcher is not ready instead).
    """
    why = f": {ctx.reason}" if ctx.reason else ""
    if hook in MARKING_HOOKS:
        return HookAnswer(200, Outcome.ACCEPTED, "received")
    if hook is HookType.ROLLBACK:
        if ctx.action is Action.ROLLBACK:
            return HookAnswer(200, Outcome.ROLLBACK, f"watcher decided rollback{why}")
        if ctx.rollout is not None:
            state = f"decision is {ctx.action.value}"
        else:
            state = "no active rollout" if ctx.ready else f"watcher is not ready ({ctx.ready_reason})"
        return HookAnswer(HOLD_STATUS, Outcome.NO_ROLLBACK, f"no rollback: {state}")
    if hook in (HookType.PRE_ROLLOUT, HookType.ROLLOUT):
        if ctx.action is Action.ROLLBACK:
            return HookAnswer(HOLD_STATUS, Outcome.FAIL, f"watcher decided rollback{why}")
        if not ctx.ready:
            return HookAnswer(200, Outcome.PASS, f"watcher is not ready ({ctx.ready_reason}): not a failure")
        if ctx.rollout is None:
            return HookAnswer(200, Outcome.PASS, "no active rollout yet: nothing against the canary")
        return HookAnswer(200, Outcome.PASS, f"no harm established (decision {ctx.action.value})")
    assert hook in _GATES
    if hook is HookType.CONFIRM_PROMOTION and ctx.action is Action.PROMOTE:
        return HookAnswer(200, Outcome.PROCEED, f"watcher decided promote{why}")
    if ctx.action is Action.ROLLBACK:
        return HookAnswer(HOLD_STATUS, Outcome.HOLD, f"watcher decided rollback{why}")
    if ctx.action is Action.PAUSE:
        return HookAnswer(
            HOLD_STATUS, Outcome.HOLD, f"watcher paused the rollout{why}; acknowledge or override it"
        )
    if not ctx.ready:
        return HookAnswer(HOLD_STATUS, Outcome.HOLD, f"watcher is not ready: {ctx.ready_reason}")
    if hook is HookType.CONFIRM_PROMOTION:
        if ctx.rollout is None:
            return HookAnswer(
                HOLD_STATUS, Outcome.HOLD, "no active rollout: watcher has not seen this canary yet"
            )
        return HookAnswer(
            HOLD_STATUS, Outcome.HOLD, "evidence is accumulating: watcher has not decided promote yet"
        )
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
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "body is not valid JSON"
    if not isinstance(body, dict):
        return "body must be a JSON object"
    values: dict[str, str] = {}
    for name, required in (("name", True), ("namespace", True), ("phase", False), ("checksum", False)):
        value = body.get(name)
        if value is None and not required:
            continue
        if not isinstance(value, str) or (required and not 0 < len(value) <= MAX_NAME):
            rule = f"a non-empty string of at most {MAX_NAME} characters" if required else "a string"
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


def marker_for(
    target: FlaggerTarget, hook: HookType, p: FlaggerPayload, *, active: Rollout | None, now: float
) -> tuple[Deployment | None, str]:
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
