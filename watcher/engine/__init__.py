"""The engine (layer: pure, no I/O). ``Engine.process(raws)``: one batch of raw messages in, state,
rollouts and decisions out, the same in the daemon and in ``watcher replay``. ``history``: each
rollout's evidence over time (``EvidenceHistory``; ``RolloutHistory`` is what the report draws).
``coverage``: what each rollout's judge can use of its traffic, and why it is not judged (``Unjudged``).
``Tasks``: one engine per owned partition (``checkpoint.scope: partition``) and the read view across
them; ``view``: what the readers (API, hooks, exposition) need of either (``EngineView``).
"""

from __future__ import annotations

from watcher.engine.coverage import Coverage, Unjudged, Unused
from watcher.engine.engine import BatchResult, Engine
from watcher.engine.history import EvidenceHistory, EvidencePoint, RolloutHistory, Row
from watcher.engine.tasks import Tasks, partition_for, scope_of
from watcher.engine.view import EngineView, RolloutsView, SeriesView

__all__ = [
    "BatchResult",
    "Coverage",
    "Engine",
    "EngineView",
    "EvidenceHistory",
    "EvidencePoint",
    "RolloutHistory",
    "RolloutsView",
    "Row",
    "SeriesView",
    "Tasks",
    "Unjudged",
    "Unused",
    "partition_for",
    "scope_of",
]
