"""The process around a command: stop and reload signals, the garbage collector's tuning."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from typing import Any

__all__ = ["install_reload_signal", "install_stop_signals", "tune_gc"]


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)


def install_reload_signal(reload: Any) -> None:
    """SIGHUP: ``reload()`` (a coroutine function) runs as a task; a failure is logged, never fatal."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[Any]] = set()  # a reference until done: the loop keeps only weak ones

    def on_hup() -> None:
        task = loop.create_task(reload())
        tasks.add(task)
        task.add_done_callback(_reload_done(tasks))

    with contextlib.suppress(NotImplementedError, AttributeError):  # no SIGHUP on Windows
        loop.add_signal_handler(signal.SIGHUP, on_hup)


def _reload_done(tasks: set[asyncio.Task[Any]]) -> Any:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logging.getLogger("watcher.service.reload").error(
                "configuration reload failed", exc_info=task.exception()
            )

    return done


def tune_gc() -> None:
    """Fewer young-generation collections: the fetch buffers and per-batch objects are short-lived,
    and the default threshold (700) makes the collector rescan them many times per batch (~20 % of
    the pipeline's CPU; docs/performance.md)."""
    gc.set_threshold(10_000, 10, 10)
