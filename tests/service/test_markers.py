"""Markers posted over HTTP are durable before the answer and applied exactly once (issue #15, 5):
across a broker outage, the copy read back from the deployments topic, and a restart."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import aiohttp

from tests.support.daemon import consume_all, daemon_settings, daemon_topics, until
from watcher.kafka.embedded import EmbeddedBroker
from watcher.service.compose import build_daemon
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate


def _marker(event_id: str, ts: str, weight: float) -> dict[str, Any]:
    return {
        "schema": "watcher.deployment/v1",
        "event_id": event_id,
        "ts": ts,
        "agent_id": "support-bot",
        "action": "weight_changed",
        "canary_weight": weight,
    }


async def test_a_marker_posted_during_a_broker_outage_is_kept_and_applied_once(
    unique_topic, produce, tmp_path
) -> None:
    own = EmbeddedBroker()
    await own.start()
    try:
        topics = await daemon_topics(own, unique_topic)
        lines = list(
            generate(dataclasses.replace(PRESETS["demo"], duration_s=120.0, conversations_per_s=4.0))
        )
        await produce(topics["telemetry"], lines, key=b"support-bot", bootstrap_servers=own.bootstrap_servers)
        settings = daemon_settings(own, tmp_path, topics)
        ts = json.loads(lines[-1])["ts"]

        daemon = build_daemon(settings)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        await until(lambda: daemon.events_consumed >= len(lines))
        base = f"http://127.0.0.1:{daemon.port}"
        async with aiohttp.ClientSession() as http:
            own.pause()
            await asyncio.sleep(0.3)  # SIGSTOP is asynchronous
            try:
                async with http.post(f"{base}/v1/deployments", json=_marker("m-outage", ts, 0.3)) as r:
                    body = await r.json()
                    # before the fix: 500, applied in memory and never written anywhere
                    assert r.status == 202, body
                    assert body["event_id"] == "m-outage" and body["published"] is False
                assert daemon.engine.registry.active("support-bot", "prod").canary_weight == 0.3
            finally:
                own.resume()
            # the spool forwards it once the broker is back; the copy read back is not applied again
            published = await consume_all(own.bootstrap_servers, topics["deployments"], 1)
            assert [json.loads(v)["event_id"] for v in published] == ["m-outage"]
            await until(lambda: daemon.events_consumed >= len(lines) + 1, timeout=30)
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0
        rollout = daemon.engine.registry.active("support-bot", "prod")
        assert [m["event_id"] for m in rollout.markers].count("m-outage") == 1

        # a restart restores the state and reads nothing twice: still applied once
        again = build_daemon(settings)
        stop = asyncio.Event()
        task = asyncio.create_task(again.run(stop))
        await until(lambda: again.source.ready, timeout=30)
        await asyncio.sleep(1.0)
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0
        rollout = again.engine.registry.active("support-bot", "prod")
        assert [m["event_id"] for m in rollout.markers].count("m-outage") == 1
        assert rollout.canary_weight == 0.3
    finally:
        await own.stop()


async def test_a_marker_read_back_after_the_dedup_window_forgot_it_is_not_applied_again(
    broker, unique_topic, produce, tmp_path
) -> None:
    topics = await daemon_topics(broker, unique_topic)
    lines = list(generate(dataclasses.replace(PRESETS["demo"], duration_s=60.0, conversations_per_s=4.0)))
    await produce(topics["telemetry"], lines, key=b"support-bot")
    # a tiny dedup window: the marker's read-back copy arrives after it was forgotten there
    settings = daemon_settings(broker, tmp_path, topics, **{"state.dedup_capacity": 10})
    daemon = build_daemon(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await until(lambda: daemon.events_consumed >= len(lines))
        ts = json.loads(lines[-1])["ts"]
        async with aiohttp.ClientSession() as http:
            started = {
                **_marker("m-1", ts, 0.2),
                "action": "started",
                "canary_version": "v43",
                "strategy": "canary",
            }
            async with http.post(f"http://127.0.0.1:{daemon.port}/v1/deployments", json=started) as r:
                assert r.status == 202 and (await r.json())["published"] is True
        await produce(topics["telemetry"], lines[-40:], key=b"support-bot")  # duplicates: fill the window
        await until(lambda: daemon.events_consumed >= len(lines) + 41, timeout=30)
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0
    rollout = daemon.engine.registry.active("support-bot", "prod")
    assert [m["event_id"] for m in rollout.markers].count("m-1") == 1
