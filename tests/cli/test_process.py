"""The process around ``watcher run``: SIGTERM ends it within its grace even when the loop is stuck."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

# A loop stuck in a blocking call (a hung disk, a store that does not answer): its own signal handlers
# never run. The watchdog thread of ``stop_within`` ends the process anyway.
STUCK = """
import asyncio, signal, sys, time
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # as watcher.__main__ does
from watcher.cli.process import stop_within

async def main():
    stop = asyncio.Event()
    stop_within(stop, 1.0)
    print("ready", flush=True)
    time.sleep(60)  # the loop never gets control back

asyncio.run(main())
"""

# A loop that answers: SIGTERM sets the stop event and the program ends normally.
RESPONSIVE = """
import asyncio, signal
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
from watcher.cli.process import stop_within

async def main():
    stop = asyncio.Event()
    stop_within(stop, 30.0)
    print("ready", flush=True)
    await stop.wait()
    print("stopped", flush=True)

asyncio.run(main())
"""


def _start(code: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_sigterm_ends_a_stuck_process_within_its_grace() -> None:
    proc = _start(STUCK)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=20)
    assert code == 70 and 5.0 <= time.monotonic() - started < 10.0  # grace 1 s + 5 s for the last steps
    assert "not stopped 6s after SIGTERM" in proc.stderr.read()  # type: ignore[union-attr]


def test_a_second_signal_ends_it_at_once() -> None:
    proc = _start(STUCK)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 70 and time.monotonic() - started < 2.0
    assert "SIGINT again" in proc.stderr.read()  # type: ignore[union-attr]


def test_a_responsive_loop_stops_normally() -> None:
    proc = _start(RESPONSIVE)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert proc.stdout.read().strip() == "stopped"  # type: ignore[union-attr]


def test_the_entry_point_finds_the_command_without_its_parser() -> None:
    """(test_daemon.py::test_watcher_run_exits_zero_on_sigterm checks the mask itself, end to end.)"""
    from watcher.__main__ import command_of

    assert command_of(["run"]) == "run"
    assert command_of(["--config", "run.yaml", "run", "--http-port", "1"]) == "run"
    assert command_of(["--config", "run"]) is None
    assert command_of(["replay", "run"]) == "replay"
