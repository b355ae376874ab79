"""Helpers shared by tests (moved from test_daemon.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from watcher.config.settings import Settings, load_settings
from watcher.kafka.embedded import TopicSpec, create_topics


def daemon_settings(broker: Any, tmp_path: Path, topics: dict[str, str], **extra: Any) -> Settings:
    overrides = {
        "kafka.bootstrap_servers": broker.bootstrap_servers,
        "kafka.telemetry_topics": [topics["telemetry"]],
        "kafka.deployments_topics": [topics["deployments"]],
        "kafka.dead_letter_topic": topics["deadletter"],
        "kafka.group_id": topics["telemetry"] + "-group",
        "kafka.session_timeout_ms": 2000,
        "kafka.heartbeat_interval_ms": 200,
        "kafka.request_timeout_ms": 3000,
        "http.port": 0,
        "judge.decision_log": str(tmp_path / "decisions.sqlite"),
        "outbox.path": str(tmp_path / "outbox.sqlite"),
        "spool.path": str(tmp_path / "spool.sqlite"),
        "checkpoint.path": str(tmp_path / "checkpoint.sqlite"),
        **extra,
    }
    return load_settings(environ={}, overrides=overrides)


async def daemon_topics(broker: Any, unique_topic: Any) -> dict[str, str]:
    topics = {
        "telemetry": unique_topic("telemetry"),
        "deployments": unique_topic("deployments"),
        "deadletter": unique_topic("deadletter"),
    }
    await create_topics(
        broker.bootstrap_servers,
        [
            TopicSpec(topics["telemetry"], partitions=3),
            TopicSpec(topics["deployments"]),
            TopicSpec(topics["deadletter"]),
        ],
    )
    return topics


async def until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the daemon")
        await asyncio.sleep(0.05)


async def consume_all(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + 20
        while len(values) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                values.extend(r.value for r in records)
    finally:
        await consumer.stop()
    return values
