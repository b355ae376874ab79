"""The engine (layer: pure, no I/O). ``Engine.process(raws)``: one batch of raw messages in, state,
rollouts and decisions out, the same in the daemon and in ``watcher replay``. ``Tasks``: one engine
per owned partition (``checkpoint.scope: partition``) and the read view across them; ``view``: what
the readers (API, hooks, exposition) need of either (``EngineView``).
"""

from __future__ import annotations

from watcher.engine.engine import BatchResult, Engine
from watcher.engine.tasks import Tasks, partition_for, scope_of
from watcher.engine.view import EngineView, RolloutsView, SeriesView

__all__ = [
    "BatchResult",
    "Engine",
    "EngineView",
    "RolloutsView",
    "SeriesView",
    "Tasks",
    "partition_for",
    "scope_of",
]
