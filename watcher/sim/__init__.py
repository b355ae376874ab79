"""The simulator (layer: beside the service). ``scenario`` (the model: arms, regressions, segments),
``traffic`` (the seeded generator), ``presets`` (named scenarios) and ``simulate`` (``watcher
simulate``: JSON Lines out or produced to Kafka).
"""

from __future__ import annotations

from watcher.sim.presets import PRESETS
from watcher.sim.simulate import produce

__all__ = [
    "PRESETS",
    "produce",
]
