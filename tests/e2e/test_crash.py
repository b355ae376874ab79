"""Crash test: `watcher run` killed with SIGKILL at random points while the simulator produces.

Real processes against the real broker. A demo scenario with a regression (enough for a rollback) is
produced to a one-partition topic in paced chunks; the daemon (checkpoints every second, small
batches) is SIGKILLed several times at seeded random moments after it has made progress, and
restarted each time. After the last run has consumed everything, its /metrics and decision log must
equal an uninterrupted replay of the same lines: no event lost, none counted twice, no decision
lost or duplicated.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import signal
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support.processes import api_port, metric_samples, series_labels, start_watcher, watcher_env
from watcher.kafka.embedded import TopicSpec, create_topics
from watcher.service.replay import replay
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate
from watcher.storage.checkpoint import read_manifest
from watcher.storage.decisions import SqliteDecisionLog

SEED = 20240605
KILLS = 4
CHUNK = 200  # lines per produce call
CHUNK_PAUSE_S = 0.22  # ~17.7k lines over ~25 s: the daemon has work in hand when it is killed


def _lines() -> list[bytes]:
    scenario = dataclasses.replace(PRESETS["demo"], duration_s=600.0, conversations_per_s=8.0)
    return list(generate(scenario))


def _checkpointed_offset(path: Path) -> int:
    """The telemetry offset of the checkpoint on disk (read-only; -1 before the first one)."""
    if not path.exists():
        return -1
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            row = db.execute("SELECT document FROM checkpoints WHERE scope='all'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return -1
    if row is None:
        return -1
    cp, _ = read_manifest(bytes(row[0]))
    return max(cp.offsets.values(), default=-1)


async def test_sigkill_at_random_points_loses_and_duplicates_nothing(broker, unique_topic, tmp_path) -> None:
    rng = random.Random(SEED)
    lines = _lines()
    path = tmp_path / "input.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    reference, engine = replay(path)  # the uninterrupted run
    expected = {k: engine.state.snapshot(k, "cumulative") for k in engine.state.keys()}
    expected_turns = sum(s.turns for k, s in expected.items() if not k[4])
    assert [d["action"] for d in reference.decisions] == ["rollback"], "the scenario must make a decision"

    topic = unique_topic("crash")
    await create_topics(
        broker.bootstrap_servers,
        [TopicSpec(topic, 1), TopicSpec(topic + "-deployments"), TopicSpec(topic + "-deadletter")],
    )
    env = watcher_env(broker, tmp_path, topic)
    checkpoint_file = tmp_path / "checkpoint.sqlite"

    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all", linger_ms=5)
    await producer.start()

    async def produce() -> None:  # the simulator, paced, while the daemon is killed and restarted
        for i in range(0, len(lines), CHUNK):
            futures = [await producer.send(topic, v, key=b"support-bot") for v in lines[i : i + CHUNK]]
            await asyncio.gather(*futures)
            await asyncio.sleep(CHUNK_PAUSE_S)

    producing = asyncio.create_task(produce())
    kills: list[tuple[int, float, int]] = []  # (run, seconds after the progress point, checkpointed offset)
    proc: asyncio.subprocess.Process | None = None
    started = time.monotonic()
    try:
        for run in range(KILLS):
            proc = await start_watcher(env, tmp_path / f"run-{run}.log")
            # kill after this run has checkpointed something new, past a point spread over the stream,
            # plus a random delay (so kills land between checkpoints, with batches not yet committed)
            # (a run that already checkpointed the whole stream is killed at once: nothing is left)
            target = min(
                max(len(lines) * (run + 1) // (KILLS + 1), kills[-1][2] + 1 if kills else 0), len(lines)
            )
            deadline = time.monotonic() + 40
            while _checkpointed_offset(checkpoint_file) < target:
                assert proc.returncode is None, (tmp_path / f"run-{run}.log").read_text()[-3000:]
                assert time.monotonic() < deadline, f"run {run} made no progress to offset {target}"
                await asyncio.sleep(0.05)
            delay = rng.uniform(0.0, 1.5)
            await asyncio.sleep(delay)
            at = _checkpointed_offset(checkpoint_file)
            proc.send_signal(signal.SIGKILL)
            assert await asyncio.wait_for(proc.wait(), 10) == -signal.SIGKILL
            kills.append((run, round(delay, 2), at))

        await producing
        proc = await start_watcher(env, tmp_path / "run-last.log")
        port = await api_port(tmp_path / "run-last.log", proc)
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 40
            while True:
                text = await (await http.get(f"http://127.0.0.1:{port}/metrics")).text()
                samples = metric_samples(text)
                turns = sum(v for (n, _), v in samples.items() if n == "watcher_turns_total")
                if turns >= expected_turns:
                    break
                assert time.monotonic() < deadline, (
                    f"only {turns} of {expected_turns} turns after the last restart"
                )
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.5)  # a duplicate would show now
            samples = metric_samples(await (await http.get(f"http://127.0.0.1:{port}/metrics")).text())
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        producing.cancel()
        await producer.stop()
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
    elapsed = time.monotonic() - started

    # per-series state equals the uninterrupted run's: every event counted exactly once
    checked = 0
    for series, snap in expected.items():
        prefix, key = series_labels(series)
        labels = dict(key)
        seg_key = series[4]
        assert samples[(prefix + "turns_total", key)] == snap.turns, labels
        assert samples[(prefix + "conversations_total", key)] == snap.conversations, labels
        mean = samples[(prefix + "quality_mean", key | {("window", "cumulative")})]
        assert mean == pytest.approx(snap.quality_mean, rel=1e-9, abs=1e-12), labels
        checked += snap.turns if not seg_key else 0
    assert checked == expected_turns

    # the decisions equal the uninterrupted run's: same ids, same actions, none lost, none twice
    log = SqliteDecisionLog(tmp_path / "decisions.sqlite")
    try:
        logged = [(d["decision_id"], d["action"]) for d in log.list(limit=1000, ascending=True)]
    finally:
        log.close()
    assert logged == [(d["decision_id"], d["action"]) for d in reference.decisions]

    assert len(kills) == KILLS
    print(
        f"\ncrash test: {KILLS} SIGKILLs survived at (run, delay s, checkpointed offset) {kills}; "
        f"{len(lines)} events, {expected_turns} turns in {len(expected)} series checked; "
        f"decisions {logged}; {elapsed:.1f} s"
    )
