"""``python -m watcher`` and the ``watcher`` command.

For ``watcher run`` SIGTERM and SIGINT are blocked here, before anything is imported: importing the
command line starts native threads (numpy's BLAS pool), and a thread that does not block them would
take a signal meant for the daemon and end the process without its shutdown. Every thread inherits
the mask; one thread of the daemon's own waits for the signals (``watcher.cli.process.stop_within``),
so SIGTERM ends the daemon within its grace even while its event loop is stuck.
"""

from __future__ import annotations

import signal
import sys


def command_of(argv: list[str]) -> str | None:
    """The sub-command of a ``watcher`` command line: the first word that is not an option or the
    value of ``--config`` (the parser itself cannot be imported yet)."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == "--config":
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if command_of(args) == "run":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    from watcher.cli import main as cli  # after the signal mask: every thread it starts inherits it

    return cli(args)


if __name__ == "__main__":
    sys.exit(main())
