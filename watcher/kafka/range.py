"""A time range of a topic, read once from start to the end it had when the read began (``watcher gate``).

No consumer group, no commits: the partitions are assigned, each is positioned at the first record
whose timestamp is at or after ``since`` minus a margin (``offsets_for_times``; record timestamps are
the producer's, usually close to the events' own), and read up to the end offset taken at the start,
so a topic that keeps growing does not keep the read going. The caller keeps what falls in the range
by the events' own ``ts`` (the margin is there for records stamped a little before their events).
A broker that does not answer, or a topic that does not exist, is a ``SourceError`` naming it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from watcher.errors import SourceError

__all__ = ["read_range"]

SEEK_MARGIN_S = 3600.0  # records stamped up to an hour before their events' ts are still read


async def read_range(
    bootstrap_servers: str,
    topic: str,
    since: float,
    *,
    margin_s: float = SEEK_MARGIN_S,
    timeout_s: float = 60.0,
    client_options: dict[str, Any] | None = None,
) -> tuple[list[bytes], list[str]]:
    """Values and origins (``topic/partition@offset``) of the records from ``since - margin_s`` on,
    in partition order; raises ``SourceError`` when the broker or the topic cannot be read."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    opts = {"request_timeout_ms": 10_000, **(client_options or {})}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, **opts)
    deadline = time.monotonic() + timeout_s
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
    except (TimeoutError, KafkaError, OSError) as exc:
        await consumer.stop()
        raise SourceError(f"cannot reach Kafka at {bootstrap_servers}: {exc or type(exc).__name__}") from exc
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise SourceError(f"topic {topic!r} does not exist on {bootstrap_servers}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        found = await consumer.offsets_for_times({tp: max(int((since - margin_s) * 1000), 0) for tp in tps})
        for tp in tps:
            hit = found.get(tp)
            consumer.seek(tp, hit.offset if hit is not None else end[tp])
        values: list[bytes] = []
        origins: list[str] = []
        pending = {tp for tp in tps if await consumer.position(tp) < end[tp]}
        while pending:
            if time.monotonic() > deadline:
                raise SourceError(f"reading {topic} took longer than {timeout_s:.0f} s; give a later --since")
            batches = await consumer.getmany(*pending, timeout_ms=1000)
            for tp, records in batches.items():
                for r in records:
                    if r.offset < end[tp] and r.value is not None:
                        values.append(r.value)
                        origins.append(f"{topic}/{tp.partition}@{r.offset}")
            pending = {tp for tp in pending if await consumer.position(tp) < end[tp]}
        return values, origins
    except KafkaError as exc:
        raise SourceError(f"cannot read {topic} from {bootstrap_servers}: {exc}") from exc
    finally:
        await consumer.stop()
