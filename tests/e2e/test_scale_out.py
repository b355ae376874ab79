"""Scale-out: several `watcher run` processes in one consumer group, with state hand-over.

Real processes against the real broker. Four agents (two with a regression that must be rolled
back, two healthy) are produced, keyed by agent, to a four-partition topic while two instances share
the group (``checkpoint.scope: partition``, one checkpoint store: a shared SQLite file, or the
compacted Kafka topic instances on several hosts use). During the stream one instance is
SIGKILLed and restarted (its partitions move to the survivor and back, with their state), then both
are restarted one after the other with SIGTERM (watcher's own rolling upgrade). At the end the union
of the instances' /metrics and decision logs must equal one uninterrupted replay: every series owned
by exactly one instance, every event counted once, every decision made once (by id).
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import json
import signal
import time
from typing import Any

import aiohttp
import pytest

from tests.support.processes import api_port as _port
from tests.support.processes import metric_samples as _samples
from tests.support.processes import series_labels
from tests.support.processes import start_watcher as _start
from tests.support.processes import watcher_env as _env
from watcher.engine.tasks import partition_for
from watcher.kafka.embedded import TopicSpec, create_topics
from watcher.service.replay import replay
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate
from watcher.storage.decisions import SqliteDecisionLog

PARTITIONS = 4
CHUNK = 300
CHUNK_PAUSE_S = 0.25

pytestmark = pytest.mark.slow


def _agents() -> list[str]:
    """Four agent names the default partitioner spreads over at least three partitions."""
    names: list[str] = []
    used: set[int] = set()
    i = 0
    while len(names) < 4:
        name = f"agent-{i}"
        p = partition_for(name, PARTITIONS)
        if p not in used or len(used) >= 3:
            names.append(name)
            used.add(p)
        i += 1
    return names


def _lines(agents: list[str]) -> list[tuple[str, bytes]]:
    """(agent, line) of every agent's stream, merged in event time."""
    streams = []
    for i, agent in enumerate(agents):
        base = PRESETS["demo"] if i % 2 == 0 else dataclasses.replace(PRESETS["demo"], regressions=())
        scenario = dataclasses.replace(
            base, agent_id=agent, seed=100 + i, duration_s=600.0, conversations_per_s=5.0
        )
        streams.append([(json.loads(line)["ts"], i, agent, line) for line in generate(scenario)])
    return [(agent, line) for _, _, agent, line in heapq.merge(*streams, key=lambda t: (t[0], t[1]))]


async def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("store", ["sqlite", "kafka"])
async def test_instances_share_partitions_hand_state_over_and_survive_a_rolling_restart(
    broker, unique_topic, tmp_path, store
) -> None:
    agents = _agents()
    lines = _lines(agents)
    path = tmp_path / "input.jsonl"
    path.write_bytes(b"\n".join(line for _, line in lines) + b"\n")
    reference, engine = replay(path)  # one instance, one state, uninterrupted
    expected = {k: engine.state.snapshot(k, "cumulative") for k in engine.state.keys()}
    expected_turns = sum(s.turns for k, s in expected.items() if not k[4])
    ref_decisions = {(d["decision_id"], d["action"]) for d in reference.decisions}
    rollbacks = {d["rollout"]["agent_id"] for d in reference.decisions if d["action"] == "rollback"}
    assert rollbacks == {agents[0], agents[2]}, "the regressed agents must be rolled back"

    topic = unique_topic("scale")
    await create_topics(
        broker.bootstrap_servers,
        [
            TopicSpec(topic, PARTITIONS),
            TopicSpec(topic + "-deployments", PARTITIONS),
            TopicSpec(topic + "-deadletter"),
        ],
    )
    base = _env(broker, tmp_path, topic)
    envs = {
        name: {
            **base,
            "WATCHER_CHECKPOINT__SCOPE": "partition",
            "WATCHER_CHECKPOINT__STORE": store,
            "WATCHER_CHECKPOINT__TOPIC": topic + "-checkpoints",
            "WATCHER_JUDGE__DECISION_LOG": str(tmp_path / f"decisions-{name}.sqlite"),
            "WATCHER_OUTBOX__PATH": str(tmp_path / f"outbox-{name}.sqlite"),
            "WATCHER_SPOOL__PATH": str(tmp_path / f"spool-{name}.sqlite"),
        }
        for name in ("a", "b")
    }

    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all", linger_ms=5)
    await producer.start()
    sent = 0

    async def produce() -> None:
        nonlocal sent
        for i in range(0, len(lines), CHUNK):
            futures = [
                await producer.send(topic, line, key=agent.encode()) for agent, line in lines[i : i + CHUNK]
            ]
            await asyncio.gather(*futures)
            sent = i + CHUNK
            await asyncio.sleep(CHUNK_PAUSE_S)

    procs: dict[str, asyncio.subprocess.Process] = {}
    runs = {"a": 0, "b": 0}
    ports: dict[str, int] = {}
    http = aiohttp.ClientSession()

    async def ready() -> bool:
        for name, proc in procs.items():
            if (
                proc.returncode is None
                and (await http.get(f"http://127.0.0.1:{ports[name]}/readyz")).status != 200
            ):
                return False
        return True

    async def start(name: str) -> None:
        """Start an instance and wait until every live one consumes again (the group has settled):
        a rolling restart moves on only when the new instance is ready, as a Kubernetes rollout does."""
        runs[name] += 1
        log = tmp_path / f"{name}-{runs[name]}.log"
        procs[name] = await _start(envs[name], log)
        ports[name] = await _port(log, procs[name])
        await _wait_for(ready, 30, f"{name} (run {runs[name]}) never became ready")

    async def turns_of(name: str) -> float:
        text = await (await http.get(f"http://127.0.0.1:{ports[name]}/metrics")).text()
        return sum(v for (n, _), v in _samples(text).items() if n == "watcher_turns_total")

    async def progressed(fraction: float) -> None:
        await _wait_for(lambda: _true(sent >= len(lines) * fraction), 60, f"producer stuck before {fraction}")

    events: list[str] = []
    producing = asyncio.create_task(produce())
    started = time.monotonic()
    try:
        await start("a")
        await start("b")
        await progressed(0.2)
        procs["a"].send_signal(signal.SIGKILL)  # a crash: b takes a's partitions from their checkpoints
        assert await asyncio.wait_for(procs["a"].wait(), 10) == -signal.SIGKILL
        events.append(f"a killed at {sent} events sent")
        await asyncio.sleep(2.5)  # past the session timeout: b takes a's partitions from their checkpoints
        await _wait_for(ready, 30, "b never took the partitions of the killed instance")
        await start("a")  # and gives half back
        events.append("a restarted")
        await progressed(0.45)
        for name in ("b", "a"):  # rolling restart: one instance at a time, SIGTERM then start again
            procs[name].send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(procs[name].wait(), 30) == 0, f"{name} did not stop cleanly"
            await start(name)
            events.append(f"{name} rolled at {sent} events sent")
        await producing

        async def all_counted() -> bool:
            return sum([await turns_of(n) for n in ("a", "b")]) >= expected_turns

        await _wait_for(all_counted, 60, "the instances never counted every turn")
        await asyncio.sleep(1.0)  # a duplicate would show now
        samples = {
            n: _samples(await (await http.get(f"http://127.0.0.1:{ports[n]}/metrics")).text())
            for n in ("a", "b")
        }
        owned = {}
        for n in ("a", "b"):
            body = await (await http.get(f"http://127.0.0.1:{ports[n]}/v1/rollouts")).json()
            owned[n] = {r["agent_id"] for r in body["rollouts"]}
        for name, proc in procs.items():
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0, f"{name} did not stop cleanly"
    finally:
        producing.cancel()
        await producer.stop()
        await http.close()
        for proc in procs.values():
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    elapsed = time.monotonic() - started

    # every agent's rollouts are held by exactly one instance, and both instances hold some
    assert owned["a"] and owned["b"] and not owned["a"] & owned["b"], owned
    assert owned["a"] | owned["b"] == set(agents)

    # every series is exported by exactly one instance, with the uninterrupted run's values
    checked = 0
    for series, snap in expected.items():
        prefix, labels = series_labels(series)
        key = (prefix + "turns_total", labels)
        holders = [n for n in ("a", "b") if key in samples[n]]
        assert len(holders) == 1, (labels, holders)
        got = samples[holders[0]]
        assert got[key] == snap.turns, labels
        assert got[(prefix + "conversations_total", labels)] == snap.conversations, labels
        checked += snap.turns if not series[4] else 0
    assert checked == expected_turns

    # the decisions: the union of both audit trails equals the uninterrupted run's, by id
    logged: set[tuple[str, str]] = set()
    for name in ("a", "b"):
        log = SqliteDecisionLog(tmp_path / f"decisions-{name}.sqlite")
        try:
            logged |= {(d["decision_id"], d["action"]) for d in log.list(limit=1000)}
        finally:
            log.close()
    assert logged == ref_decisions

    print(
        f"\nscale-out test ({store} store): 2 instances, {PARTITIONS} partitions, {len(agents)} "
        f"agents; {'; '.join(events)}; "
        f"{len(lines)} events, {expected_turns} turns in {len(expected)} series checked; "
        f"{len(ref_decisions)} decisions equal; {elapsed:.1f} s"
    )


async def _true(value: bool) -> bool:
    return value
