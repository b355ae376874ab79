"""The HTTP API, on one port: health, Prometheus exposition, rollouts, markers, decisions, verdicts
(and the outbox's deliveries, ``watcher.http.deliveries``, mounted on the same app).

Read endpoints answer from in-memory state (well under a second). The verdict endpoint follows Argo
Rollouts' web-metric rules: always 200 with ``{"data": {"verdict": ...}}``, ``inconclusive`` while the
evidence is thin, never a 5xx for "not enough data".
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from watcher.contract import Action, Decision, Deployment, Rejected, Verdict, decode_deployment
from watcher.engine import EngineView
from watcher.errors import ReportUnavailable
from watcher.http.deliveries import Deliveries, DeliveryRoutes, NoDeliveries
from watcher.http.replies import error_reply, json_reply, read_object
from watcher.judges import STRATEGIES, acknowledge, override
from watcher.report import render
from watcher.state import Rollout
from watcher.storage import DecisionLog

log = logging.getLogger(__name__)

Readiness = Callable[[], tuple[bool, str]]
MetricsBody = Callable[[], Awaitable[list[bytes]]]  # the Prometheus text of GET /metrics, in pieces
MarkerHook = Callable[[Deployment], Awaitable[bool]]  # durable on return; True: in Kafka too
DecisionHook = Callable[[list[Decision]], Awaitable[None]]

ENGINE: web.AppKey[EngineView] = web.AppKey("engine")


class Api:
    def __init__(
        self,
        engine: EngineView,
        *,
        registry: CollectorRegistry,
        metrics_body: MetricsBody | None = None,
        decision_log: DecisionLog,
        readiness: Readiness,
        on_marker: MarkerHook | None = None,
        on_decisions: DecisionHook | None = None,
        deliveries: Deliveries | None = None,
        max_body_bytes: int = 65_536,
        middlewares: Sequence[Any] = (),
    ) -> None:
        self.middlewares = list(middlewares)
        self.outbox: Deliveries = deliveries if deliveries is not None else NoDeliveries()
        self.engine = engine
        self.registry = registry
        # the daemon's builds the text without holding the event loop (watcher.service.exposition)
        self.metrics_body = metrics_body if metrics_body is not None else self._generate_latest
        self.decision_log = decision_log
        self.readiness = readiness
        self.on_marker = on_marker
        self.on_decisions = on_decisions
        self.max_body_bytes = max_body_bytes

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=self.middlewares)
        app[ENGINE] = self.engine
        app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics),
                web.get("/v1/rollouts", self.rollouts),
                web.get("/v1/rollouts/{rollout_id}", self.rollout),
                web.get("/v1/rollouts/{rollout_id}/report", self.report),
                web.get("/v1/rollouts/{rollout_id}/verdict", self.verdict),
                web.get("/v1/verdict", self.verdict_query),
                web.post("/v1/rollouts/{rollout_id}/acknowledge", self.acknowledge),
                web.post("/v1/rollouts/{rollout_id}/override", self.override),
                web.post("/v1/deployments", self.deployment),
                web.get("/v1/decisions", self.decisions),
                web.get("/v1/drift", self.drift),
            ]
        )
        app.add_routes(DeliveryRoutes(self.outbox, self.max_body_bytes).routes())
        return app

    # -- health ---------------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        return json_reply({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ready, why = self.readiness()
        return json_reply({"ready": ready, "reason": why}, status=200 if ready else 503)

    async def _generate_latest(self) -> list[bytes]:
        return [generate_latest(self.registry)]

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        pieces = await self.metrics_body()
        response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE_LATEST})
        response.content_length = sum(map(len, pieces))
        try:
            await response.prepare(request)
            for piece in pieces:  # tens of MB at thousands of agents: to the socket piece by piece
                await response.write(piece)
            await response.write_eof()
        except ConnectionResetError:  # the scraper gave up (its timeout) or went away: nothing to do
            log.info("GET /metrics: the client closed the connection before the answer was written")
        return response

    # -- rollouts -------------------------------------------------------------------------------
    async def rollouts(self, request: web.Request) -> web.Response:
        return json_reply({"rollouts": [self._summary(r) for r in self.engine.registry.all()]})

    async def rollout(self, request: web.Request) -> web.Response:
        rollout = self._find(request)
        if rollout is None:
            return error_reply(404, "no such rollout", rollout_id=request.match_info["rollout_id"])
        body = self._summary(rollout)
        body["arms"] = self._arms(rollout)
        evidence = self.engine.evidence.get(rollout.rollout_id)
        body["evidence"] = [m.to_dict() for m in evidence.metrics] if evidence else []
        body["sample_ratio"] = evidence.sample_ratio.to_dict() if evidence and evidence.sample_ratio else None
        coverage = self.engine.coverage.get(rollout.rollout_id)
        # what the judge can use of the rollout's traffic, and why it is not judged when it is not
        body["coverage"] = coverage.to_dict() if coverage else None
        return json_reply(body)

    async def report(self, request: web.Request) -> web.Response:
        """The rollout's HTML report (``watcher.report``), the page ``watcher replay --report`` writes."""
        rollout = self._find(request)
        if rollout is None:
            return error_reply(404, "no such rollout", rollout_id=request.match_info["rollout_id"])
        histories = self.engine.histories([rollout.rollout_id])  # copied here, drawn off the loop
        title = f"watcher: {rollout.agent_id}/{rollout.environment} {rollout.rollout_id}"
        try:
            page = await asyncio.to_thread(render, histories, title=title)
        except ReportUnavailable as exc:
            return error_reply(501, str(exc), extra=exc.extra)
        return web.Response(text=page, content_type="text/html")

    async def verdict(self, request: web.Request) -> web.Response:
        rollout = self._find(request)
        if rollout is None:
            # Argo treats an HTTP error as a failed measurement: a rollout watcher has not seen yet
            # (no telemetry so far) is "inconclusive", not an error.
            return json_reply(
                {"data": self._no_verdict("no such rollout (yet)", request.match_info["rollout_id"])}
            )
        return json_reply({"data": self._verdict(rollout)})

    async def verdict_query(self, request: web.Request) -> web.Response:
        q = request.query
        agent, env, version = q.get("agent"), q.get("environment", "prod"), q.get("version")
        if not agent:
            return error_reply(400, "query parameter 'agent' is required")
        for r in self.engine.registry.all():
            if (
                r.agent_id == agent
                and r.environment == env
                and (version is None or r.canary_version == version)
            ):
                return json_reply({"data": self._verdict(r)})
        return json_reply({"data": self._no_verdict("no rollout for this agent/version (yet)")})

    async def acknowledge(self, request: web.Request) -> web.Response:
        return await self._human(request, acknowledge_=True)

    async def override(self, request: web.Request) -> web.Response:
        return await self._human(request, acknowledge_=False)

    async def _human(self, request: web.Request, *, acknowledge_: bool) -> web.Response:
        rollout = self._find(request)
        if rollout is None:
            return error_reply(404, "no such rollout", rollout_id=request.match_info["rollout_id"])
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        actor = body.get("actor")
        reason = body.get("reason", "")
        if not isinstance(actor, str) or not 0 < len(actor) <= 128:
            return error_reply(400, "field 'actor' is required: a string of 1-128 characters")
        if not isinstance(reason, str) or len(reason) > 1024:
            return error_reply(400, "field 'reason' must be a string of at most 1024 characters")
        state = self.engine.policy_states.get(rollout.rollout_id)
        if state is None:
            return error_reply(409, "this rollout is not being judged", state=rollout.state.value)
        ts = self.engine.state.watermark or rollout.started_ts
        if acknowledge_:
            result = acknowledge(state, actor, reason, ts, rollout.ref())
        else:
            try:
                action = Action(body.get("action"))
            except ValueError:
                return error_reply(400, "field 'action' must be one of pause, rollback, promote, resume")
            if action in (Action.CONTINUE, Action.INCONCLUSIVE):
                return error_reply(400, "field 'action' must be one of pause, rollback, promote, resume")
            result = override(state, action, actor, reason, ts, rollout.ref())
        decision, new_state = result
        if decision is None:
            return error_reply(409, "nothing to acknowledge: the rollout is not paused")
        self.engine.record_override(rollout.rollout_id, decision, new_state)
        if self.on_decisions is not None:
            await self.on_decisions([decision])
        return json_reply({"decision": decision.to_dict()}, status=201)

    # -- markers --------------------------------------------------------------------------------
    async def deployment(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return error_reply(413, f"body larger than {self.max_body_bytes} bytes")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error_reply(413, f"body larger than {self.max_body_bytes} bytes")
        marker = decode_deployment(raw, check=STRATEGIES.check_marker)
        if isinstance(marker, Rejected):
            return error_reply(400, marker.detail, reason=marker.reason.value)
        published = False
        if self.on_marker is not None:
            # durable first (the spool, then the deployments topic), applied after: a marker that was
            # answered 202 is never lost, and one that could not be stored is not applied
            try:
                published = await self.on_marker(marker)
            except Exception as exc:
                log.error("marker %s could not be stored, not applied: %s", marker.event_id, exc)
                return error_reply(503, f"the marker could not be stored: {exc}", event_id=marker.event_id)
        change = self.engine.apply_marker(marker)
        if change is None:
            return json_reply({"status": "duplicate", "event_id": marker.event_id}, status=200)
        rollout = change.rollout
        body: dict[str, Any] = {
            "status": change.kind,
            "event_id": marker.event_id,
            "published": published,
            "rollout": self._summary(rollout) if rollout else None,
        }
        if change.note:
            body["note"] = change.note
        return json_reply(body, status=202)

    # -- decisions ------------------------------------------------------------------------------
    async def decisions(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = min(int(q.get("limit", "100")), 1000)
            since = float(q["since"]) if "since" in q else None
        except ValueError:
            return error_reply(400, "'limit' must be an integer and 'since' a number (Unix seconds)")
        action = q.get("action")
        if action is not None and action not in {a.value for a in Action}:
            return error_reply(400, f"unknown action {action!r}")
        records = self.decision_log.list(
            rollout_id=q.get("rollout_id"),
            agent_id=q.get("agent"),
            environment=q.get("environment"),
            action=action,
            since=since,
            limit=limit,
        )
        return json_reply({"decisions": records})

    async def drift(self, request: web.Request) -> web.Response:
        try:
            limit = min(int(request.query.get("limit", "100")), 1000)
        except ValueError:
            return error_reply(400, "'limit' must be an integer")
        return json_reply({"drift_signals": self.decision_log.list_drift(limit=limit)})

    # -- helpers --------------------------------------------------------------------------------
    def _find(self, request: web.Request) -> Rollout | None:
        return self.engine.registry.get(request.match_info["rollout_id"])

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        return await read_object(request, self.max_body_bytes)

    def _summary(self, r: Rollout) -> dict[str, Any]:
        d = r.to_dict()
        d["markers"] = d["markers"][-20:]
        d["decision"] = self.engine.last_action.get(r.rollout_id, Action.CONTINUE).value
        # what the treatment version passed (or not) before this rollout: ``watcher gate`` verdicts
        d["gates"] = self.engine.registry.gates(r.agent_id, r.canary_version)
        return d

    @staticmethod
    def _no_verdict(reason: str, rollout_id: str | None = None) -> dict[str, Any]:
        """The same keys as a real verdict, so a template reading any of them never misses."""
        return {
            "verdict": Verdict.INCONCLUSIVE.value,
            "decision": Action.CONTINUE.value,
            "rollout_id": rollout_id,
            "state": None,
            "failing": [],
            "reason": reason,
            "decision_id": None,
        }

    def _verdict(self, r: Rollout) -> dict[str, Any]:
        action = self.engine.last_action.get(r.rollout_id, Action.CONTINUE)
        evidence = self.engine.evidence.get(r.rollout_id)
        if action is Action.ROLLBACK:
            verdict = Verdict.FAIL
        elif action is Action.PROMOTE:
            verdict = Verdict.PASS
        else:
            verdict = Verdict.INCONCLUSIVE
        failing = [f"{m.metric}[{m.slice}]" for m in evidence.failing()] if evidence else []
        latest = self.decision_log.latest(r.rollout_id)
        return {
            "verdict": verdict.value,
            "decision": action.value,
            "rollout_id": r.rollout_id,
            "agent": r.agent_id,
            "environment": r.environment,
            "canary_version": r.canary_version,
            "state": r.state.value,
            "failing": failing,
            "reason": latest["reason"] if latest else "no decision yet: evidence is accumulating",
            "decision_id": latest["decision_id"] if latest else None,
        }

    def _arms(self, r: Rollout) -> dict[str, Any]:
        state = self.engine.state
        arms: dict[str, Any] = {}
        shares = {w: state.traffic_share(r.agent_id, r.environment, w) for w in ("cumulative", "recent")}
        for key in state.keys():
            agent, env, version, arm, seg_key, seg_value = key
            if (
                agent != r.agent_id
                or env != r.environment
                or version not in (r.baseline_version, r.canary_version)
            ):
                continue
            entry = arms.setdefault(
                arm, {"version": version, "overall": {}, "segments": {}, "traffic_share": {}}
            )
            snaps = {w: dataclasses.asdict(state.snapshot(key, w)) for w in ("cumulative", "recent")}
            if seg_key:
                entry["segments"][f"{seg_key}={seg_value}"] = snaps
            else:
                entry["overall"] = snaps
                entry["traffic_share"] = {w: shares[w].get((version, arm)) for w in shares}
        return arms
