"""A batch through the engine in slices of the event loop (issue #13).

``Engine.process`` is synchronous: a Kafka batch (up to ``kafka.max_batch_records``, 2,000) held the
event loop for all of its work, and at a thousand agents that work is ~100 µs per event: hundreds of
milliseconds during which ``/healthz``, the verdicts and the deployer hooks waited. ``Slices`` runs
the batch in pieces of about ``slice_s`` of work each (10 ms: with 20 ms, 11 % of the loop-lag
timer's samples were over 50 ms at a thousand agents, with 10 ms 2.4 %, one run each), sized
from the time the last pieces took per message, and lets the loop run between two pieces. The caller
holds the batch lock throughout, so no checkpoint, rebalance or reload sees a batch half applied;
readers may, as they may see the state between two Kafka batches: the engine's results do not depend
on where a batch is cut (markers take effect at their event time, looks follow the event-time grid).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from watcher.engine import BatchResult, Engine

__all__ = ["Slices"]


class Slices:
    def __init__(self, slice_s: float = 0.01, *, smallest: int = 64, first_guess_s: float = 20e-6) -> None:
        self.slice_s = slice_s
        self.smallest = smallest  # messages: below this the per-call overhead would dominate
        self.per_message_s = first_guess_s  # the latest pieces' wall time per message (a moving average)
        self.pieces = 0  # pieces run so far (the batches' count plus the cuts)

    def size(self) -> int:
        """Messages in the next piece."""
        return max(self.smallest, round(self.slice_s / self.per_message_s))

    async def process(self, engine: Engine, values: Sequence[bytes], origins: Sequence[str]) -> BatchResult:
        """``engine.process(values, origins)``, cut where the pieces would run longer than ``slice_s``;
        the loop runs between two pieces."""
        result: BatchResult | None = None
        start, n = 0, len(values)
        while start < n:
            if result is not None:
                await asyncio.sleep(0)
            stop = min(n, start + self.size())
            began = time.perf_counter()
            piece = engine.process(values[start:stop], origins=origins[start:stop])
            took = (time.perf_counter() - began) / (stop - start)
            self.per_message_s = 0.7 * self.per_message_s + 0.3 * took
            self.pieces += 1
            if result is None:
                result = piece
            else:
                result.merge(piece)
            start = stop
        return result if result is not None else engine.process(values, origins=origins)
