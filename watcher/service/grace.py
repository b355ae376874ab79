"""The shutdown's time budget (``shutdown_grace_s``): after a stop, every step of the daemon's
clean-up gets what is left of it, so SIGTERM ends the process in bounded time whatever hangs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

__all__ = ["Grace"]

log = logging.getLogger("watcher.service.daemon")  # the daemon's logger: its shutdown lines stay together


class Grace:
    """The shutdown's time budget: ``start()`` when the stop arrives, then each step gets what is
    left (or ``share`` of it, to keep time for the steps after it)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._deadline: float | None = None

    def start(self) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + self.seconds

    def left(self) -> float:
        self.start()
        assert self._deadline is not None
        return max(0.0, self._deadline - time.monotonic())

    async def bounded(self, what: str, step: Any, *, share: float = 1.0) -> bool:
        """Await ``step`` (a coroutine or future) for at most ``share`` of the time left; False (and
        logged) when it had to be cancelled or failed."""
        task = asyncio.ensure_future(step)
        budget = max(0.5, self.left() * share)
        try:
            async with asyncio.timeout(budget):
                await asyncio.shield(task)
            return True
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 1.0)
            log.error("shutdown: %s did not finish within %.1fs; going on without it", what, budget)
        except Exception:
            log.exception("shutdown: %s failed; going on", what)
        return False
