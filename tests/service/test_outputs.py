"""Outputs that fail never wedge the daemon (issue #15, 3): the dead-letter topic refusing writes, the
checkpoint store failing, a batch that cannot finish at shutdown. Real broker, real HTTP, in process."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.daemon import daemon_settings, daemon_topics, until
from watcher.errors import CheckpointError
from watcher.kafka import KafkaDeadLetters
from watcher.service.compose import build_daemon
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate
from watcher.storage import SqliteCheckpointStore, SqliteSpool
from watcher.storage.checkpoint import Checkpoint

BAD = [b"not json", b'{"event_id":"x"}']


def _lines() -> list[bytes]:
    return list(generate(dataclasses.replace(PRESETS["demo"], duration_s=120.0, conversations_per_s=4.0)))


def _refusing_dead_letters(settings: Any, tmp_path: Path, **kw: Any) -> KafkaDeadLetters:
    """A dead-letter topic the broker refuses (an invalid name acts as an ACL denial would)."""
    return KafkaDeadLetters(
        settings.kafka,
        "not a topic name!",
        client_options={"request_timeout_ms": 500},
        spool=SqliteSpool(settings.spool.path),
        direct_timeout_s=0.5,
        not_ready_after_s=0.5,
        **kw,
    )


async def _get(base: str, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(base + path) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else await r.text())


async def test_an_unwritable_dead_letter_topic_does_not_stop_counting(
    broker, unique_topic, produce, tmp_path
) -> None:
    topics = await daemon_topics(broker, unique_topic)
    lines = _lines()
    half = len(lines) // 2
    await produce(topics["telemetry"], lines[:half] + BAD + lines[half:], key=b"support-bot")
    settings = daemon_settings(broker, tmp_path, topics)
    daemon = build_daemon(settings, dead_letters=_refusing_dead_letters(settings, tmp_path))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        # every turn after the malformed messages is counted: nothing waits for the topic
        await until(lambda: daemon.events_consumed >= len(lines) + len(BAD), timeout=30)
        base = f"http://127.0.0.1:{daemon.port}"
        await until(lambda: not daemon.readiness()[0], timeout=10)
        status, ready = await _get(base, "/readyz")
        assert status == 503 and "2 dead letters wait in the spool" in ready["reason"], ready
        _, metrics = await _get(base, "/metrics")
        assert 'watcher_spool_records{stream="deadletter"} 2.0' in metrics
        assert "watcher_ready 0.0" in metrics
        started = time.monotonic()
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0
        assert time.monotonic() - started < 10  # SIGTERM is not ignored
    finally:
        stop.set()
    state = daemon.engine.state
    counted = sum(state.snapshot(k, "cumulative").turns for k in state.keys() if not k[4])
    assert counted == sum(b'"watcher.turn/v1"' in line for line in lines)
    # the dead letters are safe in the spool for the next run: the offsets after them were committed
    spool = SqliteSpool(settings.spool.path)
    assert [s.record.key for s in spool.head("deadletter", 10)] == [
        f"{topics['telemetry']}/0@{half}".encode(),
        f"{topics['telemetry']}/0@{half + 1}".encode(),
    ]
    spool.close()


class _FailingStore(SqliteCheckpointStore):
    """A checkpoint store whose writes fail (disk full, a store that does not answer)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.saves = 0
        self.failing = True

    def save(self, cp: Checkpoint, scope: str = "all") -> int:
        self.saves += 1
        if self.failing:
            raise CheckpointError("database or disk is full")
        return super().save(cp, scope)


async def test_a_failing_checkpoint_store_backs_off_and_reports_not_ready(
    broker, unique_topic, produce, tmp_path
) -> None:
    topics = await daemon_topics(broker, unique_topic)
    lines = _lines()
    settings = daemon_settings(broker, tmp_path, topics, **{"checkpoint.interval_s": 0.0})
    store = _FailingStore(tmp_path / "cp.sqlite")
    daemon = build_daemon(settings, checkpoint_store=store)
    assert daemon.checkpoints is not None
    daemon.checkpoints.not_ready_after_s = 1.0
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        for i in range(0, len(lines), 100):  # many batches
            await produce(topics["telemetry"], lines[i : i + 100], key=b"support-bot")
            consumed = min(len(lines), i + 100)
            await until(lambda n=consumed: daemon.events_consumed >= n, timeout=30)
        assert daemon.batches_processed > 10
        # tried again with a backoff, not after every batch (each try serialises the whole state)
        assert store.saves < daemon.batches_processed / 2
        await until(lambda: not daemon.readiness()[0], timeout=10)
        assert "checkpoints fail" in daemon.readiness()[1] and "disk is full" in daemon.readiness()[1]
        store.failing = False
        await until(lambda: daemon.readiness()[0], timeout=90)  # within the backoff's cap
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0


async def test_a_batch_that_cannot_finish_does_not_hold_the_shutdown(
    broker, unique_topic, produce, tmp_path
) -> None:
    topics = await daemon_topics(broker, unique_topic)
    lines = _lines()[:400]
    settings = daemon_settings(broker, tmp_path, topics, **{"shutdown_grace_s": 2.0})
    # the spool is full from the start: a batch with a dead letter waits for room that never comes
    dead = _refusing_dead_letters(settings, tmp_path, max_spool_bytes=10)
    daemon = build_daemon(settings, dead_letters=dead)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await produce(topics["telemetry"], lines, key=b"support-bot")
        await until(lambda: daemon.events_consumed >= len(lines), timeout=30)
        await until(
            lambda: daemon.checkpoints is not None and not daemon.checkpoints.all()[0].dirty, timeout=10
        )
        await produce(topics["telemetry"], BAD[:1], key=b"support-bot")
        await until(lambda: dead.waiting_for_room, timeout=10)
        assert "spool is full" in daemon.readiness()[1]
        started = time.monotonic()
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0
        assert time.monotonic() - started < 2.0 + 3.0  # the grace, and the clean-up steps
    finally:
        stop.set()
    # the abandoned batch was not checkpointed nor committed: the next run reads it again
    cp = SqliteCheckpointStore(settings.checkpoint.path).load()
    assert cp is not None and cp.offsets[(topics["telemetry"], 0)] == len(lines)


async def test_a_broker_that_comes_back_empty_is_read_from_its_start(unique_topic, produce, tmp_path) -> None:
    # issue #15, 6: positions beyond the end of the log waited there: ready, lag 0, nothing counted
    from watcher.kafka.embedded import EmbeddedBroker

    lines = _lines()
    first, then = lines[:600], lines[600:900]
    own = EmbeddedBroker()
    await own.start()
    port = own.port
    topics = await daemon_topics(own, unique_topic)
    await produce(topics["telemetry"], first, key=b"support-bot", bootstrap_servers=own.bootstrap_servers)
    settings = daemon_settings(own, tmp_path, topics, **{"checkpoint.interval_s": 0.2})
    daemon = build_daemon(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    again = EmbeddedBroker(port=port)
    try:
        await until(lambda: daemon.events_consumed >= len(first), timeout=30)
        await own.stop()  # its log was in memory: the broker comes back empty
        await again.start()
        await daemon_topics_again(again, topics)
        await produce(
            topics["telemetry"], then, key=b"support-bot", bootstrap_servers=again.bootstrap_servers
        )
        await until(lambda: daemon.events_consumed >= len(first) + len(then), timeout=60)
        _, metrics = await _get(f"http://127.0.0.1:{daemon.port}", "/metrics")
        assert f'watcher_offset_resets_total{{topic="{topics["telemetry"]}"}} 1.0' in metrics
        await until(lambda: daemon.readiness()[0], timeout=30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await again.stop()
        await own.stop()
    # the state counted both logs, and its checkpoint now covers the new one (a restart resumes there)
    state = daemon.engine.state
    counted = sum(state.snapshot(k, "cumulative").turns for k in state.keys() if not k[4])
    assert counted == sum(b'"watcher.turn/v1"' in line for line in first + then)
    cp = SqliteCheckpointStore(settings.checkpoint.path).load()
    assert cp is not None and cp.offsets[(topics["telemetry"], 0)] == len(then)


async def daemon_topics_again(broker: Any, topics: dict[str, str]) -> None:
    from watcher.kafka.embedded import TopicSpec, create_topics

    await create_topics(
        broker.bootstrap_servers,
        [
            TopicSpec(topics["telemetry"], partitions=3),
            TopicSpec(topics["deployments"]),
            TopicSpec(topics["deadletter"]),
        ],
    )
