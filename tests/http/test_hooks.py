"""Flagger's webhooks: status per hook and watcher state, events -> markers, bad input, the doc's Canary."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from watcher.config import load_settings
from watcher.config.hooks import FlaggerTarget, HooksSettings
from watcher.contract.decode import decode_deployment
from watcher.contract.schema import Deployment, Rejected
from watcher.contract.verdicts import Action
from watcher.engine import Engine
from watcher.errors import CheckpointError, ConfigError
from watcher.http.flagger import FlaggerHooks
from watcher.http.flagger_protocol import (
    FLAGGER_PREFIX,
    FlaggerPayload,
    HookContext,
    HookType,
    Outcome,
    answer,
    lifecycle,
    marker_for,
    parse_payload,
)
from watcher.judges.policy import override
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate
from watcher.state.rollouts import Rollout, RolloutState
from watcher.storage.decisions import MemoryDecisionLog

DOC = Path(__file__).resolve().parents[2] / "docs" / "deployers.md"
TARGET = FlaggerTarget(namespace="agents", name="support-bot", agent_id="support-bot", environment="prod")
T0 = 1_795_766_400.0


def _body(
    phase: str = "Progressing", name: str = "support-bot", namespace: str = "agents", **metadata: str
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "phase": phase,
        "checksum": "7c9f5d8b6",
        "metadata": metadata,
    }


def _event(
    message: str, phase: str = "Progressing", ts_ms: int = int(T0 * 1000), **metadata: str
) -> dict[str, Any]:
    return _body(phase, eventMessage=message, eventType="Normal", timestamp=str(ts_ms), **metadata)


def _start(engine: Engine, version: str = "v42") -> Rollout:
    raw = json.dumps(
        {
            "event_id": f"dep-{version}",
            "ts": T0,
            "agent_id": "support-bot",
            "action": "started",
            "strategy": "canary",
            "baseline_version": "v41",
            "canary_version": version,
            "canary_weight": 0.1,
        }
    ).encode()
    marker = decode_deployment(raw)
    assert not isinstance(marker, Rejected)
    change = engine.apply_marker(marker)
    assert change is not None and change.rollout is not None
    return change.rollout


def _latch(engine: Engine, rollout: Rollout, action: Action) -> None:
    """A human override: the public path that latches a decision without a simulation."""
    state = engine.policy_states[rollout.rollout_id]
    decision, new_state = override(state, action, "alice", "test", T0 + 60, rollout.ref())
    engine.record_override(rollout.rollout_id, decision, new_state)


STATES = ("none", "running", "paused", "rollback", "promote", "not_ready")


def _engine_in(state: str) -> Engine:
    engine = Engine(load_settings(environ={}))
    if state != "none":
        rollout = _start(engine)
        if state in ("paused", "rollback", "promote"):
            _latch(
                engine,
                rollout,
                {"paused": Action.PAUSE, "rollback": Action.ROLLBACK, "promote": Action.PROMOTE}[state],
            )
    return engine


# hook -> expected status in STATES order (docs/deployers.md holds the same table)
EXPECTED: dict[HookType, tuple[int, ...]] = {
    HookType.CONFIRM_ROLLOUT: (200, 200, 409, 409, 200, 409),
    HookType.CONFIRM_TRAFFIC_INCREASE: (200, 200, 409, 409, 200, 409),
    HookType.CONFIRM_PROMOTION: (409, 409, 409, 409, 200, 409),
    HookType.ROLLBACK: (409, 409, 409, 200, 409, 409),
    HookType.PRE_ROLLOUT: (200, 200, 200, 409, 200, 200),
    HookType.ROLLOUT: (200, 200, 200, 409, 200, 200),
    HookType.POST_ROLLOUT: (200, 200, 200, 200, 200, 200),
    HookType.EVENT: (200, 200, 200, 200, 200, 200),
}


class Served:
    def __init__(
        self, client: TestClient, hooks: FlaggerHooks, engine: Engine, published: list[Deployment]
    ) -> None:
        self.client, self.hooks, self.engine, self.published = client, hooks, engine, published
        self.slowest = 0.0

    async def post(
        self, hook: HookType | str, body: Any = None, *, data: bytes | None = None
    ) -> tuple[int, Any]:
        path = hook.path if isinstance(hook, HookType) else hook
        started = time.perf_counter()
        resp = await self.client.post(path, json=body if data is None else None, data=data)
        payload = await resp.json()
        self.slowest = max(self.slowest, time.perf_counter() - started)
        return resp.status, payload


async def _serve(
    engine: Engine,
    *,
    ready: Callable[[], tuple[bool, str]] = lambda: (True, "ok"),
    on_marker: Any = "record",
    **kw: Any,
) -> tuple[Served, TestClient]:
    published: list[Deployment] = []

    async def record(marker: Deployment) -> bool:
        published.append(marker)
        return True

    hooks = FlaggerHooks(
        engine, [TARGET], readiness=ready, on_marker=record if on_marker == "record" else on_marker, **kw
    )
    app = web.Application()
    app.add_routes(hooks.routes())
    client = TestClient(TestServer(app))
    await client.start_server()
    return Served(client, hooks, engine, published), client


# -- the status matrix ------------------------------------------------------------------------------
@pytest.mark.parametrize("state", STATES)
async def test_every_hook_answers_per_watcher_state(state: str) -> None:
    ready = (lambda: (False, "catching up: lag 50000")) if state == "not_ready" else (lambda: (True, "ok"))
    for hook in HookType:  # a fresh engine per hook: pre-rollout and event may add markers
        served, client = await _serve(_engine_in("running" if state == "not_ready" else state), ready=ready)
        try:
            phase = "Waiting" if hook is HookType.EVENT else "Progressing"
            status, body = await served.post(hook, _body(phase))
        finally:
            await client.close()
        want = EXPECTED[hook][STATES.index(state)]
        assert status == want, (hook, state, body)
        assert body["hook"] == hook.value and body["canary"] == "agents/support-bot" and body["reason"]
        assert 200 <= status <= 202 or body["outcome"] in ("hold", "fail", "no_rollback")
        assert served.slowest < 1.0


def test_answer_is_pure_and_latched_decisions_outlive_readiness() -> None:
    rollout = _start(Engine(load_settings(environ={})))
    not_ready = HookContext(False, "broker down", rollout, Action.ROLLBACK, "rollback: quality fell")
    assert answer(HookType.ROLLBACK, not_ready).status == 200  # Flagger rolls back on 2xx
    assert answer(HookType.ROLLBACK, not_ready).outcome is Outcome.ROLLBACK
    assert "quality fell" in answer(HookType.ROLLOUT, not_ready).reason
    promoted = HookContext(False, "broker down", rollout, Action.PROMOTE)
    assert answer(HookType.CONFIRM_PROMOTION, promoted).status == 200
    paused = HookContext(False, "broker down", rollout, Action.PAUSE)
    assert "paused" in answer(HookType.CONFIRM_TRAFFIC_INCREASE, paused).reason  # the pause, not readiness
    for hook in HookType:  # Flagger: only 200-202 is success; never 204 or a redirect; never a 5xx or
        # 429, whose body Flagger's client drops (and with it watcher's reason)
        for ctx in (
            not_ready,
            promoted,
            paused,
            HookContext(True, "ok", None),
            HookContext(False, "x", None),
        ):
            status = answer(hook, ctx).status
            assert status in (200, 409)


async def test_a_pause_set_by_a_marker_holds_like_a_pause_decision() -> None:
    engine = _engine_in("running")
    raw = json.dumps(
        {"event_id": "p1", "ts": T0 + 5, "agent_id": "support-bot", "action": "paused", "actor": "bob"}
    ).encode()
    marker = decode_deployment(raw)
    assert not isinstance(marker, Rejected)
    engine.apply_marker(marker)
    served, client = await _serve(engine)
    try:
        status, body = await served.post(HookType.CONFIRM_TRAFFIC_INCREASE, _body())
        assert status == 409 and body["decision"] == "pause"
    finally:
        await client.close()


async def test_a_latched_decision_of_another_revision_does_not_hold_this_one() -> None:
    engine = _engine_in("rollback")  # v42 was judged bad and is still active in watcher
    served, client = await _serve(engine)
    try:
        status, _ = await served.post(HookType.ROLLBACK, _body(canary_version="v42"))
        assert status == 200
        status, body = await served.post(HookType.ROLLBACK, _body(canary_version="v43"))
        assert status == 409 and body["rollout_id"] is None
        status, _ = await served.post(HookType.CONFIRM_ROLLOUT, _body(canary_version="v43"))
        assert status == 200
    finally:
        await client.close()


# -- a real regression, judged from simulated telemetry ---------------------------------------------
async def test_demo_regression_makes_flagger_roll_back_with_the_reason() -> None:
    engine = Engine(load_settings(environ={}))
    decisions = MemoryDecisionLog()
    lines = list(generate(dataclasses.replace(PRESETS["demo"], duration_s=420.0)))
    served, client = await _serve(engine, decision_log=decisions)
    try:
        status, _ = await served.post(HookType.ROLLBACK, _body())
        assert status == 409  # nothing known yet: no rollback
        answers: list[int] = []
        for i in range(0, len(lines), 2000):
            decisions.append_many(engine.process(lines[i : i + 2000]).decisions)
            answers.append((await served.post(HookType.ROLLBACK, _body()))[0])
        assert answers[0] == 409 and answers[-1] == 200, answers  # healthy early, rolled back later
        assert set(answers[answers.index(200) :]) == {200}  # and never back: the decision is latched
        status, body = await served.post(HookType.ROLLOUT, _body())
        assert status == 409 and body["outcome"] == "fail"
        assert "quality" in body["reason"] and "intent=billing" in body["reason"]  # which value and where
        status, _ = await served.post(HookType.CONFIRM_PROMOTION, _body())
        assert status == 409
        assert served.slowest < 1.0
    finally:
        await client.close()


# -- events -> markers ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("hook", "phase", "message", "expected"),
    [
        (HookType.EVENT, "Progressing", "Starting canary analysis for support-bot.agents", ("started", None)),
        (
            HookType.EVENT,
            "Progressing",
            "Advance support-bot.agents canary weight 20",
            ("weight_changed", 0.2),
        ),
        (HookType.EVENT, "Progressing", "Advance support-bot.agents canary iteration 2/10", None),
        (HookType.EVENT, "Progressing", "Halt support-bot.agents advancement waiting for approval", None),
        (HookType.EVENT, "Progressing", "New revision detected! Scaling up support-bot.agents", None),
        (
            HookType.EVENT,
            "Progressing",
            "Rolling back support-bot.agents failed checks threshold reached 5",
            ("rolled_back", None),
        ),
        (
            HookType.EVENT,
            "WaitingPromotion",
            "Rolling back support-bot.agents manual webhook invoked",
            ("rolled_back", None),
        ),
        (HookType.EVENT, "Waiting", "Halt support-bot.agents advancement waiting for approval watcher", None),
        (HookType.EVENT, "WaitingPromotion", "Halt advancement waiting for promotion approval watcher", None),
        (
            HookType.EVENT,
            "Promoting",
            "Copying support-bot.agents template spec to support-bot-primary",
            ("promoted", None),
        ),
        (HookType.EVENT, "Finalising", "Routing all traffic to primary", ("promoted", None)),
        (
            HookType.EVENT,
            "Succeeded",
            "Promotion completed! Scaling down support-bot.agents",
            ("promoted", None),
        ),
        (HookType.EVENT, "Succeeded", "Confirm-rollout check watcher-start passed", None),  # the next release
        (HookType.EVENT, "Failed", "Canary failed! Scaling down support-bot.agents", ("rolled_back", None)),
        (HookType.EVENT, "Failed", "Confirm-rollout check watcher-start passed", None),
        (HookType.EVENT, "Initialized", "Initialization done! support-bot.agents", None),
        (HookType.EVENT, "Terminating", "Canary support-bot.agents is being deleted", ("aborted", None)),
        (HookType.POST_ROLLOUT, "Succeeded", "", ("promoted", None)),
        (HookType.POST_ROLLOUT, "Failed", "", ("rolled_back", None)),
        (HookType.PRE_ROLLOUT, "Progressing", "", ("started", None)),
        (HookType.ROLLOUT, "Progressing", "", None),
        (HookType.CONFIRM_PROMOTION, "Progressing", "", None),
    ],
)
def test_lifecycle_mapping(
    hook: HookType, phase: str, message: str, expected: tuple[str, float | None] | None
) -> None:
    metadata = {"eventMessage": message} if message else {}
    payload = FlaggerPayload("support-bot", "agents", phase, "abc", metadata)
    assert lifecycle(hook, payload) == expected


def test_marker_versions_timestamps_and_ids() -> None:
    start = FlaggerPayload(
        "support-bot",
        "agents",
        "Progressing",
        "7c9f5d8b6",
        {
            "eventMessage": "Starting canary analysis for support-bot.agents",
            "timestamp": str(int(T0 * 1000) + 1500),
            "canary_version": "v42",
        },
    )
    marker, why = marker_for(TARGET, HookType.EVENT, start, active=None, now=0.0)
    assert marker is not None, why
    assert (marker.action, marker.strategy, marker.canary_version) == ("started", "canary", "v42")
    assert marker.ts == T0 + 1.5 and marker.agent_id == "support-bot" and marker.actor == "flagger"
    assert "Starting" in (marker.notes or "")
    again, _ = marker_for(TARGET, HookType.EVENT, start, active=None, now=99.0)
    assert again is not None and again.event_id == marker.event_id  # a Flagger retry dedupes in the engine
    no_version = dataclasses.replace(start, metadata={"eventMessage": "Starting canary analysis"})
    marker, _ = marker_for(TARGET, HookType.EVENT, no_version, active=None, now=T0)
    assert marker is not None and marker.canary_version == "7c9f5d8b6" and marker.ts == T0  # checksum, now


async def test_a_flagger_rollout_seen_through_events_only() -> None:
    engine = Engine(load_settings(environ={}))
    served, client = await _serve(engine)
    meta = {"canary_version": "v42", "baseline_version": "v41"}
    try:
        status, body = await served.post(HookType.EVENT, _event("Starting canary analysis for x", **meta))
        assert status == 202 and body["marker"]["status"] == "started", body
        rollout = engine.registry.active("support-bot", "prod")
        assert rollout is not None and (rollout.baseline_version, rollout.canary_version) == ("v41", "v42")
        assert [m.action for m in served.published] == ["started"]
        # Flagger repeats itself: the same start a minute later changes nothing and publishes nothing
        later = int(T0 * 1000) + 60_000
        again = _event("Starting canary analysis", ts_ms=later, **meta)
        status, body = await served.post(HookType.EVENT, again)
        assert status == 200 and body["marker"]["status"] == "skipped"
        weight = _event("Advance support-bot.agents canary weight 20", **meta)
        status, body = await served.post(HookType.EVENT, weight)
        active = engine.registry.active("support-bot", "prod")
        assert status == 202 and active is not None and active.canary_weight == pytest.approx(0.2)
        status, _ = await served.post(HookType.EVENT, weight)
        assert status == 200
        waiting = _event("Halt advancement waiting for promotion approval", phase="WaitingPromotion", **meta)
        status, _ = await served.post(HookType.EVENT, waiting)
        assert status == 200
        done = _event("Promotion completed! Scaling down support-bot.agents", phase="Succeeded", **meta)
        status, body = await served.post(HookType.EVENT, done)
        assert status == 202 and body["marker"]["status"] == "ended"
        assert engine.registry.active("support-bot", "prod") is None
        assert engine.registry.get(rollout.rollout_id).state is RolloutState.PROMOTED
        status, body = await served.post(HookType.POST_ROLLOUT, _body("Succeeded", **meta))
        assert status == 200 and "no active rollout" in body["marker"]["reason"]
        assert [m.action for m in served.published] == ["started", "weight_changed", "promoted"]
        assert all(m.actor == "flagger" for m in served.published)
    finally:
        await client.close()


async def test_post_rollout_failed_ends_the_rollout_and_pre_rollout_starts_one() -> None:
    engine = Engine(load_settings(environ={}))
    served, client = await _serve(engine)
    try:
        status, body = await served.post(HookType.PRE_ROLLOUT, _body(canary_version="v42"))
        assert status == 200 and body["outcome"] == "pass" and body["marker"]["status"] == "started"
        rollout = engine.registry.active("support-bot", "prod")
        assert rollout is not None and rollout.canary_version == "v42"
        status, body = await served.post(HookType.POST_ROLLOUT, _body("Failed", canary_version="v42"))
        assert status == 202 and body["marker"]["action"] == "rolled_back"
        assert engine.registry.get(rollout.rollout_id).state is RolloutState.ROLLED_BACK
    finally:
        await client.close()


async def test_a_slow_or_failing_publish_does_not_delay_the_answer() -> None:
    release = asyncio.Event()

    async def slow(marker: Deployment) -> bool:  # stored at once, Kafka's acknowledgement is slow
        await release.wait()
        return True

    served, client = await _serve(Engine(load_settings(environ={})), on_marker=slow, marker_timeout_s=0.05)
    try:
        started = time.perf_counter()
        start = _event("Starting canary analysis", canary_version="v42")
        status, body = await served.post(HookType.EVENT, start)
        assert time.perf_counter() - started < 0.5
        assert status == 202 and body["marker"]["published"] is None  # still going on in the background
        assert served.engine.registry.active("support-bot", "prod") is not None  # applied regardless
        release.set()
        await served.hooks.close()
        assert not served.hooks._publishing
    finally:
        await client.close()

    async def broken(marker: Deployment) -> bool:
        raise CheckpointError("spool watcher-spool.sqlite: disk I/O error")

    # a marker that could not be stored is not applied either: a 4xx (Flagger keeps the reason of a
    # 4xx; a 5xx's body its client drops), and Flagger calls again
    served, client = await _serve(Engine(load_settings(environ={})), on_marker=broken)
    try:
        start = _event("Starting canary analysis", canary_version="v42")
        status, body = await served.post(HookType.EVENT, start)
        assert status == 409 and body["marker"]["status"] == "failed"
        assert "disk I/O error" in body["marker"]["reason"]
        assert served.engine.registry.active("support-bot", "prod") is None
    finally:
        await client.close()


# -- bad input --------------------------------------------------------------------------------------
async def test_unknown_canary_is_a_clear_404_on_every_hook() -> None:
    served, client = await _serve(_engine_in("rollback"))
    try:
        for hook in HookType:
            status, body = await served.post(hook, _body(name="other-bot"))
            assert status == 404, hook  # fails closed: gates hold, checks fail, and never a rollback
            assert "agents/other-bot" in body["error"] and "hooks.flagger" in body["hint"]
        assert not served.published
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("data", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"namespace": "agents"}', 400, "'name'"),
        (b'{"name": "", "namespace": "agents"}', 400, "'name'"),
        (b'{"name": 7, "namespace": "agents"}', 400, "'name'"),
        (b'{"name": "support-bot"}', 400, "'namespace'"),
        (b'{"name": "support-bot", "namespace": "agents", "phase": 3}', 400, "'phase'"),
        (b'{"name": "support-bot", "namespace": "agents", "metadata": ["a"]}', 400, "'metadata'"),
        (b'{"name": "support-bot", "namespace": "agents", "metadata": {"x": 1}}', 400, "metadata.x"),
        (
            b'{"name": "support-bot", "namespace": "agents", "metadata": {"canary_version": ""}}',
            400,
            "canary_version",
        ),
        (
            b'{"name": "support-bot", "namespace": "agents", "pad": "' + b"x" * 2000 + b'"}',
            413,
            "larger than",
        ),
    ],
)
async def test_bad_bodies_are_clear_4xx(data: bytes, status: int, fragment: str) -> None:
    served, client = await _serve(_engine_in("rollback"), max_body_bytes=1024)
    try:
        for hook in (HookType.ROLLBACK, HookType.EVENT):
            got, body = await served.post(hook, data=data)
            assert got == status and fragment in body["error"], body
        resp = await client.get(HookType.ROLLBACK.path)
        assert resp.status == 405  # Flagger only POSTs
    finally:
        await client.close()


def test_parse_payload_accepts_flaggers_body_with_nulls() -> None:
    p = parse_payload(
        b'{"name":"support-bot","namespace":"agents","phase":null,"checksum":null,"metadata":null}'
    )
    assert isinstance(p, FlaggerPayload) and p.phase == "" and p.metadata == {}


# -- settings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("targets", "field"),
    [
        ([{"namespace": "Agents", "name": "x", "agent_id": "a"}], "hooks.flagger[0].namespace"),
        (
            [
                {"namespace": "agents", "name": "x", "agent_id": "a"},
                {"namespace": "agents", "name": "-x", "agent_id": "a"},
            ],
            "hooks.flagger[1].name",
        ),
        ([{"namespace": "agents", "name": "x", "agent_id": ""}], "hooks.flagger[0].agent_id"),
        (
            [{"namespace": "agents", "name": "x", "agent_id": "a", "environment": "e" * 129}],
            "hooks.flagger[0].environment",
        ),
        (
            [
                {"namespace": "agents", "name": "x", "agent_id": "a"},
                {"namespace": "agents", "name": "x", "agent_id": "b"},
            ],
            "hooks.flagger[1]",
        ),
    ],
)
def test_settings_name_the_bad_field(targets: list[dict[str, str]], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(environ={}, overrides={"hooks.flagger": targets})
    assert err.value.field == field
    with pytest.raises(ConfigError) as err:  # targets built in code are checked the same way
        FlaggerHooks(Engine(load_settings(environ={})), [FlaggerTarget(**t) for t in targets])
    assert err.value.field == field.replace("hooks.", "", 1)


def test_settings_build_from_yaml_like_config_does() -> None:
    built = load_settings(
        environ={},
        overrides={
            "hooks.flagger": [{"namespace": "agents", "name": "support-bot", "agent_id": "support-bot"}]
        },
    ).hooks
    assert built == HooksSettings(
        flagger=(
            FlaggerTarget(namespace="agents", name="support-bot", agent_id="support-bot", environment="prod"),
        )
    )
    with pytest.raises(ConfigError) as err:
        load_settings(
            environ={}, overrides={"hooks.flagger": [{"namespace": "agents", "name": "x", "agent": "a"}]}
        )
    assert err.value.field == "hooks.flagger[0].agent"


# -- the documented Canary --------------------------------------------------------------------------
def _yaml_blocks() -> list[Any]:
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)]


def test_documented_canary_uses_every_hook_at_its_real_url() -> None:
    from urllib.parse import urlparse

    blocks = _yaml_blocks()
    canary = next(b for b in blocks if isinstance(b, dict) and b.get("kind") == "Canary")
    config = next(b for b in blocks if isinstance(b, dict) and "hooks" in b)
    mapped = HooksSettings(flagger=tuple(FlaggerTarget(**t) for t in config["hooks"]["flagger"]))
    assert (canary["metadata"]["namespace"], canary["metadata"]["name"]) in {
        (t.namespace, t.name) for t in mapped.flagger
    }
    analysis = canary["spec"]["analysis"]
    assert analysis["interval"] and analysis["threshold"] >= 1
    routes = {r.path: r.method for r in FlaggerHooks(Engine(load_settings(environ={})), []).routes()}
    seen = set()
    for hook in analysis["webhooks"]:
        path = urlparse(hook["url"]).path
        assert routes.get(path) == "POST", path
        assert path == FLAGGER_PREFIX + hook["type"]  # each type at its own URL
        seen.add(HookType(hook["type"]))
        assert hook["metadata"]["canary_version"]
    assert seen == set(HookType)


async def test_wires_into_the_api_app_in_one_line() -> None:
    from prometheus_client import CollectorRegistry

    from watcher.http.api import Api

    engine = _engine_in("rollback")
    log = MemoryDecisionLog()
    app = Api(engine, registry=CollectorRegistry(), decision_log=log, readiness=lambda: (True, "ok")).app()
    app.add_routes(FlaggerHooks(engine, [TARGET], decision_log=log).routes())  # what the daemon adds
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        resp = await client.post(HookType.ROLLBACK.path, json=_body())
        assert resp.status == 200 and (await resp.json())["outcome"] == "rollback"
        resp = await client.get("/v1/verdict?agent=support-bot&version=v42")
        assert (await resp.json())["data"]["verdict"] == "fail"  # Argo and Flagger hear the same thing
    finally:
        await client.close()
