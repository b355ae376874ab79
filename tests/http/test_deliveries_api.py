"""Deliveries over HTTP: what gave up is listed (``?state=failed``), re-driven and dismissed, with auth."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from tests.support.outbox import FAST, FakeSink
from tests.support.receivers import Running, eventually, make_decision
from watcher.config import HttpSettings, load_settings
from watcher.engine import Engine
from watcher.errors import SinkError
from watcher.http import auth
from watcher.http.api import Api
from watcher.outbox import Outbox
from watcher.storage.decisions import MemoryDecisionLog

TOKEN = "t" * 32


class Served:
    def __init__(self, outbox: Outbox, sink: FakeSink, base: str, http: aiohttp.ClientSession) -> None:
        self.outbox, self.sink, self.base, self.http = outbox, sink, base, http

    async def call(
        self, method: str, path: str, body: Any = None, token: str | None = TOKEN
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(method, self.base + path, json=body, headers=headers) as r:
            return r.status, await r.json()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    sink = FakeSink("hook")
    sink.script = [SinkError("HTTP 410: gone", permanent=True)] * 3
    registry = CollectorRegistry()
    outbox = Outbox(tmp_path / "outbox.sqlite", [sink], retry=FAST, registry=registry)
    api = Api(
        Engine(load_settings(environ={})),
        registry=registry,
        decision_log=MemoryDecisionLog(),
        readiness=lambda: (True, "ok"),
        deliveries=outbox,
        middlewares=[auth.middleware(HttpSettings(auth_token=TOKEN))],
    )
    runner = web.AppRunner(api.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as http, Running(outbox):
        yield Served(outbox, sink, f"http://127.0.0.1:{port}", http)
    await runner.cleanup()
    outbox.close()


async def test_failed_deliveries_are_listed_re_driven_and_dismissed(served: Served) -> None:
    s = served
    rollback, pause, promote = (
        make_decision(1, action="rollback", rollout_id="ro-1"),
        make_decision(1, action="pause", rollout_id="ro-2"),
        make_decision(1, action="promote", rollout_id="ro-3"),
    )
    s.outbox.enqueue_decisions([rollback, pause, promote])
    await eventually(lambda: len(s.outbox.deliveries(status="failed")) == 3)

    status, body = await s.call("GET", "/v1/deliveries?state=failed")
    assert status == 200
    failed = {d["item_id"]: d for d in body["deliveries"]}
    assert set(failed) == {rollback.decision_id, pause.decision_id, promote.decision_id}
    row = failed[rollback.decision_id]
    assert row["last_error"] == "HTTP 410: gone" and row["severity"] == "critical" and row["sink"] == "hook"
    assert (await s.call("GET", f"/v1/deliveries/{row['id']}"))[1]["item_id"] == rollback.decision_id
    assert (await s.call("GET", "/v1/deliveries?status=failed"))[1] == body  # the older spelling
    assert (await s.call("GET", "/v1/deliveries?state=lost"))[0] == 400

    # re-driving is a write: the token is required
    assert (await s.call("POST", f"/v1/deliveries/{row['id']}/retry", {}, token=None))[0] == 401
    status, again = await s.call("POST", f"/v1/deliveries/{row['id']}/retry", {"actor": "alice"})
    assert status == 202 and again["delivery"]["status"] == "pending"
    await eventually(lambda: len(s.sink.sent) == 1)
    assert (await s.call("GET", f"/v1/deliveries/{row['id']}"))[1]["status"] == "delivered"
    assert (await s.call("POST", f"/v1/deliveries/{row['id']}/retry", {}))[0] == 409  # delivered now
    assert (await s.call("POST", "/v1/deliveries/999999/retry", {}))[0] == 404
    assert (await s.call("POST", "/v1/deliveries/abc/retry", {}))[0] == 404

    # dismissing needs who and why; then it no longer counts as failed
    promote_id = failed[promote.decision_id]["id"]
    assert (await s.call("POST", f"/v1/deliveries/{promote_id}/dismiss", {"actor": "bob"}))[0] == 400
    status, gone = await s.call(
        "POST", f"/v1/deliveries/{promote_id}/dismiss", {"actor": "bob", "reason": "promoted by hand"}
    )
    assert status == 200 and gone["delivery"]["status"] == "dismissed"
    assert "promoted by hand" in gone["delivery"]["last_error"]

    # every failed delivery of a sink at once
    status, bulk = await s.call("POST", "/v1/deliveries/retry?sink=hook", {})
    assert status == 202 and bulk["retried"] == [failed[pause.decision_id]["id"]]
    await eventually(lambda: len(s.sink.sent) == 2)
    assert (await s.call("GET", "/v1/deliveries?state=failed"))[1]["deliveries"] == []
