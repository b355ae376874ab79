"""watcher_event_loop_lag_seconds: a loop held by a blocking step shows as lag, a free one does not."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Histogram

from watcher.service.looplag import LAG_BUCKETS, LoopLag


def _above(registry: CollectorRegistry, bound: float) -> float:
    total = registry.get_sample_value("lag_seconds_count") or 0.0
    return total - (registry.get_sample_value("lag_seconds_bucket", {"le": str(bound)}) or 0.0)


async def test_a_held_loop_shows_as_lag_a_free_one_does_not() -> None:
    registry = CollectorRegistry()
    lag = LoopLag(Histogram("lag_seconds", "lag", buckets=LAG_BUCKETS, registry=registry), interval_s=0.01)
    task = asyncio.create_task(lag.run())
    try:
        await asyncio.sleep(0.3)
        assert (registry.get_sample_value("lag_seconds_count") or 0) >= 5
        assert _above(registry, 0.25) == 0
        time.sleep(0.4)  # a step that holds the loop
        await asyncio.sleep(0.05)
        assert _above(registry, 0.25) == 1
    finally:
        task.cancel()
