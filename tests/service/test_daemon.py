"""The daemon end to end against the real embedded broker and its real HTTP API."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

import aiohttp
import pytest

from tests.support.daemon import consume_all, daemon_settings, daemon_topics, until
from watcher.kafka.embedded import TopicSpec, create_topics
from watcher.service.compose import build_daemon
from watcher.service.daemon import Daemon
from watcher.service.replay import replay
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate

BAD_MESSAGES = [
    b"not json",
    b"[1,2]",
    b'{"event_id":"x"}',
    b'{"schema":"watcher.turn/v1","event_id":"q",'
    b'"ts":1,"agent_id":"a","version":"v","conversation_id":"c","quality":7}',
]


def _scenario_lines(duration_s: float = 240.0) -> list[bytes]:
    scenario = dataclasses.replace(PRESETS["demo"], duration_s=duration_s, conversations_per_s=6.0)
    return list(generate(scenario))


def _metric(text: str, name: str, **labels: str) -> float:
    total = None
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
    if total is None:
        raise AssertionError(f"no sample of {name} with {labels}")
    return total


async def test_daemon_consumes_exposes_metrics_and_rollouts(broker, unique_topic, produce, tmp_path) -> None:
    topics = await daemon_topics(broker, unique_topic)
    lines = _scenario_lines()
    await produce(topics["telemetry"], lines + BAD_MESSAGES, partitions=3, key=b"support-bot")
    settings = daemon_settings(broker, tmp_path, topics)
    daemon = build_daemon(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await until(lambda: daemon.events_consumed >= len(lines) + len(BAD_MESSAGES))
        base = f"http://127.0.0.1:{daemon.port}"
        async with aiohttp.ClientSession() as http:
            assert (await http.get(f"{base}/healthz")).status == 200
            ready = await http.get(f"{base}/readyz")
            assert ready.status == 200, await ready.text()
            text = await (await http.get(f"{base}/metrics")).text()
            rollouts = await (await http.get(f"{base}/v1/rollouts")).json()
            rollout_id = rollouts["rollouts"][0]["rollout_id"]
            detail = await (await http.get(f"{base}/v1/rollouts/{rollout_id}")).json()
            missing = await http.get(f"{base}/v1/rollouts/ro-nope")
            verdict = await (await http.get(f"{base}/v1/rollouts/{rollout_id}/verdict")).json()

            # a marker over HTTP: applied at once, and written to the deployments topic
            marker = {
                "schema": "watcher.deployment/v1",
                "event_id": "http-1",
                "ts": lines_ts_end(lines),
                "agent_id": "support-bot",
                "action": "weight_changed",
                "canary_weight": 0.5,
            }
            posted = await http.post(f"{base}/v1/deployments", json=marker)
            again = await http.post(f"{base}/v1/deployments", json=marker)
            as_json = {"Content-Type": "application/json"}
            bad = await http.post(
                f"{base}/v1/deployments", data=b'{"schema":"watcher.deployment/v1"}', headers=as_json
            )
            huge = await http.post(
                f"{base}/v1/deployments", data=b"x" * (settings.http.max_body_bytes + 10), headers=as_json
            )
            assert posted.status == 202, await posted.text()
            assert (await again.json())["status"] == "duplicate"
            assert bad.status == 400 and (await bad.json())["reason"] == "missing_field"
            assert huge.status == 413
            after = await (await http.get(f"{base}/v1/rollouts/{rollout_id}")).json()
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0

    # the daemon's counts equal the replay engine's over the same input
    path = tmp_path / "input.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    report, engine = replay(path)
    ref = {k: engine.state.snapshot(k, "cumulative") for k in engine.state.keys() if not k[4]}
    assert ref
    for (agent, env, version, arm, _, _), snap in ref.items():
        labels = {"agent": agent, "environment": env, "version": version, "arm": arm}
        assert _metric(text, "watcher_turns_total", **labels) == snap.turns
        assert _metric(text, "watcher_conversations_total", **labels) == snap.conversations
        assert _metric(text, "watcher_quality_mean", window="cumulative", **labels) == pytest.approx(
            snap.quality_mean, rel=1e-9
        )
    assert _metric(text, "watcher_segment_turns_total", segment_key="intent", segment_value="billing") > 0
    assert _metric(text, "watcher_latency_seconds", quantile="0.95", arm="canary") > 0
    assert _metric(text, "watcher_events_consumed_total") == len(lines) + len(BAD_MESSAGES)
    assert _metric(text, "watcher_events_rejected_total", reason="not_json") == 1
    assert _metric(text, "watcher_events_rejected_total", reason="not_object") == 1
    assert _metric(text, "watcher_events_rejected_total", reason="missing_field") == 1
    assert _metric(text, "watcher_events_rejected_total", reason="out_of_range") == 1
    assert _metric(text, "watcher_rollout_started_timestamp_seconds", canary_version="v42") > 0
    assert _metric(text, "watcher_ready") == 1
    assert _metric(text, "watcher_batch_duration_seconds_count") >= 1
    assert re.search(r'watcher_consumer_lag_messages\{partition="\d",topic="[^"]+"\} 0\.0', text)

    assert rollouts["rollouts"][0]["canary_version"] == "v42"
    assert set(detail["arms"]) == {"baseline", "canary"}
    assert detail["arms"]["canary"]["overall"]["cumulative"]["turns"] > 0
    assert "intent=billing" in detail["arms"]["canary"]["segments"]
    assert missing.status == 404
    assert verdict["data"]["verdict"] in ("pass", "fail", "inconclusive")
    assert after["canary_weight"] == 0.5

    # every rejected message is in the dead-letter topic, with its reason and original bytes
    dead = [json.loads(v) for v in await consume_all(broker.bootstrap_servers, topics["deadletter"], 4)]
    assert sorted(d["reason"] for d in dead) == ["missing_field", "not_json", "not_object", "out_of_range"]
    assert {d["raw_text"].encode() for d in dead} == set(BAD_MESSAGES)
    # the HTTP marker went to the deployments topic
    published = await consume_all(broker.bootstrap_servers, topics["deployments"], 1)
    assert any(json.loads(v)["event_id"] == "http-1" for v in published)


def lines_ts_end(lines: list[bytes]) -> str:
    return json.loads(lines[-1])["ts"]


async def test_restart_resumes_from_committed_offsets(broker, unique_topic, produce, tmp_path) -> None:
    """Stop mid-stream, produce more, start again: the second run reads exactly what the first did not,
    and starts from the first run's checkpointed state."""
    topics = await daemon_topics(broker, unique_topic)
    lines = _scenario_lines(180.0)
    half = len(lines) // 2
    await produce(topics["telemetry"], lines[:half], partitions=3, key=b"support-bot")
    settings = daemon_settings(broker, tmp_path, topics)

    async def run_until(expected: int) -> Daemon:
        daemon = build_daemon(settings)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        await until(lambda: daemon.events_consumed >= expected)
        await asyncio.sleep(0.3)  # nothing more may arrive
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0
        return daemon

    first = await run_until(half)
    await produce(topics["telemetry"], lines[half:], partitions=3, key=b"support-bot")
    second = await run_until(len(lines) - half)
    assert first.events_consumed == half
    assert second.events_consumed == len(lines) - half  # nothing lost, nothing read twice
    expected = sum(1 for line in lines if b"watcher.turn/v1" in line)
    first_turns = sum(
        first.engine.state.snapshot(k, "cumulative").turns for k in first.engine.state.keys() if not k[4]
    )
    second_turns = sum(
        second.engine.state.snapshot(k, "cumulative").turns for k in second.engine.state.keys() if not k[4]
    )
    assert 0 < first_turns < expected
    assert second_turns == expected  # restored from the checkpoint, then the rest: each turn once


def test_watcher_run_exits_zero_on_sigterm(broker, unique_topic, tmp_path) -> None:
    """The real CLI in a real process: ready, then SIGTERM finishes cleanly with exit code 0."""
    topic = unique_topic("telemetry")
    asyncio.run(create_topics(broker.bootstrap_servers, [TopicSpec(topic), TopicSpec(topic + "-d")]))
    env = {
        **os.environ,
        "WATCHER_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "WATCHER_KAFKA__TELEMETRY_TOPICS": topic,
        "WATCHER_KAFKA__DEPLOYMENTS_TOPICS": topic + "-d",
        "WATCHER_KAFKA__GROUP_ID": topic,
        "WATCHER_KAFKA__SESSION_TIMEOUT_MS": "2000",
        "WATCHER_KAFKA__HEARTBEAT_INTERVAL_MS": "200",
        "WATCHER_HTTP__PORT": "0",
        "WATCHER_JUDGE__DECISION_LOG": str(tmp_path / "d.sqlite"),
        "WATCHER_OUTBOX__PATH": str(tmp_path / "o.sqlite"),
        "WATCHER_SPOOL__PATH": str(tmp_path / "spool.sqlite"),
        "WATCHER_CHECKPOINT__PATH": str(tmp_path / "c.sqlite"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "watcher", "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        port = None
        deadline = time.monotonic() + 30
        assert proc.stderr is not None
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline().decode()
            match = re.search(r"HTTP API on http://[\d.]+:(\d+)", line)
            if match:
                port = int(match.group(1))
        assert port, "the daemon never announced its port"
        import urllib.request

        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            raise AssertionError("never ready")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_broker_freeze_reports_not_ready_and_loses_nothing(unique_topic, produce, tmp_path) -> None:
    """A frozen broker (SIGSTOP) never crashes the daemon: /readyz says 503, then it resumes by itself."""
    from watcher.kafka.embedded import EmbeddedBroker

    own = EmbeddedBroker()
    await own.start()
    try:
        topics = await daemon_topics(own, unique_topic)
        lines = _scenario_lines(120.0)
        half = len(lines) // 2
        await produce(
            topics["telemetry"],
            lines[:half],
            partitions=3,
            key=b"support-bot",
            bootstrap_servers=own.bootstrap_servers,
        )
        settings = daemon_settings(own, tmp_path, topics, **{"kafka.ready_stale_after_s": 2.0})
        daemon = build_daemon(settings)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        await until(lambda: daemon.events_consumed >= half)
        base = f"http://127.0.0.1:{daemon.port}"
        async with aiohttp.ClientSession() as http:
            assert (await http.get(f"{base}/readyz")).status == 200
            own.pause()
            try:
                statuses: list[int] = []
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and 503 not in statuses:
                    statuses.append((await http.get(f"{base}/readyz")).status)
                    await asyncio.sleep(0.2)
                assert 503 in statuses
                assert (await http.get(f"{base}/healthz")).status == 200  # alive, just not ready
                metrics = await (await http.get(f"{base}/metrics")).text()
                assert _metric(metrics, "watcher_ready") == 0
            finally:
                own.resume()
            await produce(
                topics["telemetry"],
                lines[half:],
                partitions=3,
                key=b"support-bot",
                bootstrap_servers=own.bootstrap_servers,
            )
            await until(lambda: daemon.events_consumed >= len(lines), timeout=60)
            deadline = time.monotonic() + 20
            while (await http.get(f"{base}/readyz")).status != 200:
                assert time.monotonic() < deadline, "never ready again"
                await asyncio.sleep(0.2)
        assert not task.done()
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0
        assert daemon.events_consumed == len(lines)  # every message once: nothing lost, nothing twice
    finally:
        await own.stop()
