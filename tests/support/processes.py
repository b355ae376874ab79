"""Helpers shared by tests (moved from test_crash.py)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def watcher_env(broker: Any, tmp_path: Path, topic: str) -> dict[str, str]:
    return {
        **os.environ,
        "WATCHER_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "WATCHER_KAFKA__TELEMETRY_TOPICS": topic,
        "WATCHER_KAFKA__DEPLOYMENTS_TOPICS": topic + "-deployments",
        "WATCHER_KAFKA__DEAD_LETTER_TOPIC": topic + "-deadletter",
        "WATCHER_KAFKA__GROUP_ID": topic + "-group",
        "WATCHER_KAFKA__SESSION_TIMEOUT_MS": "2000",
        "WATCHER_KAFKA__HEARTBEAT_INTERVAL_MS": "200",
        "WATCHER_KAFKA__REQUEST_TIMEOUT_MS": "3000",
        "WATCHER_KAFKA__MAX_BATCH_RECORDS": "300",
        "WATCHER_HTTP__PORT": "0",
        "WATCHER_JUDGE__DECISION_LOG": str(tmp_path / "decisions.sqlite"),
        "WATCHER_OUTBOX__PATH": str(tmp_path / "outbox.sqlite"),
        "WATCHER_SPOOL__PATH": str(tmp_path / "spool.sqlite"),
        "WATCHER_CHECKPOINT__ENABLED": "true",
        "WATCHER_CHECKPOINT__PATH": str(tmp_path / "checkpoint.sqlite"),
        "WATCHER_CHECKPOINT__INTERVAL_S": "1.0",
        "WATCHER_LOG_LEVEL": "INFO",
    }


async def start_watcher(env: dict[str, str], log_path: Path) -> asyncio.subprocess.Process:
    log = open(log_path, "wb")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "watcher", "run", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log
        )
    finally:
        log.close()


async def api_port(log_path: Path, proc: asyncio.subprocess.Process, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(r"HTTP API on http://[\d.]+:(\d+)", log_path.read_text(errors="replace"))
        if match:
            return int(match.group(1))
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"the daemon never announced its port:\n{log_path.read_text(errors='replace')[-3000:]}"
    )


def series_labels(key: tuple[str, ...]) -> tuple[str, frozenset[tuple[str, str]]]:
    """The metric-name prefix and the label set /metrics shows a state series (``SeriesKey``) under."""
    agent, env, version, arm, seg_key, seg_value = key
    labels = {"agent": agent, "environment": env, "version": version, "arm": arm}
    if seg_key:
        labels |= {"segment_key": seg_key, "segment_value": seg_value}
    return ("watcher_segment_" if seg_key else "watcher_"), frozenset(labels.items())


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out
