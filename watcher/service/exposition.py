"""``GET /metrics`` without holding the event loop (issue #13).

A scrape used to run prometheus-client's ``generate_latest`` on the event loop: every series'
snapshots and every line formatted (seconds at a thousand agents), and the outbox's and the spool's
collectors reading SQLite from the loop's thread (waiting on a writer's fsync). ``/healthz``, the
verdicts and the deployer hooks waited behind it. Now a scrape:

1. brings the per-series text up to date on the loop, one changed agent per step, handing the loop
   back whenever a slice has run ``slice_s`` (``SeriesText``: only the agents that changed are redone);
2. reads the rollouts and verdicts from the engine on the loop, one rollout per step, sliced the same;
3. writes the answer in a worker thread from what 1 and 2 took: the per-series text is joined there
   (in pieces of a thousand series: one join of tens of megabytes would hold the interpreter, and so
   the loop, for its whole length), watcher's own metrics are formatted there and the SQLite-backed
   collectors read there. The API writes the pieces to the socket one by one.

Scrapes run one at a time (a second waits for the first). Each series' lines come from one look at
the state, so an answer is consistent per series; a batch may land between two agents' steps.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from watcher.service.series_text import metrics_chunks
from watcher.service.telemetry import StateCollector

__all__ = ["Exposition"]


class Exposition:
    """The text of ``registry`` (with ``state`` registered in it), built as the module says."""

    def __init__(self, registry: CollectorRegistry, state: StateCollector, *, slice_s: float = 0.005) -> None:
        self._registry = registry
        self._state = state
        self.slice_s = slice_s
        self._lock = asyncio.Lock()
        self.slices = 0  # times the last scrape handed the loop back
        self._began = 0.0  # when the current slice began

    async def render(self) -> list[bytes]:
        """The text, in pieces of at most a few hundred KB (the API writes them one by one)."""
        async with self._lock:
            self.slices = 0
            self._began = time.perf_counter()
            for _ in self._state.series.steps():
                await self._maybe_yield()
            families: list[Metric] = []
            for step in self._state.prepare_steps():
                if step is None:
                    await self._maybe_yield()
                else:
                    families = step
            self._state.hold(families)
            try:
                return await asyncio.to_thread(metrics_chunks, self._registry)
            finally:
                self._state.hold(None)

    async def _maybe_yield(self) -> None:
        """Let the loop run once this slice has run ``slice_s``."""
        if time.perf_counter() - self._began >= self.slice_s:
            await asyncio.sleep(0)
            self.slices += 1
            self._began = time.perf_counter()
