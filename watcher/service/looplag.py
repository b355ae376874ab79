"""How late the event loop runs: ``watcher_event_loop_lag_seconds`` (issue #13).

Everything the daemon answers (``/healthz``, ``/readyz``, the verdict API, the deployer hooks) waits
while a batch, a checkpoint's snapshot or a reload holds the event loop. A timer that should fire every
``interval_s`` measures it: how late it fires is how long the loop was held (plus scheduling noise).
An alert on its p99 says a liveness probe is about to time out before the probe does.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["LAG_BUCKETS", "LoopLag"]

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Observer(Protocol):
    def observe(self, amount: float) -> None: ...


class LoopLag:
    """A timer every ``interval_s`` that observes how late it fired (a ``prometheus_client.Histogram``)."""

    def __init__(self, histogram: Observer, interval_s: float = 0.05) -> None:
        self.histogram = histogram
        self.interval_s = interval_s

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.histogram.observe(max(0.0, loop.time() - due))
