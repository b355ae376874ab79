"""Flagger's hooks called as Flagger calls them (tests/support/flagger.py: Go's request, no header
Flagger cannot send, retryablehttp's handling of the answer): the token travels in the URL, the reason
survives in the error Flagger records, and a rebalance never fails a check."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from tests.support.flagger import call_webhook, go_json, payload
from watcher.config import FlaggerTarget, HttpSettings, load_settings
from watcher.contract import Action, decode_deployment
from watcher.engine import Engine, partition_for
from watcher.http import FlaggerHooks, Peers, auth
from watcher.judges import override
from watcher.state import Rollout
from watcher.storage.decisions import MemoryDecisionLog

TOKEN = "flagger-" + "t" * 24
TARGET = FlaggerTarget(namespace="agents", name="support-bot", agent_id="support-bot", environment="prod")
T0 = 1_795_766_400.0
META = {"canary_version": "v42", "baseline_version": "v41"}


def _engine(decision: Action | None = None) -> tuple[Engine, MemoryDecisionLog]:
    engine = Engine(load_settings(environ={}))
    log = MemoryDecisionLog()
    marker = decode_deployment(
        json.dumps(
            {
                "event_id": "dep-1",
                "ts": T0,
                "agent_id": "support-bot",
                "action": "started",
                "strategy": "canary",
                "baseline_version": "v41",
                "canary_version": "v42",
                "canary_weight": 0.1,
            }
        ).encode()
    )
    change = engine.apply_marker(marker)  # type: ignore[arg-type]
    rollout: Rollout = change.rollout  # type: ignore[union-attr,assignment]
    if decision is not None:
        state = engine.policy_states[rollout.rollout_id]
        made, new_state = override(
            state, decision, "alice", "quality in intent=billing fell 0.13", T0 + 60, rollout.ref()
        )
        engine.record_override(rollout.rollout_id, made, new_state)
        log.append_many([made])
    return engine, log


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


def _app(hooks: FlaggerHooks, http: HttpSettings) -> web.Application:
    app = web.Application(middlewares=[auth.middleware(http)])
    app.add_routes(hooks.routes())
    return app


@pytest.fixture
async def watcher_url() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def start(engine: tuple[Engine, MemoryDecisionLog] | Engine, http: HttpSettings, **kw: Any) -> str:
        if isinstance(engine, tuple):
            engine, kw["decision_log"] = engine
        hooks = FlaggerHooks(engine, [TARGET], **kw)
        runner, port = await _serve(_app(hooks, http))
        runners.append(runner)
        return f"127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def _body(phase: str = "Progressing") -> dict[str, Any]:
    return payload("support-bot", "agents", phase, "7c9f5d8b6", META)


# -- the request itself -----------------------------------------------------------------------------
async def test_the_request_is_byte_for_byte_what_go_sends(watcher_url) -> None:
    address = await watcher_url(_engine(), HttpSettings(flagger_token=TOKEN))
    call = await call_webhook(f"http://flagger:{TOKEN}@{address}/v1/flagger/rollout", _body())
    assert call.error is None and call.status == 200
    head, _, body = call.raw_request.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/flagger/rollout HTTP/1.1"
    assert [line.split(":")[0] for line in lines[1:]] == [
        "Host",
        "User-Agent",
        "Content-Length",
        "Authorization",
        "Content-Type",
        "Accept-Encoding",
    ]
    assert body == (
        b'{"name":"support-bot","namespace":"agents","phase":"Progressing","checksum":"7c9f5d8b6",'
        b'"metadata":{"baseline_version":"v41","canary_version":"v42"}}'
    )
    assert go_json({"m": "<a&b>"}) == b'{"m":"\\u003ca\\u0026b\\u003e"}'


# -- authentication with what Flagger can send --------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("http://flagger:{token}@{address}/v1/flagger/confirm-rollout", 200),  # user info -> basic auth
        ("http://anyone:{token}@{address}/v1/flagger/confirm-rollout", 200),  # the user name is not checked
        ("http://{address}/v1/flagger/confirm-rollout?token={token}", 200),
        ("http://{address}/v1/flagger/confirm-rollout", 401),
        ("http://flagger:wrong-token-of-some-length@{address}/v1/flagger/confirm-rollout", 401),
        ("http://{address}/v1/flagger/confirm-rollout?token=wrong", 401),
    ],
)
async def test_flagger_authenticates_through_the_url(watcher_url, url: str, status: int) -> None:
    address = await watcher_url(_engine(), HttpSettings(flagger_token=TOKEN))
    call = await call_webhook(url.format(token=TOKEN, address=address), _body())
    assert call.status == status
    if status == 401:  # Flagger keeps the body of a 4xx: the fix is in its event
        assert "give http.flagger_token as the password of the hook URL" in (call.error or "")


def _pod_request(path: str, headers: dict[str, str]) -> web.Request:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        ("10.244.1.17", 41000) if name == "peername" else default
    )
    return make_mocked_request("POST", path, headers=headers, transport=transport)


async def _status(http: HttpSettings, request: web.Request) -> tuple[int, str]:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    response = await auth.middleware(http)(request, handler)
    return response.status, response.text or ""


async def test_from_a_pod_address() -> None:
    basic = {"Authorization": "Basic " + base64.b64encode(f"flagger:{TOKEN}".encode()).decode()}
    configured = HttpSettings(flagger_token=TOKEN, auth_token="a" * 20)
    assert (await _status(configured, _pod_request("/v1/flagger/rollout", basic)))[0] == 200
    assert (await _status(configured, _pod_request(f"/v1/flagger/rollout?token={TOKEN}", {})))[0] == 200
    # the URL's ways are for Flagger's paths only: elsewhere a bearer header is what callers send
    assert (await _status(configured, _pod_request(f"/v1/deployments?token={TOKEN}", {})))[0] == 401
    assert (await _status(configured, _pod_request("/v1/deployments", basic)))[0] == 401
    # a default install answers Flagger from a pod with how to set it up, not a bare 403
    status, text = await _status(HttpSettings(), _pod_request("/v1/flagger/rollout", {}))
    assert status == 403 and "http.flagger_token" in text and "http://flagger:<token>@" in text


# -- the reason survives -----------------------------------------------------------------------------
async def test_a_failed_check_carries_watcher_s_reason_into_flagger_s_event(watcher_url) -> None:
    address = await watcher_url(_engine(Action.ROLLBACK), HttpSettings(flagger_token=TOKEN))
    call = await call_webhook(f"http://flagger:{TOKEN}@{address}/v1/flagger/rollout", _body())
    assert call.status == 409
    event = f"Halt support-bot.agents advancement external check watcher-check failed {call.error}"
    assert '{"reason":"watcher decided rollback: ' in event and "quality in intent=billing fell 0.13" in event
    rollback = await call_webhook(f"http://flagger:{TOKEN}@{address}/v1/flagger/rollback", _body())
    assert rollback.status == 200 and rollback.error is None  # Flagger rolls back


async def test_no_answer_is_one_whose_body_flagger_drops(watcher_url) -> None:
    address = await watcher_url(
        _engine(), HttpSettings(flagger_token=TOKEN), readiness=lambda: (False, "the broker is unreachable")
    )
    for hook in (
        "confirm-rollout",
        "confirm-traffic-increase",
        "confirm-promotion",
        "pre-rollout",
        "rollout",
        "rollback",
    ):
        call = await call_webhook(f"http://flagger:{TOKEN}@{address}/v1/flagger/{hook}", _body())
        assert call.status is not None and call.status < 500, hook
        assert call.error is None or "giving up" not in call.error, hook
        if hook in ("pre-rollout", "rollout"):
            assert call.status == 200, hook  # not ready is not evidence against the canary
        elif hook != "rollback":
            assert "the broker is unreachable" in (call.error or ""), hook


# -- rebalances ----------------------------------------------------------------------------------------
class _Group:
    """Two instances' view of who owns the agent's partition (4 partitions)."""

    def __init__(self) -> None:
        self.partition = partition_for("support-bot", 4)
        self.local: set[int] = set()

    def peers(self) -> Peers:
        return Peers(partition_count=lambda: 4, is_local=lambda p: p in self.local)


async def test_a_hook_waits_for_the_rebalance_then_the_owner_answers(watcher_url) -> None:
    http = HttpSettings(flagger_token=TOKEN)
    owner_address = await watcher_url(_engine(Action.ROLLBACK), http)
    group = _Group()
    peers = group.peers()
    address = await watcher_url(Engine(load_settings(environ={})), http, peers=peers, wait_s=4.0)
    peers.owners = {}  # mid-rebalance: nobody knows the owner yet

    async def settle() -> None:
        await asyncio.sleep(1.0)
        peers.set_owners({group.partition: f"http://{owner_address}"})

    task = asyncio.create_task(settle())
    started = time.monotonic()
    call = await call_webhook(f"http://flagger:{TOKEN}@{address}/v1/flagger/rollout", _body(), timeout=5.0)
    waited = time.monotonic() - started
    await task
    assert 0.9 < waited < 4.0
    assert call.status == 409 and "watcher decided rollback" in (call.error or "")  # the owner's answer


async def test_a_rebalance_that_outlasts_the_wait_never_fails_a_check(watcher_url) -> None:
    http = HttpSettings(flagger_token=TOKEN)
    peers = _Group().peers()
    address = await watcher_url(Engine(load_settings(environ={})), http, peers=peers, wait_s=0.5)
    for hook, status in (("rollout", 200), ("pre-rollout", 200), ("confirm-rollout", 409), ("rollback", 409)):
        started = time.monotonic()
        call = await call_webhook(f"http://flagger:{TOKEN}@{address}/v1/flagger/{hook}", _body(), timeout=5.0)
        assert call.status == status, (hook, call.error)
        assert time.monotonic() - started < 2.0  # within Flagger's timeout
        if call.error:
            assert "rebalancing" in call.error


async def test_during_a_rebalance_the_last_known_decision_stands(watcher_url) -> None:
    http = HttpSettings(flagger_token=TOKEN)
    owner_address = await watcher_url(_engine(Action.ROLLBACK), http)
    group = _Group()
    peers = group.peers()
    address = await watcher_url(Engine(load_settings(environ={})), http, peers=peers, wait_s=0.3)
    peers.set_owners({group.partition: f"http://{owner_address}"})
    first = await call_webhook(f"http://flagger:{TOKEN}@{address}/v1/flagger/rollout", _body())
    assert first.status == 409
    peers.set_owners({})  # the group rebalances
    again = await call_webhook(f"http://flagger:{TOKEN}@{address}/v1/flagger/rollout", _body())
    assert again.status == 409  # the rollback stands: a rebalance does not clear it
    assert "watcher decided rollback" in (again.error or "") and "last known decision" in (again.error or "")
    rollback = await call_webhook(f"http://flagger:{TOKEN}@{address}/v1/flagger/rollback", _body())
    assert rollback.status == 200
