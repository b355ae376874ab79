"""The engine (layer: pure, no I/O). ``Engine.process(raws)``: one batch of raw messages in, state,
rollouts and decisions out, the same in the daemon and in ``watcher replay``. ``history``: each
rollout's evidence over time (``EvidenceHistory``; ``RolloutHistory`` is what the report draws).
``Tasks``: one engine per owned partition (``checkpoint.scope: partition``) and the read view across them.
"""

from __future__ import annotations

from watcher.engine.engine import BatchResult, Engine
from watcher.engine.history import EvidenceHistory, EvidencePoint, RolloutHistory, Row
from watcher.engine.tasks import Tasks, partition_for, scope_of

__all__ = [
    "BatchResult",
    "Engine",
    "EvidenceHistory",
    "EvidencePoint",
    "RolloutHistory",
    "Row",
    "Tasks",
    "partition_for",
    "scope_of",
]
