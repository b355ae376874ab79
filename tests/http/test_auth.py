"""Bearer tokens on the API: who may change a rollout, who may read, constant-time checks."""

from __future__ import annotations

from unittest import mock

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from watcher.config import HttpSettings, load_settings
from watcher.errors import ConfigError
from watcher.http import auth

ADMIN, READER, FLAGGER, ARGO = "a" * 20, "r" * 20, "f" * 20, "g" * 20
MARKER = {
    "schema": "watcher.deployment/v1",
    "event_id": "m-1",
    "ts": 1795766400,
    "agent_id": "bot",
    "action": "started",
    "strategy": "canary",
    "baseline_version": "v1",
    "canary_version": "v2",
    "canary_weight": 0.1,
}


def _request(method: str, path: str, *, token: str | None = None, peer: str = "127.0.0.1") -> web.Request:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 4000) if name == "peername" else default
    )
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return make_mocked_request(method, path, headers=headers, transport=transport)


async def _call(http: HttpSettings, request: web.Request) -> int:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    response = await auth.middleware(http)(request, handler)
    return response.status


@pytest.mark.parametrize(
    ("method", "path", "token", "peer", "status"),
    [
        ("GET", "/healthz", None, "10.1.2.3", 200),
        ("GET", "/metrics", None, "10.1.2.3", 200),
        ("POST", "/v1/deployments", None, "10.1.2.3", 401),
        ("POST", "/v1/deployments", READER, "127.0.0.1", 401),  # a read token does not open writes
        ("POST", "/v1/deployments", ADMIN, "10.1.2.3", 200),
        ("POST", "/v1/rollouts/ro-1/override", FLAGGER, "10.1.2.3", 401),
        ("POST", "/v1/rollouts/ro-1/acknowledge", ADMIN, "10.1.2.3", 200),
        ("GET", "/v1/rollouts", None, "10.1.2.3", 401),
        ("GET", "/v1/rollouts", READER, "10.1.2.3", 200),
        ("GET", "/v1/rollouts/ro-1/verdict", ARGO, "10.1.2.3", 200),
        ("GET", "/v1/verdict", READER, "10.1.2.3", 200),
        ("GET", "/v1/verdict", ADMIN, "10.1.2.3", 401),
        ("POST", "/v1/flagger/rollback", FLAGGER, "10.1.2.3", 200),
        ("POST", "/v1/flagger/rollback", ADMIN, "10.1.2.3", 401),
    ],
)
async def test_every_token_opens_only_its_endpoints(method, path, token, peer, status) -> None:
    http = HttpSettings(auth_token=ADMIN, read_token=READER, flagger_token=FLAGGER, argo_token=ARGO)
    assert await _call(http, _request(method, path, token=token, peer=peer)) == status


async def test_without_tokens_writes_are_loopback_only_and_reads_open() -> None:
    http = HttpSettings()
    assert await _call(http, _request("POST", "/v1/deployments", peer="127.0.0.1")) == 200
    assert await _call(http, _request("POST", "/v1/deployments", peer="::1")) == 200
    assert await _call(http, _request("POST", "/v1/deployments", peer="10.1.2.3")) == 403
    assert await _call(http, _request("POST", "/v1/flagger/event", peer="10.1.2.3")) == 403
    assert await _call(http, _request("GET", "/v1/rollouts", peer="10.1.2.3")) == 200


def test_tokens_are_validated_and_masked() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"WATCHER_HTTP__AUTH_TOKEN": "short"})
    assert info.value.field == "http.auth_token" and "short" not in str(info.value)
    settings = load_settings(environ={"WATCHER_HTTP__AUTH_TOKEN": ADMIN})
    assert ADMIN not in repr(settings.masked())


async def test_real_server_answers_401_then_accepts_the_token(tmp_path) -> None:
    from prometheus_client import CollectorRegistry

    from watcher.engine import Engine
    from watcher.http.api import Api
    from watcher.storage.decisions import MemoryDecisionLog

    settings = load_settings(environ={}, overrides={"http.auth_token": ADMIN})
    api = Api(
        Engine(settings),
        registry=CollectorRegistry(),
        decision_log=MemoryDecisionLog(),
        readiness=lambda: (True, "ok"),
        middlewares=[auth.middleware(settings.http)],
    )
    runner = web.AppRunner(api.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    try:
        async with aiohttp.ClientSession() as http:
            denied = await http.post(f"{base}/v1/deployments", json=MARKER)
            assert denied.status == 401 and denied.headers["WWW-Authenticate"].startswith("Bearer")
            wrong = await http.post(
                f"{base}/v1/deployments", json=MARKER, headers={"Authorization": "Bearer " + "x" * 20}
            )
            assert wrong.status == 401
            ok = await http.post(
                f"{base}/v1/deployments", json=MARKER, headers={"Authorization": f"Bearer {ADMIN}"}
            )
            assert ok.status == 202
            assert (await http.get(f"{base}/v1/rollouts")).status == 200  # no read token: reads open
    finally:
        await runner.cleanup()
