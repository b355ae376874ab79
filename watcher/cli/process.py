"""The process around a command: stop and reload signals, the garbage collector's tuning."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
from typing import Any

__all__ = [
    "install_reload_signal",
    "install_stop_signals",
    "stop_within",
    "tune_gc",
]

# what the process exits with when the watchdog ends it (EX_SOFTWARE: it did not stop in time)
EXIT_TOO_SLOW = 70


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)


STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def stop_within(stop: asyncio.Event, grace_s: float) -> None:
    """SIGTERM / SIGINT set ``stop``; if the process has not ended ``grace_s`` later (plus 5 s for
    the last steps), or at a second signal, it exits at once with code 70.

    The signals are taken by a thread of their own (``sigwait``; blocked in every other thread), not
    by the event loop: a loop stuck in a blocking call (a hung disk, a checkpoint store that does not
    answer) would never run its signal handler, and the daemon would only die of SIGKILL. Call it
    from the loop's thread before any other thread is started (they inherit the blocked signals): the
    ``watcher`` entry point (``watcher.__main__``) blocks them for ``watcher run`` before any import.
    """
    loop = asyncio.get_running_loop()
    wanted = set(STOP_SIGNALS)
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)  # ``watcher run``: already done by watcher.__main__

    def watch() -> None:
        first = signal.sigwait(wanted)
        loop.call_soon_threadsafe(stop.set)
        done = threading.Event()
        second: list[int] = []

        def again() -> None:
            second.append(signal.sigwait(wanted))
            done.set()

        threading.Thread(target=again, name="second-stop-signal", daemon=True).start()
        done.wait(grace_s + 5.0)
        why = (
            f"{signal.Signals(second[0]).name} again"
            if second
            else f"not stopped {grace_s + 5.0:g}s after {signal.Signals(first).name}"
        )
        sys.stderr.write(
            f"watcher: {why}: exiting now; what was not committed is read again at the next start\n"
        )
        sys.stderr.flush()
        os._exit(EXIT_TOO_SLOW)

    threading.Thread(target=watch, name="stop-signals", daemon=True).start()


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
