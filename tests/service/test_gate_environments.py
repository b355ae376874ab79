"""Environments: a gate run records its verdict as a ``gated`` marker; the live watcher shows, for a
rollout, the gate verdicts its version got before production. Kafka time ranges as gate input."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from watcher.cli.main import main
from watcher.config import load_settings
from watcher.contract import Deployment, decode_deployment, encode_deployment
from watcher.engine import Engine
from watcher.http import Api
from watcher.sim.scenario import Regression, Scenario
from watcher.sim.simulate import write_jsonl
from watcher.sim.traffic import generate
from watcher.state import Registry
from watcher.storage.decisions import MemoryDecisionLog

POLICY = str(Path(__file__).parents[2] / "deploy" / "ci" / "gate-policy.yaml")
T0 = 1_795_766_400.0


def _gated(event_id: str, env: str, version: str, verdict: str, ts: float) -> Deployment:
    raw = json.dumps(
        {
            "schema": "watcher.deployment/v1",
            "event_id": event_id,
            "ts": ts,
            "agent_id": "support-bot",
            "environment": env,
            "action": "gated",
            "baseline_version": "v41",
            "canary_version": version,
            "gate": {"verdict": verdict, "decision_id": f"dec-{event_id}"},
        }
    ).encode()
    marker = decode_deployment(raw)
    assert isinstance(marker, Deployment), marker
    return marker


def test_a_gated_marker_needs_its_verdict_and_version() -> None:
    bad = b'{"schema":"watcher.deployment/v1","event_id":"g","ts":0,"agent_id":"a","action":"gated"}'
    rejected = decode_deployment(bad)
    assert rejected.reason.value == "missing_field" and "gate" in rejected.detail
    no_version = bad.replace(b'"gated"', b'"gated","gate":{"verdict":"pass"}')
    assert "canary_version" in decode_deployment(no_version).detail
    wrong = no_version.replace(b'"pass"', b'"maybe"').replace(b"{", b'{"canary_version":"v2",', 1)
    assert decode_deployment(wrong).reason.value == "invalid_value"


def test_the_registry_keeps_gate_verdicts_per_version_without_touching_rollouts() -> None:
    reg = Registry()
    change = reg.apply(_gated("g1", "staging", "v42", "pass", T0))
    assert change.kind == "gated" and change.rollout is None and reg.active_rollouts() == []
    reg.apply(_gated("g2", "test", "v42", "fail", T0 + 1))
    reg.apply(_gated("g3", "staging", "v43", "inconclusive", T0 + 2))
    assert [(g["environment"], g["verdict"]) for g in reg.gates("support-bot", "v42")] == [
        ("staging", "pass"),
        ("test", "fail"),
    ]
    restored = Registry()
    restored.load_state(json.loads(json.dumps(reg.to_state())))
    assert restored.gates("support-bot", "v42") == reg.gates("support-bot", "v42")
    old = reg.to_state()
    del old["gates"]  # a checkpoint written before gate markers existed
    Registry().load_state(old)


@pytest.fixture
async def api() -> AsyncIterator[tuple[str, Engine]]:
    engine = Engine(load_settings(environ={}))
    app = Api(
        engine,
        registry=CollectorRegistry(),
        decision_log=MemoryDecisionLog(),
        readiness=lambda: (True, "ok"),
    ).app()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", engine
    await runner.cleanup()


async def test_the_rollout_shows_the_gates_its_version_passed(api, tmp_path, capsys) -> None:
    """``watcher gate --record http://watcher`` in staging, then the production canary of the same
    version: ``/v1/rollouts/{id}`` lists the staging verdict."""
    base, engine = api
    staging = tmp_path / "staging.jsonl"
    write_jsonl(Scenario(seed=1, strategy="shadow", environment="staging", conversations_per_s=4.0), staging)
    argv = ["gate", str(staging), "--policy", POLICY, "--segments", "no-fail", "--record", base]
    assert await asyncio.to_thread(main, argv) == 0
    assert "recorded gated pass at " + base + "/v1/deployments" in capsys.readouterr().out
    # the same marker again (a retried pipeline step) is recorded once
    assert await asyncio.to_thread(main, argv) == 0
    prod = Scenario(seed=2, environment="prod", duration_s=120.0)  # the canary of v42 in production
    lines = list(generate(prod))
    engine.process(lines)
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/v1/rollouts") as r:
            (rollout,) = (await r.json())["rollouts"]
        async with http.get(f"{base}/v1/rollouts/{rollout['rollout_id']}") as r:
            detail = await r.json()
        async with http.get(f"{base}/v1/rollouts/{rollout['rollout_id']}/report") as r:
            page = await r.text()
    assert rollout["canary_version"] == "v42" and rollout["environment"] == "prod"
    (gate,) = detail["gates"]
    assert (gate["environment"], gate["verdict"], gate["baseline_version"]) == ("staging", "pass", "v41")
    assert gate["decision_id"].startswith("dec-") and gate["actor"] == "watcher gate"
    # the rollout's HTML report shows the same verdict in its header
    assert "Gate verdicts recorded for v42 before this rollout" in page
    row = page.split("Gate verdicts recorded for v42", 1)[1].split("</table>", 1)[0]
    assert all(f"<td>{v}</td>" in row for v in ("staging", "pass", "v41", gate["decision_id"]))


def test_record_to_a_file_and_a_failed_record_is_exit_3(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    write_jsonl(
        Scenario(
            seed=3,
            strategy="shadow",
            environment="staging",
            regressions=(Regression("error", 5.0, mode="multiply"),),
        ),
        bad,
    )
    out = tmp_path / "markers.jsonl"
    assert main(["gate", str(bad), "--record", str(out)]) == 1
    (line,) = out.read_bytes().splitlines()
    marker = decode_deployment(line)
    assert isinstance(marker, Deployment) and marker.action == "gated" and marker.gate is not None
    assert (marker.environment, marker.canary_version, marker.gate.verdict) == ("staging", "v42", "fail")
    assert encode_deployment(marker) == line
    capsys.readouterr()
    assert main(["gate", str(bad), "--record", "http://127.0.0.1:9/"]) == 3
    assert "watcher gate: POST http://127.0.0.1:9/v1/deployments failed" in capsys.readouterr().err


@pytest.mark.broker
async def test_kafka_time_range_in_and_marker_out(broker, produce, unique_topic, tmp_path, capsys) -> None:
    """Staging telemetry read from a topic between --since and --until (event time); the verdict
    produced to the deployments topic as a marker."""
    topic, deployments = unique_topic("telemetry"), unique_topic("deployments")
    sc = Scenario(seed=4, strategy="shadow", environment="staging", conversations_per_s=1.0, duration_s=900.0)
    await produce(topic, list(generate(sc)), partitions=2)
    since, until = T0 + 300, T0 + 600
    argv = [
        "gate",
        "--topic",
        topic,
        "--bootstrap-servers",
        broker.bootstrap_servers,
        "--since",
        "2026-11-27T08:05:00Z",
        "--until",
        str(until),
        "--record",
        f"kafka://{broker.bootstrap_servers}/{deployments}",
        "--decision-out",
        str(tmp_path / "d.json"),
    ]
    code = await asyncio.to_thread(main, argv)
    out = capsys.readouterr().out
    assert code == 2, out  # 5 minutes of one conversation a second: too little to show either
    assert "outside the time range" in out and " 0 outside" not in out
    record = json.loads((tmp_path / "d.json").read_text())
    assert since <= record["ts_unix"] < until
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        deployments, bootstrap_servers=broker.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        got = await consumer.getmany(timeout_ms=5000)
    finally:
        await consumer.stop()
    (msg,) = [m for batch in got.values() for m in batch]
    marker = decode_deployment(msg.value)
    assert msg.key == b"support-bot" and marker.gate.decision_id == record["decision_id"]
    assert marker.gate.verdict == "inconclusive"


def test_unreachable_kafka_and_bad_times_are_exit_3(capsys) -> None:
    assert main(["gate", "--topic", "t", "--since", "2h", "--bootstrap-servers", "127.0.0.1:9"]) == 3
    assert "watcher gate: cannot reach Kafka at 127.0.0.1:9" in capsys.readouterr().err
    assert main(["gate", "--topic", "t", "--since", "yesterday"]) == 3
    assert "--since: expected RFC 3339 with a zone" in capsys.readouterr().err
    assert main(["gate", "--topic", "t"]) == 3
    assert "--since: required with --topic" in capsys.readouterr().err
