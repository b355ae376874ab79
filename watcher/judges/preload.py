"""The heavy libraries the judges import lazily, imported ahead of need.

river (with the scipy.stats it loads) and scipy.special take seconds to import on a busy machine.
They are imported where first used, so that commands which judge nothing start fast
(tests/cli/test_startup.py). In the daemon, "first used" is the first drift detector or the first
sequential look, in the middle of a batch on the event loop: ``/healthz`` and the deployer hooks
waited behind the import. The daemon calls ``preload`` in a worker thread as it starts instead.
"""

from __future__ import annotations

import importlib

__all__ = ["HEAVY", "preload"]

# what watcher.judges and watcher.stats import lazily (river.drift loads scipy.stats)
HEAVY = ("scipy.special", "scipy.stats", "river.drift")


def preload() -> None:
    """Import ``HEAVY`` now (any thread: Python's import lock makes a concurrent first use wait for it)."""
    for name in HEAVY:
        importlib.import_module(name)
