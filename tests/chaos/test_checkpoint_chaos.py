"""Chaos: a checkpoint file damaged between two runs of ``watcher run`` (real processes, real broker).

The first run consumes a stream and stops; a bit of a checkpoint part is flipped. The next start
must restore the backup copy and count every turn once (``watcher_checkpoint_fallbacks_total``).
With the copies damaged too, a start must refuse (exit 1, the reason, ``--reset-state`` named,
nothing overwritten); a start with ``--reset-state`` must come up ready from a fresh state and say
so in ``watcher_checkpoint_lost_total``. Before the fix, the damaged checkpoint was started over
silently.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sqlite3
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support.processes import api_port, metric_samples, start_watcher, watcher_env
from watcher.kafka.embedded import TopicSpec, create_topics
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


async def _metrics(port: int, name: str, at_least: float, timeout: float = 40.0) -> float:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            samples = metric_samples(await (await http.get(f"http://127.0.0.1:{port}/metrics")).text())
            value = sum(v for (n, _), v in samples.items() if n == name)
            if value >= at_least or time.monotonic() > deadline:
                return value
            await asyncio.sleep(0.2)


def _flip(path: Path) -> str:
    """Flip a bit of the largest checkpoint part in ``path``; returns the part's name."""
    db = sqlite3.connect(path)
    part, data = db.execute("SELECT part, data FROM checkpoint_parts ORDER BY length(data) DESC").fetchone()
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x01
    db.execute("UPDATE checkpoint_parts SET data=? WHERE part=?", (bytes(flipped), part))
    db.commit()
    db.close()
    return str(part)


async def test_a_damaged_checkpoint_falls_back_to_its_copy_else_refuses_until_reset_state(
    broker, unique_topic, produce, tmp_path
) -> None:
    lines = list(generate(dataclasses.replace(PRESETS["demo"], duration_s=300.0)))
    topic = unique_topic("cpchaos")
    await create_topics(
        broker.bootstrap_servers,
        [TopicSpec(topic, 1), TopicSpec(topic + "-deployments"), TopicSpec(topic + "-deadletter")],
    )
    await produce(topic, lines, partitions=1, key=b"support-bot")
    env = watcher_env(broker, tmp_path, topic)
    checkpoint = tmp_path / "checkpoint.sqlite"

    proc = await start_watcher(env, tmp_path / "run-0.log")
    try:
        port = await api_port(tmp_path / "run-0.log", proc)
        turns = await _metrics(port, "watcher_turns_total", len(lines) - 1)
        assert turns == len(lines) - 1  # every line but the marker
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    _flip(checkpoint)  # the backup copy (<path>.1, made at the first checkpoint) is intact

    proc = await start_watcher(env, tmp_path / "run-1.log")
    try:
        port = await api_port(tmp_path / "run-1.log", proc)
        assert await _metrics(port, "watcher_checkpoint_fallbacks_total", 1) == 1
        # the batches after the copy's offsets are read again: every turn counted, once
        assert await _metrics(port, "watcher_turns_total", turns) == turns
        await asyncio.sleep(1.0)  # a batch counted twice would show now
        assert await _metrics(port, "watcher_turns_total", 0) == turns
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    copies = sorted(tmp_path.glob("checkpoint.sqlite.[0-9]"))
    assert copies, "no backup copy was made"
    for copy in copies:
        _flip(copy)
    part = _flip(checkpoint)
    refused = await start_watcher(env, tmp_path / "run-2.log")
    assert await asyncio.wait_for(refused.wait(), 30) == 1
    said = (tmp_path / "run-2.log").read_text()
    assert "no readable checkpoint" in said and "SHA-256" in said and "--reset-state" in said
    db = sqlite3.connect(checkpoint)
    # kept aside twice: at the fall-back, and now
    assert db.execute("SELECT COUNT(*) FROM checkpoint_quarantine WHERE part=?", (part,)).fetchone() == (2,)
    db.close()

    log = open(tmp_path / "run-3.log", "wb")
    fresh = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watcher",
        "run",
        "--reset-state",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log,
    )
    log.close()
    try:
        port = await api_port(tmp_path / "run-3.log", fresh)
        assert await _metrics(port, "watcher_checkpoint_lost_total", 1) == 1
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 30
            while (await http.get(f"http://127.0.0.1:{port}/readyz")).status != 200:
                assert time.monotonic() < deadline, "never ready after --reset-state"
                await asyncio.sleep(0.2)
        fresh.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(fresh.wait(), 20) == 0
    finally:
        if fresh.returncode is None:
            fresh.kill()
            await fresh.wait()
