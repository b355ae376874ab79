"""Where simulated telemetry goes: a JSON Lines file or Kafka, optionally paced, as ``watcher.turn/v1``
events or as the OpenTelemetry spans of the same turns (``--format otlp``: ``watcher.sim.otlp``).

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
from watcher.errors import ConfigError
from watcher.kafka import unreachable
from watcher.sim.otlp import otlp_blocks
from watcher.sim.platform import Platform
from watcher.sim.platform import events as platform_events
from watcher.sim.scenario import Scenario
from watcher.sim.traffic import blocks

__all__ = [
    "FORMATS",
    "encoded",
    "messages",
    "produce",
    "produce_platform",
    "write_jsonl",
    "write_paced",
    "write_platform_jsonl",
]

# json: a watcher.turn/v1 event per message; otlp: the same turns as OpenTelemetry GenAI spans, a
# trace request per message (protobuf to Kafka, OTLP/JSON lines to a file); otlp_proto, otlp_json:
# that encoding (watcher.sim.otlp)
FORMATS = ("json", "otlp", "otlp_proto", "otlp_json")

Lines = Iterator[tuple[list[str], list[str], set[int]]]  # (agent ids, lines, marker positions)
# (agent ids, messages, marker positions, events per message: turns in a trace request, else 1)
Block = tuple[list[str], list[bytes], set[int], list[int]]


def encoded(stream: Iterable[tuple[list[str], list[str], set[int]]], fmt: str = "json") -> Iterator[Block]:
    """A stream of simulated lines as the messages of ``fmt`` (json, otlp_proto or otlp_json)."""
    if fmt == "json":
        for keys, lines, markers in stream:
            yield keys, [line.encode() for line in lines], markers, [1] * len(lines)
    else:
        yield from otlp_blocks(stream, fmt)


def _lines(scenario: Scenario) -> Lines:
    for lines, markers in blocks(scenario):
        yield [scenario.agent_id] * len(lines), lines, markers


def messages(scenario: Scenario, fmt: str = "json") -> Iterator[list[tuple[bytes, bool, int]]]:
    """The scenario's messages block by block: ``(value, is_marker, events)``."""
    for _, values, markers, events in encoded(_lines(scenario), fmt):
        yield [(v, i in markers, n) for i, (v, n) in enumerate(zip(values, events))]


def _file_format(fmt: str) -> str:
    if fmt == "otlp_proto":
        raise ConfigError("simulate.format", "protobuf has no line framing in a file: use otlp (JSON lines)")
    return "otlp_json" if fmt == "otlp" else fmt


def _write(stream: Iterator[Block], path: str | Path) -> int:
    n = 0
    with open(path, "wb") as f:
        for _, values, _, events in stream:
            f.write(b"".join(v + b"\n" for v in values))
            n += sum(events)
    return n


def write_jsonl(scenario: Scenario, path: str | Path, fmt: str = "json") -> int:
    """Write the scenario as JSON Lines (turns, or OTLP/JSON requests, and markers); returns the number
    of events (turns and markers) written."""
    return _write(encoded(_lines(scenario), _file_format(fmt)), path)


def write_platform_jsonl(platform: Platform, path: str | Path, fmt: str = "json") -> int:
    """Write a platform's merged stream (``--agents``) as JSON Lines; returns the events written."""
    return _write(encoded(platform_events(platform), _file_format(fmt)), path)


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


def _chunks(values: list[Any], rate: float | None) -> Iterator[tuple[int, list[Any]]]:
    step = max(1, int(rate / 20)) if rate else len(values)  # paced: ~20 sends a second, smooth enough
    for i in range(0, len(values), step):
        yield i, values[i : i + step]


async def produce(
    scenario: Scenario,
    bootstrap_servers: str,
    topic: str,
    *,
    rate: float | None = None,
    deployments_topic: str | None = None,
    clock: Clock | None = None,
    fmt: str = "json",
) -> int:
    """Send the scenario to Kafka (key = agent_id); markers go to ``deployments_topic`` if given.
    ``fmt`` otlp (protobuf), otlp_proto or otlp_json: trace requests, as the Collector's Kafka exporter
    writes them. Returns the events (turns and markers) sent."""
    stream = encoded(_lines(scenario), _wire_format(fmt))
    return await _produce(stream, bootstrap_servers, topic, rate, deployments_topic, clock)


async def produce_platform(
    platform: Platform,
    bootstrap_servers: str,
    topic: str,
    *,
    rate: float | None = None,
    deployments_topic: str | None = None,
    clock: Clock | None = None,
    fmt: str = "json",
) -> int:
    """Send a platform's stream (``--agents``) to Kafka, each event keyed by its agent, so one agent's
    turns and markers share a partition as watcher requires."""
    stream = encoded(platform_events(platform), _wire_format(fmt))
    return await _produce(stream, bootstrap_servers, topic, rate, deployments_topic, clock)


def _wire_format(fmt: str) -> str:
    return "otlp_proto" if fmt == "otlp" else fmt


async def _produce(
    stream: Iterator[Block],
    bootstrap_servers: str,
    topic: str,
    rate: float | None,
    deployments_topic: str | None,
    clock: Clock | None,
) -> int:
    """Blocks of messages to Kafka, each to the partition the default partitioner picks for its key.

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
        max_request_size=8 << 20,  # a trace request of 512 spans is ~300 KB
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
        for keys, values, marker_pos, events in stream:
            for offset, chunk in _chunks(values, rate):
                batches: dict[tuple[str, int], Any] = {}
                for i, value in enumerate(chunk, offset):
                    dest = deployments_topic if deployments_topic and i in marker_pos else topic
                    key = keys[i]
                    part = where.get((dest, key))
                    if part is None:
                        part = partitioner(key.encode(), available[dest], available[dest])
                        where[(dest, key)] = part
                    batch = batches.get((dest, part))
                    if batch is None:
                        batch = batches[(dest, part)] = producer.create_batch()
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
                await pacer.tick(sum(events[offset : offset + len(chunk)]))
        await asyncio.gather(*inflight)
    finally:
        await producer.stop()
    return pacer.sent


async def write_paced(
    stream: Iterable[tuple[list[str], list[str], set[int]]],
    path: str | Path,
    rate: float,
    clock: Clock,
    fmt: str = "json",
) -> int:
    pacer = _Pacer(rate, clock)
    with open(path, "wb") as f:
        for _, values, _, events in encoded(stream, _file_format(fmt)):
            for offset, chunk in _chunks(values, rate):
                f.write(b"".join(v + b"\n" for v in chunk))
                f.flush()  # a follower (tail -f, FileSource) sees events as they are "produced"
                await pacer.tick(sum(events[offset : offset + len(chunk)]))
    return pacer.sent
