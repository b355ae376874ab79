"""Where simulated telemetry goes: a JSON Lines file or Kafka, optionally paced.

``write_jsonl`` / ``produce`` take one agent's ``Scenario``; ``write_platform_jsonl`` /
``produce_platform`` a ``Platform`` of many agents (``watcher.sim.platform``). Kafka records are keyed
by agent, so one agent's turns and markers share a partition as watcher requires.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from watcher.clock import Clock, SystemClock
from watcher.kafka import unreachable
from watcher.sim.platform import Platform
from watcher.sim.platform import events as platform_events
from watcher.sim.scenario import Scenario
from watcher.sim.traffic import blocks

__all__ = ["produce", "produce_platform", "write_jsonl", "write_paced", "write_platform_jsonl"]


def write_jsonl(scenario: Scenario, path: str | Path) -> int:
    """Write the scenario as JSON Lines; returns the number of events written."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for lines, _ in blocks(scenario):
            f.write("\n".join(lines))
            f.write("\n")
            n += len(lines)
    return n


def write_platform_jsonl(platform: Platform, path: str | Path) -> int:
    """Write a platform's merged stream (``--agents``) as JSON Lines; returns the events written."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for _, lines, _ in platform_events(platform):
            f.write("\n".join(lines))
            f.write("\n")
            n += len(lines)
    return n


class _Pacer:
    """Sleeps so that ``rate`` events per second are not exceeded (None: as fast as possible)."""

    def __init__(self, rate: float | None, clock: Clock) -> None:
        self.rate, self.clock, self.sent = rate, clock, 0
        self.t0 = clock.monotonic()

    async def tick(self, n: int) -> None:
        self.sent += n
        if self.rate:
            delay = self.t0 + self.sent / self.rate - self.clock.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)


def _chunks(lines: list[str], rate: float | None) -> Iterator[tuple[int, list[str]]]:
    step = max(1, int(rate / 20)) if rate else len(lines)  # paced: ~20 sends a second, smooth enough
    for i in range(0, len(lines), step):
        yield i, lines[i : i + step]


async def produce(
    scenario: Scenario,
    bootstrap_servers: str,
    topic: str,
    *,
    rate: float | None = None,
    deployments_topic: str | None = None,
    clock: Clock | None = None,
) -> int:
    """Send the scenario to Kafka (key = agent_id); markers go to ``deployments_topic`` if given."""
    stream = (([scenario.agent_id] * len(lines), lines, markers) for lines, markers in blocks(scenario))
    return await _produce(stream, bootstrap_servers, topic, rate, deployments_topic, clock)


async def produce_platform(
    platform: Platform,
    bootstrap_servers: str,
    topic: str,
    *,
    rate: float | None = None,
    deployments_topic: str | None = None,
    clock: Clock | None = None,
) -> int:
    """Send a platform's stream (``--agents``) to Kafka, each event keyed by its agent, so one agent's
    turns and markers share a partition as watcher requires."""
    return await _produce(platform_events(platform), bootstrap_servers, topic, rate, deployments_topic, clock)


async def _produce(
    stream: Iterator[tuple[list[str], list[str], set[int]]],
    bootstrap_servers: str,
    topic: str,
    rate: float | None,
    deployments_topic: str | None,
    clock: Clock | None,
) -> int:
    """Blocks of (keys, lines, marker positions) to Kafka, each line to the partition the default
    partitioner picks for its key.

    acks=1 and no idempotence: the embedded test broker (Tansu) rejects InitProducerId. Records are
    appended to one batch per (topic, partition) by hand: a ``send()`` per record costs ~30 µs, which
    would cap the throughput benchmark's feed at ~30k/s.
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError
    from aiokafka.partitioner import DefaultPartitioner

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks=1,
        enable_idempotence=False,
        linger_ms=5 if rate else 50,
        max_batch_size=1 << 20,
    )
    try:
        await producer.start()
    except KafkaError as exc:
        await producer.stop()
        raise unreachable(bootstrap_servers, exc) from None
    pacer = _Pacer(rate, clock or SystemClock())
    partitioner = DefaultPartitioner()
    where: dict[tuple[str, str], int] = {}  # (topic, key) -> partition
    inflight: list[asyncio.Future[Any]] = []
    try:
        available = {
            dest: sorted(await producer.partitions_for(dest)) for dest in {topic, deployments_topic or topic}
        }
        for keys, lines, marker_pos in stream:
            for offset, chunk in _chunks(lines, rate):
                batches: dict[tuple[str, int], Any] = {}
                for i, line in enumerate(chunk, offset):
                    dest = deployments_topic if deployments_topic and i in marker_pos else topic
                    key = keys[i]
                    part = where.get((dest, key))
                    if part is None:
                        part = partitioner(key.encode(), available[dest], available[dest])
                        where[(dest, key)] = part
                    batch = batches.get((dest, part))
                    if batch is None:
                        batch = batches[(dest, part)] = producer.create_batch()
                    value = line.encode()
                    while batch.append(key=key.encode(), value=value, timestamp=None) is None:
                        inflight.append(await producer.send_batch(batch, dest, partition=part))
                        batch = batches[(dest, part)] = producer.create_batch()
                for (dest, part), batch in batches.items():
                    if batch.record_count():
                        inflight.append(await producer.send_batch(batch, dest, partition=part))
                # Paced: deliver now (a live demo). Unpaced: keep a few batches in flight, as the
                # broker's round trip would otherwise dominate; delivery errors surface either way.
                if rate or len(inflight) > 32:
                    keep = 0 if rate else 16
                    await asyncio.gather(*inflight[: len(inflight) - keep])
                    del inflight[: len(inflight) - keep]
                await pacer.tick(len(chunk))
        await asyncio.gather(*inflight)
    finally:
        await producer.stop()
    return pacer.sent


async def write_paced(stream: Iterable[list[str]], path: str | Path, rate: float, clock: Clock) -> int:
    pacer = _Pacer(rate, clock)
    with open(path, "w", encoding="utf-8") as f:
        for lines in stream:
            for _, chunk in _chunks(lines, rate):
                f.write("".join(line + "\n" for line in chunk))
                f.flush()  # a follower (tail -f, FileSource) sees events as they are "produced"
                await pacer.tick(len(chunk))
    return pacer.sent
