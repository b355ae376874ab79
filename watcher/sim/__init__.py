"""The simulator (layer: beside the service). ``scenario`` (the model: arms, regressions, segments),
``traffic`` (the seeded generator), ``plan`` (what a scenario fixes once, and the JSON lines),
``presets`` (named scenarios) and ``simulate`` (``watcher simulate``: JSON Lines out or produced to
Kafka).
"""

from __future__ import annotations

from watcher.sim.presets import PRESETS
from watcher.sim.simulate import add_arguments as add_simulate_arguments
from watcher.sim.simulate import produce
from watcher.sim.simulate import run as run_simulate

__all__ = [
    "PRESETS",
    "add_simulate_arguments",
    "produce",
    "run_simulate",
]
