"""The HTTP port's guard, over a real server (issue #15, 7 and 8): cross-site writes, DNS rebinding,
malformed tokens and bodies, slow and idle clients, too many connections, what gets logged."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from watcher.config import FlaggerTarget, HttpSettings, load_settings
from watcher.engine import Engine
from watcher.http import Api, ConnectionGuard, FlaggerHooks, Listening, auth_middleware, guard_middleware
from watcher.http.guard import json_depth
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate
from watcher.storage.decisions import MemoryDecisionLog

TARGET = FlaggerTarget(name="support-bot", namespace="agents", agent_id="support-bot")


@dataclasses.dataclass
class Served:
    engine: Engine
    log: MemoryDecisionLog
    port: int
    guard: ConnectionGuard
    rollout_id: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def _serve(**http: Any) -> tuple[Served, Listening]:
    engine = Engine(load_settings(environ={}))
    log = MemoryDecisionLog()
    lines = list(generate(dataclasses.replace(PRESETS["srm"], duration_s=600.0)))
    for i in range(0, len(lines), 2000):
        log.append_many(engine.process(lines[i : i + 2000]).decisions)

    async def persist(decisions: Any) -> None:
        log.append_many(decisions)

    settings = HttpSettings(port=0, **http)
    guard = ConnectionGuard(settings.max_connections_per_client, settings.client_timeout_s)
    api = Api(
        engine,
        registry=CollectorRegistry(),
        decision_log=log,
        readiness=lambda: (True, "ok"),
        on_decisions=persist,
        middlewares=[guard_middleware(settings, guard), auth_middleware(settings)],
    )
    app = api.app()
    app.add_routes(FlaggerHooks(engine, [TARGET]).routes())
    listening = await Listening.start(app, settings, guard)
    rollout_id = engine.registry.all()[0].rollout_id
    return Served(engine, log, listening.port, guard, rollout_id), listening


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    s, listening = await _serve(client_timeout_s=1.0, max_connections_per_client=5)
    yield s
    await listening.close()


async def _post(s: Served, path: str, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(s.base + path, data=data, headers=headers or {}) as r,
    ):
        body = await r.text()
        return r.status, json.loads(body) if body.startswith("{") else body


OVERRIDE = json.dumps({"actor": "mallory", "reason": "x", "action": "rollback"}).encode()


async def test_cross_site_writes_are_refused_without_a_token(served: Served) -> None:
    # issue #15, 7: with no token (the default) a text/plain or form POST from another site recorded
    # a rollback override
    path = f"/v1/rollouts/{served.rollout_id}/override"
    evil = {"Origin": "http://evil.example"}
    assert (await _post(served, path, OVERRIDE, {**evil, "Content-Type": "text/plain"}))[0] == 403
    assert (await _post(served, path, OVERRIDE, {"Content-Type": "text/plain"}))[0] == 415
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert (await _post(served, path, b"actor=m&action=rollback", form))[0] == 415
    status, body = await _post(served, path, OVERRIDE, {**evil, "Content-Type": "application/json"})
    assert status == 403 and "evil.example" in body["error"]
    cross = {"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"}
    assert (await _post(served, path, OVERRIDE, cross))[0] == 403
    # DNS rebinding: a page of evil.example re-bound to 127.0.0.1 names its own host
    rebound = {"Host": f"evil.example:{served.port}", "Content-Type": "application/json"}
    status, body = await _post(served, path, OVERRIDE, rebound)
    assert status == 403 and "not a loopback name" in body["error"]
    assert served.log.list(rollout_id=served.rollout_id, action="rollback") == []  # nothing recorded
    # the same request from a tool on this host, or a page of watcher's own origin, is taken
    own = {"Origin": served.base, "Content-Type": "application/json"}
    assert (await _post(served, path, OVERRIDE, own))[0] == 201
    assert len(served.log.list(rollout_id=served.rollout_id, action="rollback")) == 1


async def test_allowed_hosts_and_origins_are_configurable() -> None:
    s, listening = await _serve(
        allowed_hosts=("watcher.internal",), allowed_origins=("https://console.example",)
    )
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(s.base + "/v1/rollouts") as r:
                assert r.status == 403  # Host 127.0.0.1 is not in the list
            async with http.get(s.base + "/v1/rollouts", headers={"Host": "watcher.internal"}) as r:
                assert r.status == 200
        headers = {"Host": "watcher.internal", "Content-Type": "application/json"}
        path = f"/v1/rollouts/{s.rollout_id}/acknowledge"
        ack = json.dumps({"actor": "alice", "reason": "known"}).encode()
        assert (await _post(s, path, ack, {**headers, "Origin": "https://other.example"}))[0] == 403
        assert (await _post(s, path, ack, {**headers, "Origin": "https://console.example"}))[0] in (201, 409)
    finally:
        await listening.close()


async def test_deep_bodies_and_bad_tokens_get_4xx_not_500(served: Served) -> None:
    # issue #15, 8: 60k-deep JSON and a bearer token with invalid UTF-8 answered 500
    deep = b"[" * 60_000  # under the 64 KiB body limit; Python's parser recursed until it failed
    as_json = {"Content-Type": "application/json"}
    for path in (
        f"/v1/rollouts/{served.rollout_id}/acknowledge",
        f"/v1/rollouts/{served.rollout_id}/override",
        "/v1/deployments",
        "/v1/flagger/confirm-promotion",
        "/v1/flagger/event",
    ):
        status, body = await _post(served, path, deep, as_json)
        assert status == 400 and "nests deeper than 64" in body["error"], (path, status, body)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(
        b"GET /v1/rollouts HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer \xff\xfe\xfd\r\n\r\n"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readline(), 5)
    assert head.startswith(b"HTTP/1.1 400"), head
    writer.close()


async def test_an_oversized_header_is_refused_without_logging_it(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    # issue #15, 8: aiohttp logged the start of an oversized Authorization header at ERROR
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    with caplog.at_level(logging.DEBUG):
        writer.write(
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer SEKRIT"
            + b"A" * 9000
            + b"\r\n\r\n"
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readline(), 5)
        await asyncio.sleep(0.1)
    writer.close()
    assert head.startswith(b"HTTP/1.") and b" 400 " in head
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("aiohttp")]
    assert "SEKRIT" not in caplog.text
    assert "malformed request from 127.0.0.1 refused with 400: LineTooLong" in caplog.text


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(5)
    return sock


def _closed(sock: socket.socket) -> bool:
    """The server closed it (EOF or a reset, maybe after an answer) within the socket's timeout."""
    try:
        while sock.recv(4096):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


async def test_idle_and_slow_clients_are_disconnected(served: Served) -> None:
    # issue #15, 8: 500 half-open connections were still held after 20 s
    silent = [_connect(served.port) for _ in range(3)]
    slow = _connect(served.port)
    started = time.monotonic()
    for chunk in (b"GET /healthz HTTP/1.1\r\n", b"Host: local", b"host\r\nX-A: 1", b"\r\nX-B: 2\r\n"):
        slow.sendall(chunk)  # a header every 0.4 s, never finished (slowloris)
        await asyncio.sleep(0.4)
    await asyncio.sleep(1.2)
    loop = asyncio.get_running_loop()
    for sock in [*silent, slow]:
        assert await loop.run_in_executor(None, _closed, sock)
        sock.close()
    assert time.monotonic() - started < 5.0
    # a request in progress is not cut: a slow handler is not an idle connection
    async with aiohttp.ClientSession() as http, http.get(served.base + "/v1/rollouts") as r:
        assert r.status == 200


async def test_a_client_gets_a_bounded_number_of_connections(served: Served) -> None:
    held = [_connect(served.port) for _ in range(5)]
    await asyncio.sleep(0.1)
    extra = _connect(served.port)
    loop = asyncio.get_running_loop()
    answer = await loop.run_in_executor(None, extra.recv, 4096)
    assert answer.startswith(b"HTTP/1.1 503") and b"too many connections" in answer
    extra.close()
    held.pop().close()
    await asyncio.sleep(0.2)
    async with aiohttp.ClientSession() as http, http.get(served.base + "/healthz") as r:
        assert r.status == 200  # room again
    for sock in held:
        sock.close()
    assert served.guard.refused == 1


def test_json_depth_skips_strings_and_escapes() -> None:
    assert json_depth(rb'["\\", ["x\"[["]]') == 2
    assert json_depth(rb'{"k\n": [[]]}') == 3
    assert json_depth(b"") == 0
    nested: Any = 0
    for _ in range(40):
        nested = [nested, '\\"[{']
    assert json_depth(json.dumps(nested).encode()) == 40


class _Transport:
    def __init__(self, peer: str) -> None:
        self.peer, self.closed, self.written = peer, False, b""

    def get_extra_info(self, name: str) -> Any:
        return (self.peer, 40000) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


def test_the_sweep_closes_only_connections_with_no_request_in_progress() -> None:
    """The guard's own timeout, whatever aiohttp's keep-alive does (versions before 3.13 start it only
    after a first response)."""
    now = [0.0]
    guard = ConnectionGuard(max_per_client=2, client_timeout_s=1.0, clock=lambda: now[0])
    idle, working = _Transport("10.0.0.1"), _Transport("10.0.0.2")
    assert guard.opened(idle) and guard.opened(working)  # type: ignore[arg-type]

    class Request:
        transport = working

    with guard.busy(Request()):  # type: ignore[arg-type]
        now[0] = 5.0
        assert guard.sweep() == 1 and idle.closed and not working.closed
    guard.closed(idle)  # type: ignore[arg-type]
    now[0] = 5.5
    assert guard.sweep() == 0  # idle for 0.5 s since its request ended
    now[0] = 6.6
    assert guard.sweep() == 1 and working.closed
    third = [_Transport("10.0.0.3") for _ in range(3)]
    assert [guard.opened(t) for t in third] == [True, True, False]  # type: ignore[arg-type]
    assert third[2].closed and third[2].written.startswith(b"HTTP/1.1 503")
