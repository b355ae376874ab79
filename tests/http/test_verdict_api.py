"""Argo Rollouts' web-metric contract on the verdict endpoints, over simulated rollouts.

Argo counts a non-2xx answer, an unreadable body or a jsonPath miss as a measurement *error* (enough
of them in a row abort the rollout), so: always 200, ``data.verdict`` always there, ``inconclusive``
while the evidence is thin, ``fail`` once watcher decided rollback, ``pass`` once it decided promote.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from watcher.config import load_settings
from watcher.contract.verdicts import Action
from watcher.engine import Engine
from watcher.http.api import Api
from watcher.judges.policy import override
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate
from watcher.storage.decisions import MemoryDecisionLog

DOC = Path(__file__).resolve().parents[2] / "docs" / "deployers.md"
VERDICTS = {"pass", "fail", "inconclusive"}
QUERY = "/v1/verdict?agent=support-bot&environment=prod&version=v42"


class Argo:
    """Measures like Argo's web provider: GET, 2xx or error, JSON, the jsonPath, the two conditions."""

    def __init__(
        self,
        client: TestClient,
        json_path: str = "{$.data.verdict}",
        success: str = 'result == "pass"',
        failure: str = 'result == "fail"',
    ) -> None:
        self.client = client
        self.keys = _json_path_keys(json_path)
        self.success, self.failure = _condition_value(success), _condition_value(failure)
        self.slowest = 0.0

    async def verdict(self, path: str) -> tuple[str, dict[str, Any]]:
        started = time.perf_counter()
        resp = await self.client.get(path)
        body = await resp.json()
        self.slowest = max(self.slowest, time.perf_counter() - started)
        assert resp.status == 200, (path, resp.status, body)  # anything else is an Argo measurement error
        value: Any = body
        for key in self.keys:
            assert isinstance(value, dict) and key in value, (path, body)  # a jsonPath miss is an error too
            value = value[key]
        assert value in VERDICTS, body
        return value, body["data"]

    async def phase(self, path: str) -> str:
        """The measurement phase Argo records (both conditions set: neither true is Inconclusive)."""
        result, _ = await self.verdict(path)
        if result == self.failure:
            return "Failed"
        return "Successful" if result == self.success else "Inconclusive"


def _json_path_keys(json_path: str) -> list[str]:
    m = re.fullmatch(r"\{\$((?:\.\w+)+)\}", json_path)
    assert m, f"unexpected jsonPath {json_path!r}"
    return m.group(1).strip(".").split(".")


def _condition_value(condition: str) -> str:
    m = re.fullmatch(r'\s*result\s*==\s*"(\w+)"\s*', condition)
    assert m, f"unexpected condition {condition!r}"
    return m.group(1)


async def _client(engine: Engine, log: MemoryDecisionLog) -> TestClient:
    api = Api(engine, registry=CollectorRegistry(), decision_log=log, readiness=lambda: (True, "ok"))
    client = TestClient(TestServer(api.app()))
    await client.start_server()
    return client


Fresh = tuple[Engine, MemoryDecisionLog, Argo]


@pytest.fixture
async def fresh() -> AsyncIterator[Fresh]:
    engine, log = Engine(load_settings(environ={})), MemoryDecisionLog()
    client = await _client(engine, log)
    try:
        yield engine, log, Argo(client)
    finally:
        await client.close()


def _lines(preset: str, **changes: Any) -> list[bytes]:
    return list(generate(dataclasses.replace(PRESETS[preset], **changes)))


async def test_a_regression_is_inconclusive_then_fail(fresh: Fresh) -> None:
    engine, log, argo = fresh
    assert (await argo.verdict(QUERY))[0] == "inconclusive"  # nothing seen yet: not an error
    lines = _lines("demo", duration_s=420.0)  # quality falls for intent=billing from 120 s
    seen: list[str] = []
    rollout_id = None
    for i in range(0, len(lines), 1500):
        log.append_many(engine.process(lines[i : i + 1500]).decisions)
        rollout_id = rollout_id or engine.registry.all()[0].rollout_id
        by_id, data = await argo.verdict(f"/v1/rollouts/{rollout_id}/verdict")
        by_query, _ = await argo.verdict(QUERY)
        assert by_id == by_query
        decided = engine.last_action.get(rollout_id) is Action.ROLLBACK
        assert (by_id == "fail") == decided, (i, data)  # fail exactly once watcher decided rollback
        seen.append(by_id)
    assert seen[0] == "inconclusive" and seen[-1] == "fail", seen
    assert set(seen[seen.index("fail") :]) == {"fail"}  # latched: it never flips back
    _, data = await argo.verdict(QUERY)
    assert data["decision"] == "rollback" and data["rollout_id"] == rollout_id
    assert any(f.startswith("quality[intent=billing]") for f in data["failing"]), data  # which value failed
    assert data["decision_id"] == log.latest(rollout_id)["decision_id"] and "quality" in data["reason"]
    assert await argo.phase(QUERY) == "Failed"
    assert argo.slowest < 1.0


async def test_a_healthy_canary_is_inconclusive_then_pass(fresh: Fresh) -> None:
    engine, log, argo = fresh
    # What the default policy needs to promote (checked with `watcher replay`): 30 min and 1000
    # conversations per arm with every guardrail non-inferior; an even split gives the power.
    lines = _lines("healthy", duration_s=1900.0, conversations_per_s=20.0, canary_weight=0.5)
    promote_after = engine.policies.default.promote.min_duration_s
    seen: list[str] = []
    for i in range(0, len(lines), 15_000):
        log.append_many(engine.process(lines[i : i + 15_000]).decisions)
        verdict, data = await argo.verdict(QUERY)
        rollout = engine.registry.all()[0]
        assert (verdict == "pass") == (engine.last_action.get(rollout.rollout_id) is Action.PROMOTE), data
        if verdict == "pass" and "pass" not in seen:  # not before the minimum duration is over
            assert engine.state.watermark - rollout.started_ts >= promote_after
        seen.append(verdict)
    assert seen[0] == "inconclusive" and seen[-1] == "pass", seen
    assert set(seen[seen.index("pass") :]) == {"pass"} and "fail" not in seen
    _, data = await argo.verdict(QUERY)
    assert data["decision"] == "promote" and data["failing"] == [] and data["canary_version"] == "v42"
    assert await argo.phase(QUERY) == "Successful"
    assert argo.slowest < 1.0


async def test_unknown_paused_and_early_rollouts_are_inconclusive(fresh: Fresh) -> None:
    engine, log, argo = fresh
    log.append_many(engine.process(_lines("demo", duration_s=60.0)).decisions)  # early: too little data
    rollout = engine.registry.all()[0]
    for path in (
        f"/v1/rollouts/{rollout.rollout_id}/verdict",
        QUERY,
        "/v1/verdict?agent=support-bot",
        "/v1/rollouts/ro-0000000000000000/verdict",
        "/v1/verdict?agent=other-bot",
        "/v1/verdict?agent=support-bot&version=v99",
        "/v1/verdict?agent=support-bot&environment=staging",
    ):
        assert await argo.phase(path) == "Inconclusive", path
    # a pause asks for a human: Argo keeps the canary where it is (inconclusive), it does not abort
    state = engine.policy_states[rollout.rollout_id]
    ts = rollout.started_ts + 60
    decision, new_state = override(state, Action.PAUSE, "alice", "looks odd", ts, rollout.ref())
    engine.record_override(rollout.rollout_id, decision, new_state)
    verdict, data = await argo.verdict(QUERY)
    assert (verdict, data["decision"]) == ("inconclusive", "pause")
    # the only error: a template without the agent (Argo counts it toward consecutiveErrorLimit)
    resp = await argo.client.get("/v1/verdict?version=v42")
    assert resp.status == 400 and "agent" in (await resp.json())["error"]


def _seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)([smh])", duration)
    assert m, duration
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


async def test_documented_analysis_template_against_the_real_endpoint(fresh: Fresh) -> None:
    engine, log, _ = fresh
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)]
    template = next(b for b in blocks if isinstance(b, dict) and b.get("kind") == "AnalysisTemplate")
    rollout = next(b for b in blocks if isinstance(b, dict) and b.get("kind") == "Rollout")
    (metric,) = template["spec"]["metrics"]
    web = metric["provider"]["web"]
    assert web["jsonPath"] == "{$.data.verdict}"
    assert metric["successCondition"] == 'result == "pass"'
    assert metric["failureCondition"] == 'result == "fail"'
    assert metric["consecutiveErrorLimit"] >= 4 and metric["inconclusiveLimit"] >= metric["count"]
    assert metric["failureLimit"] == 0 and metric["consecutiveSuccessLimit"] == 1
    promote_after = engine.policies.default.promote.min_duration_s
    assert metric["count"] * _seconds(metric["interval"]) > promote_after  # time enough to reach pass
    assert web.get("timeoutSeconds", 10) <= 10  # watcher answers from memory: a short timeout is fine

    # Argo's argument substitution, with the Rollout's values over the template's defaults
    args = {a["name"]: a.get("value") for a in template["spec"]["args"]}
    step = next(s["analysis"] for s in rollout["spec"]["strategy"]["canary"]["steps"] if "analysis" in s)
    assert step["templates"][0]["templateName"] == template["metadata"]["name"]
    args.update({a["name"]: a["value"] for a in step["args"]})
    url = re.sub(r"\{\{\s*args\.([\w-]+)\s*\}\}", lambda m: str(args[m.group(1)]), web["url"])
    parsed = urlparse(url)
    query = dict(parse_qsl(parsed.query))
    assert parsed.path == "/v1/verdict" and set(query) == {"agent", "environment", "version"}
    path = f"{parsed.path}?{urlencode(query)}"

    client = await _client(engine, log)
    try:
        argo = Argo(client, web["jsonPath"], metric["successCondition"], metric["failureCondition"])
        assert await argo.phase(path) == "Inconclusive"
        lines = _lines("demo", duration_s=420.0)
        for i in range(0, len(lines), 5000):
            log.append_many(engine.process(lines[i : i + 5000]).decisions)
        assert query == {"agent": "support-bot", "environment": "prod", "version": "v42"}
        assert await argo.phase(path) == "Failed"
        assert argo.slowest < 1.0
    finally:
        await client.close()
