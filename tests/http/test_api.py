"""The HTTP API over a real aiohttp server: humans acknowledging and overriding, decision queries."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from watcher.config import load_settings
from watcher.engine import Engine
from watcher.http.api import Api
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate
from watcher.storage.decisions import MemoryDecisionLog


class Served:
    def __init__(
        self, engine: Engine, log: MemoryDecisionLog, base: str, http: aiohttp.ClientSession
    ) -> None:
        self.engine, self.log, self.base, self.http = engine, log, base, http

    async def get(self, path: str) -> tuple[int, dict]:
        async with self.http.get(self.base + path) as r:
            return r.status, await r.json()

    async def post(self, path: str, body: object = None, data: bytes | None = None) -> tuple[int, dict]:
        async with self.http.post(self.base + path, json=body if data is None else None, data=data) as r:
            return r.status, await r.json()


def _feed(engine: Engine, log: MemoryDecisionLog, preset: str, duration_s: float) -> None:
    lines = list(generate(dataclasses.replace(PRESETS[preset], duration_s=duration_s)))
    for i in range(0, len(lines), 1000):
        log.append_many(engine.process(lines[i : i + 1000]).decisions)


@pytest.fixture
async def served_srm() -> AsyncIterator[Served]:
    """A rollout paused by the sample-ratio check (20 % of canary telemetry lost)."""
    engine = Engine(load_settings(environ={}))
    log = MemoryDecisionLog()
    _feed(engine, log, "srm", 600.0)

    async def persist(decisions):  # the daemon's hook: decisions from humans go to the log too
        log.append_many(decisions)

    api = Api(
        engine,
        registry=CollectorRegistry(),
        decision_log=log,
        readiness=lambda: (True, "ok"),
        on_decisions=persist,
        max_body_bytes=1024,
    )
    runner = web.AppRunner(api.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession() as http:
        yield Served(engine, log, f"http://127.0.0.1:{port}", http)
    await runner.cleanup()


async def test_pause_acknowledge_then_override_rollback(served_srm: Served) -> None:
    s = served_srm
    status, body = await s.get("/v1/rollouts")
    rollout_id = body["rollouts"][0]["rollout_id"]
    assert body["rollouts"][0]["decision"] == "pause"
    status, verdict = await s.get(f"/v1/rollouts/{rollout_id}/verdict")
    assert status == 200 and verdict["data"]["decision"] == "pause"

    status, ack = await s.post(
        f"/v1/rollouts/{rollout_id}/acknowledge", {"actor": "alice", "reason": "known"}
    )
    assert status == 201, ack
    assert ack["decision"]["action"] == "resume" and ack["decision"]["actor"] == "alice"
    assert ack["decision"]["cause"] == "acknowledged"
    status, again = await s.post(f"/v1/rollouts/{rollout_id}/acknowledge", {"actor": "alice"})
    assert status == 409  # nothing paused any more

    status, over = await s.post(
        f"/v1/rollouts/{rollout_id}/override",
        {"actor": "bob", "reason": "customers complain", "action": "rollback"},
    )
    assert (
        status == 201 and over["decision"]["action"] == "rollback" and over["decision"]["cause"] == "override"
    )
    status, verdict = await s.get(f"/v1/rollouts/{rollout_id}/verdict")
    assert verdict["data"]["verdict"] == "fail"

    status, listed = await s.get(f"/v1/decisions?rollout_id={rollout_id}")
    assert [d["action"] for d in listed["decisions"]] == ["rollback", "resume", "pause"]  # newest first
    ids = [d["decision_id"] for d in listed["decisions"]]
    assert len(set(ids)) == 3
    status, only = await s.get("/v1/decisions?action=pause")
    assert [d["action"] for d in only["decisions"]] == ["pause"]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/rollouts/{id}/override", {"actor": "x", "action": "explode"}, 400),
        ("/v1/rollouts/{id}/override", {"actor": "x", "action": "continue"}, 400),
        ("/v1/rollouts/{id}/override", {"action": "rollback"}, 400),  # who? required
        ("/v1/rollouts/{id}/override", {"actor": "", "action": "rollback"}, 400),
        ("/v1/rollouts/{id}/override", [1, 2], 400),
        ("/v1/rollouts/ro-missing/override", {"actor": "x", "action": "rollback"}, 404),
        ("/v1/rollouts/{id}/acknowledge", {"actor": "x" * 200}, 400),
    ],
)
async def test_bad_human_requests_get_clear_4xx(
    served_srm: Served, path: str, body: object, status: int
) -> None:
    rollout_id = (await served_srm.get("/v1/rollouts"))[1]["rollouts"][0]["rollout_id"]
    got, answer = await served_srm.post(path.replace("{id}", rollout_id), body)
    assert got == status and "error" in answer


async def test_bodies_that_are_not_json_or_too_large(served_srm: Served) -> None:
    rollout_id = (await served_srm.get("/v1/rollouts"))[1]["rollouts"][0]["rollout_id"]
    status, answer = await served_srm.post(f"/v1/rollouts/{rollout_id}/override", data=b"{nope")
    assert status == 400 and "JSON" in answer["error"]
    status, answer = await served_srm.post("/v1/deployments", data=b"x" * 5000)
    assert status == 413


async def test_a_marker_naming_an_unknown_strategy_is_refused_with_the_known_ones(served_srm: Served) -> None:
    marker = {"event_id": "m1", "ts": 1_795_766_400, "agent_id": "support-bot", "action": "started",
              "strategy": "linear", "canary_version": "v43"}  # fmt: skip
    status, answer = await served_srm.post("/v1/deployments", marker)
    assert status == 400 and answer["reason"] == "invalid_value"
    assert answer["error"] == "strategy: unknown strategy 'linear' (known: blue_green, canary, flag, shadow)"
    status, answer = await served_srm.post("/v1/deployments", {**marker, "strategy": "flag"})
    assert status == 400 and answer["reason"] == "missing_field" and answer["error"].startswith("flag: ")


async def test_decision_query_validation_and_drift(served_srm: Served) -> None:
    assert (await served_srm.get("/v1/decisions?limit=ten"))[0] == 400
    assert (await served_srm.get("/v1/decisions?action=explode"))[0] == 400
    status, body = await served_srm.get("/v1/drift")
    assert status == 200 and body == {"drift_signals": []}
    status, body = await served_srm.get("/v1/verdict")
    assert status == 400
    status, body = await served_srm.get("/v1/verdict?agent=support-bot&version=v42")
    assert body["data"]["decision"] == "pause"
    status, body = await served_srm.get("/v1/verdict?agent=nobody")
    assert status == 200 and body["data"]["verdict"] == "inconclusive"


async def test_a_marker_older_than_the_rollout_s_weight_says_it_was_not_applied(served_srm: Served) -> None:
    base = {"agent_id": "docs-bot", "baseline_version": "v41", "canary_version": "v42", "strategy": "canary"}
    now = 1_795_766_400
    status, _ = await served_srm.post(
        "/v1/deployments", {**base, "event_id": "s1", "ts": now, "action": "started", "canary_weight": 0.1}
    )
    assert status == 202
    status, _ = await served_srm.post(
        "/v1/deployments",
        {**base, "event_id": "w1", "ts": now + 600, "action": "weight_changed", "canary_weight": 0.3},
    )
    assert status == 202
    example = {
        **base,
        "event_id": "dep-77",
        "ts": now - 9 * 86_400,
        "action": "started",
        "canary_weight": 0.1,
    }
    status, answer = await served_srm.post("/v1/deployments", example)  # the docs' example, days old
    assert status == 202 and answer["rollout"]["canary_weight"] == 0.3
    assert answer["note"].startswith("canary_weight 0.1 not applied: a newer marker")
