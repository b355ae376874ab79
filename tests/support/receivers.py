"""Local HTTP receivers for the sink tests: loopback aiohttp servers that validate every payload
against the provider's documented format and can be told to misbehave.

``Receiver(validate, respond)`` records every arrival (``arrivals``: raw, including failed ones) and
every request it answered with 2xx per ``Idempotency-Key`` (``accepted``), so a test can assert "each
key accepted exactly once". Faults are queued with ``fail(...)`` and consumed one per request; ``slow``
delays every answer; ``down()`` / ``up()`` stop and restart the listener on the same port.

Validators (``validate_slack``, ``validate_pagerduty``, ``Grafana``; ``WebhookReceiver`` checks signatures)
return a
list of problems; a request with problems is answered 400 (as the real service would) and the
problems are kept in ``errors`` for the test to show.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from aiohttp import web

if TYPE_CHECKING:
    from watcher.outbox import Outbox

Validator = Callable[[str, str, Mapping[str, str], Any], list[str]]
Responder = Callable[[str, str, Any], tuple[int, Any]]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"


@dataclass
class Arrival:
    t: float  # time.monotonic() at arrival
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    key: str | None
    status: int = 0  # what the receiver answered (0: not answered yet)


@dataclass
class Fault:
    status: int = 500
    retry_after: str | Callable[[], str] | None = None  # a callable is evaluated when answering
    delay: float = 0.0  # seconds before answering: longer than the sink timeout = a lost response
    body: str = "injected fault"


@dataclass
class Receiver:
    validate: Validator | None = None
    respond: Responder | None = None
    ok_status: int = 200
    slow: float = 0.0
    arrivals: list[Arrival] = field(default_factory=list)
    accepted: dict[str, list[Arrival]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    faults: deque[Fault] = field(default_factory=deque)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, n: int = 1, **fault: Any) -> None:
        for _ in range(n):
            self.faults.append(Fault(**fault))

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # a short shutdown: a test stopping a hanging receiver must not wait for its handlers
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if not self.port:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    down = stop

    async def up(self) -> None:
        await self.start()

    def accepted_once(self) -> bool:
        return all(len(v) == 1 for v in self.accepted.values())

    def bodies(self, path: str | None = None) -> list[Any]:
        """JSON bodies of the accepted requests, first acceptance per key, in arrival order."""
        first = sorted((v[0] for v in self.accepted.values()), key=lambda a: a.t)
        return [a.json for a in first if path is None or a.path == path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        arrival = Arrival(
            time.monotonic(),
            request.method,
            request.path,
            dict(request.headers),
            body,
            payload,
            request.headers.get("Idempotency-Key"),
        )
        self.arrivals.append(arrival)
        if self.faults:
            fault = self.faults.popleft()
            if fault.delay:
                await asyncio.sleep(fault.delay)
            retry_after = fault.retry_after() if callable(fault.retry_after) else fault.retry_after
            headers = {"Retry-After": retry_after} if retry_after is not None else {}
            arrival.status = fault.status
            if 200 <= fault.status < 300:
                self._accept(arrival)
            return web.Response(status=fault.status, text=fault.body, headers=headers)
        if self.slow:
            await asyncio.sleep(self.slow)
        problems = (
            self.validate(request.method, request.path, request.headers, payload) if self.validate else []
        )
        if problems:
            self.errors.extend(f"{request.method} {request.path}: {p}" for p in problems)
            arrival.status = 400
            return web.json_response({"ok": False, "errors": problems}, status=400)
        status, answer = (
            self.respond(request.method, request.path, payload) if self.respond else (self.ok_status, "ok")
        )
        arrival.status = status
        if 200 <= status < 300:
            self._accept(arrival)
        if isinstance(answer, str):
            return web.Response(status=status, text=answer)
        return web.json_response(answer, status=status)

    def _accept(self, arrival: Arrival) -> None:
        self.accepted.setdefault(arrival.key or f"no-key-{len(self.arrivals)}", []).append(arrival)


# --- Slack (Block Kit limits) ---------------------------------------------------------------------

SLACK_BLOCK_TYPES = {"header", "section", "context", "divider", "actions"}
TEXT_TYPES = {"plain_text", "mrkdwn"}


def _text_obj(obj: Any, where: str, limit: int, types: set[str] = TEXT_TYPES) -> list[str]:
    if not isinstance(obj, dict) or obj.get("type") not in types:
        return [f"{where}: text object with type in {sorted(types)} expected"]
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        return [f"{where}: empty text"]
    if len(text) > limit:
        return [f"{where}: {len(text)} chars > {limit}"]
    return []


def validate_slack(method: str, path: str, headers: Mapping[str, str], body: Any) -> list[str]:
    if method != "POST" or not isinstance(body, dict):
        return ["POST with a JSON object expected"]
    errors: list[str] = []
    if not isinstance(body.get("text"), str) or not body["text"]:
        errors.append("text fallback missing")
    blocks = body.get("blocks")
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= 50:
        return [*errors, "blocks: 1..50 expected"]
    total = 0
    for i, b in enumerate(blocks):
        kind = b.get("type") if isinstance(b, dict) else None
        where = f"blocks[{i}]({kind})"
        if kind not in SLACK_BLOCK_TYPES:
            errors.append(f"{where}: unknown block type")
            continue
        if kind == "header":
            errors += _text_obj(b.get("text"), where, 150, {"plain_text"})
        elif kind == "section":
            if "text" not in b and "fields" not in b:
                errors.append(f"{where}: needs text or fields")
            if "text" in b:
                errors += _text_obj(b["text"], where + ".text", 3000)
            if "fields" in b:
                fields = b["fields"]
                if not isinstance(fields, list) or not 1 <= len(fields) <= 10:
                    errors.append(f"{where}.fields: 1..10 expected")
                else:
                    for j, f in enumerate(fields):
                        errors += _text_obj(f, f"{where}.fields[{j}]", 2000)
        elif kind == "context":
            elements = b.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
                errors.append(f"{where}.elements: 1..10 expected")
            else:
                for j, e in enumerate(elements):
                    errors += _text_obj(e, f"{where}.elements[{j}]", 3000)
        total += len(json.dumps(b))
    if total + len(body.get("text") or "") > 12_000:
        errors.append(f"message too large: {total} chars of blocks")
    return errors


# --- PagerDuty Events API v2 ------------------------------------------------------------------------

PD_SEVERITIES = {"critical", "error", "warning", "info"}
PD_ACTIONS = {"trigger", "acknowledge", "resolve"}
PD_TOP = {"routing_key", "event_action", "dedup_key", "payload", "images", "links", "client", "client_url"}
PD_PAYLOAD = {"summary", "source", "severity", "timestamp", "component", "group", "class", "custom_details"}


def _iso(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _links(links: Any) -> list[str]:
    if links is None:
        return []
    if not isinstance(links, list):
        return ["links: array expected"]
    return [
        f"links[{i}]: href required"
        for i, link in enumerate(links)
        if not isinstance(link, dict) or not isinstance(link.get("href"), str) or not link["href"]
    ]


def validate_pagerduty(method: str, path: str, headers: Mapping[str, str], body: Any) -> list[str]:
    if method != "POST" or not isinstance(body, dict):
        return ["POST with a JSON object expected"]
    if not isinstance(body.get("routing_key"), str) or not body["routing_key"]:
        return ["routing_key required"]
    errors: list[str] = []
    payload = body.get("payload")
    if path == "/v2/change/enqueue":
        if not isinstance(payload, dict):
            return ["payload required"]
        summary = payload.get("summary")
        if not isinstance(summary, str) or not 1 <= len(summary) <= 1024:
            errors.append("payload.summary: 1..1024 chars required")
        if "timestamp" in payload and not _iso(payload["timestamp"]):
            errors.append("payload.timestamp: ISO 8601 expected")
        if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
            errors.append("payload.custom_details: object expected")
        return errors + _links(body.get("links"))
    if path != "/v2/enqueue":
        return [f"unknown endpoint {path}"]
    unknown = set(body) - PD_TOP
    if unknown:
        errors.append(f"unknown fields {sorted(unknown)}")
    action = body.get("event_action")
    if action not in PD_ACTIONS:
        return [*errors, f"event_action {action!r} not in {sorted(PD_ACTIONS)}"]
    dedup = body.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or len(dedup) > 255):
        errors.append("dedup_key: string of at most 255 chars")
    if action != "trigger":
        if not dedup:
            errors.append(f"{action} needs dedup_key")
        return errors
    if not isinstance(payload, dict):
        return [*errors, "payload required for trigger"]
    unknown = set(payload) - PD_PAYLOAD
    if unknown:
        errors.append(f"unknown payload fields {sorted(unknown)}")
    summary = payload.get("summary")
    if not isinstance(summary, str) or not 1 <= len(summary) <= 1024:
        errors.append("payload.summary: 1..1024 chars required")
    if not isinstance(payload.get("source"), str) or not payload["source"]:
        errors.append("payload.source required")
    if payload.get("severity") not in PD_SEVERITIES:
        errors.append(f"payload.severity {payload.get('severity')!r} not in {sorted(PD_SEVERITIES)}")
    if "timestamp" in payload and not _iso(payload["timestamp"]):
        errors.append("payload.timestamp: ISO 8601 expected")
    for name in ("component", "group", "class"):
        if name in payload and not isinstance(payload[name], str):
            errors.append(f"payload.{name}: string expected")
    if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
        errors.append("payload.custom_details: object expected")
    if len(json.dumps(body)) > 512 * 1024:
        errors.append("event larger than 512 KB")
    return errors + _links(body.get("links"))


def pagerduty_respond(method: str, path: str, body: Any) -> tuple[int, Any]:
    return 202, {
        "status": "success",
        "message": "Event processed",
        "dedup_key": (body or {}).get("dedup_key"),
    }


# --- Grafana annotations ----------------------------------------------------------------------------

GRAFANA_POST = {"time", "timeEnd", "tags", "text", "dashboardUID", "dashboardId", "panelId", "data"}
GRAFANA_PATCH = {"time", "timeEnd", "tags", "text", "data"}


class Grafana:
    """An annotation store with Grafana's create / patch endpoints and their checks."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.annotations: dict[int, dict[str, Any]] = {}
        self._next = 1

    def validate(self, method: str, path: str, headers: Mapping[str, str], body: Any) -> list[str]:
        if headers.get("Authorization") != f"Bearer {self.token}":
            return ["Authorization: Bearer <token> required"]
        if not isinstance(body, dict):
            return ["JSON object expected"]
        errors: list[str] = []
        match = re.fullmatch(r"/api/annotations/(\d+)", path)
        if method == "POST" and path == "/api/annotations":
            errors += [f"unknown field {k}" for k in set(body) - GRAFANA_POST]
            if not isinstance(body.get("time"), int) or body["time"] < 10**12:
                errors.append("time: epoch milliseconds (integer) required")
            if not isinstance(body.get("text"), str) or not body["text"]:
                errors.append("text required")
            start = body.get("time", 0)
        elif method == "PATCH" and match:
            if int(match.group(1)) not in self.annotations:
                return ["annotation not found"]
            errors += [f"unknown field {k}" for k in set(body) - GRAFANA_PATCH]
            start = body.get("time", self.annotations[int(match.group(1))]["time"])
        else:
            return [f"unexpected {method} {path}"]
        if "timeEnd" in body and (not isinstance(body["timeEnd"], int) or body["timeEnd"] < start):
            errors.append("timeEnd: integer ms >= time expected")
        tags = body.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            errors.append("tags: list of non-empty strings expected")
        elif any(len(t) > 100 for t in tags):  # Grafana keeps tags of at most 100 characters
            errors.append("tags: longer than 100 characters")
        return errors

    def respond(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "POST":
            annotation_id = self._next
            self._next += 1
            self.annotations[annotation_id] = dict(body)
            return 200, {"message": "Annotation added", "id": annotation_id}
        annotation_id = int(path.rsplit("/", 1)[1])
        self.annotations[annotation_id].update(body)
        return 200, {"message": "Annotation patched"}


# --- the generic webhook, verified with the snippet of docs/integrations.md -------------------------


def documented_verifier() -> Callable[..., bool]:
    """``verify_watcher_webhook`` exactly as docs/integrations.md prints it."""
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(r"<!-- verify-snippet -->\s*```python\n(.*?)```", text, re.DOTALL)
    assert match, "docs/integrations.md lost its verification snippet"
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), str(DOCS), "exec"), namespace)
    return namespace["verify_watcher_webhook"]  # type: ignore[no-any-return]


class WebhookReceiver(Receiver):
    """A deployer endpoint: rejects (401) anything whose signature the documented snippet refuses."""

    def __init__(self, secret: bytes, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.secret = secret
        self.verify = documented_verifier()
        self.unsigned = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if not self.verify(self.secret, request.headers, body):
            self.unsigned += 1
            self.errors.append("signature did not verify")
            return web.Response(status=401, text="bad signature")
        return await super()._handle(_Replay(request, body))  # type: ignore[arg-type]


class _Replay:
    """The request again, with its body already read (aiohttp reads a body once)."""

    def __init__(self, request: web.Request, body: bytes) -> None:
        self._r, self._body = request, body
        self.method, self.path, self.headers = request.method, request.path, request.headers

    async def read(self) -> bytes:
        return self._body


# --- records to deliver -----------------------------------------------------------------------------


def make_decision(
    n: int = 1,
    *,
    action: str = "rollback",
    rollout_id: str = "ro-0123456789abcdef",
    agent: str = "support-bot",
    environment: str = "prod",
    rows: int = 3,
    fail_at: int = 0,
) -> Any:
    """A decision with ``rows`` evidence rows, row ``fail_at`` failing (the trigger, slice "all")."""
    from watcher.contract.verdicts import (
        Action,
        ArmEstimate,
        Cause,
        Decision,
        Example,
        MetricEvidence,
        RolloutRef,
        SampleRatioEvidence,
        Verdict,
        decision_id,
    )

    act = Action(action)
    harm = act in (Action.PAUSE, Action.ROLLBACK)
    examples = (
        Example("conv-17", 0.125, "4bf92f3577b34da6a3ce929d0e0e4736", "https://tempo.example/4bf92f35"),
        Example("conv-4", 0.25),  # no trace id, no link
    )
    evidence = []
    for i in range(rows):
        verdict = Verdict.FAIL if i == fail_at else (Verdict.INCONCLUSIVE if i % 2 else Verdict.PASS)
        segment = "all" if i == fail_at else f"intent=topic-{i}"
        evidence.append(
            MetricEvidence(
                metric="quality",
                slice=segment,
                verdict=verdict,
                control=ArmEstimate(1985 + i, 0.7301),
                treatment=ArmEstimate(203 + i, 0.6351),
                effect=-0.095,
                effect_unit="difference",
                lower=-0.1487,
                upper=-0.0413,
                statistic=float("inf") if i == fail_at else 2.0,
                threshold=208000.0,
                tolerance=-0.03,
                critical=False,
                reason=f"quality in {segment} fell 0.095 (-0.149..-0.0413, e=2.79e+08 >= 2.08e+05) "
                f"canary 0.635 "
                f"n={203 + i} vs baseline 0.73 n={1985 + i}",
            )
        )
    ref = RolloutRef(rollout_id, agent, environment, "canary", "v41", "v42", 0.1)
    cause = Cause.REGRESSION if act in (Action.PAUSE, Action.ROLLBACK) else Cause.NON_INFERIOR
    return Decision(
        decision_id=decision_id(rollout_id, n, act),
        ts=1795767475.609 + n,
        rollout=ref,
        action=act,
        cause=cause,
        reason=f"{action}: quality in all fell 0.095 (-0.149..-0.0413, e=2.79e+08 >= 2.08e+05) #{n}",
        evidence=tuple(evidence),
        sample_ratio=SampleRatioEvidence(0.1, 0.0973, 2124, 19716, 0.0036, 1000.0, False, "sample ratio ok"),
        trigger={"metric": "quality", "slice": "all"} if harm else None,
        sequence=n,
        examples=examples if harm else (),
    )


def make_rollout(
    state: str = "running",
    *,
    rollout_id: str = "ro-0123456789abcdef",
    ended: float | None = None,
    agent: str = "support-bot",
) -> dict[str, Any]:
    return {
        "rollout_id": rollout_id,
        "agent_id": agent,
        "environment": "prod",
        "strategy": "canary",
        "baseline_version": "v41",
        "canary_version": "v42",
        "canary_weight": 0.1,
        "state": state,
        "started_ts": 1795767000.0,
        "ended_ts": ended,
        "flag": None,
        "source": "marker",
        "markers": [{"event_id": "m-1", "action": "started", "ts": 1795767000.0}],
    }


def marker(action: str, ts: float, event_id: str | None = None) -> dict[str, Any]:
    return {
        "event_id": event_id or f"m-{action}-{ts}",
        "action": action,
        "ts": ts,
        "canary_weight": None,
        "actor": "argo-rollouts",
    }


# --- running an outbox in a test ---------------------------------------------------------------------


async def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class Running:
    """An outbox whose ``run`` is a background task for the duration of a test."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Outbox:
        self.task = asyncio.create_task(self.outbox.run(self.stop))
        return self.outbox

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 2.0)
