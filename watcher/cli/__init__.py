"""The commands (layer: top). ``main`` parses ``watcher run | check-config | replay | simulate | demo``;
``demo`` runs the whole loop on an embedded broker; ``process`` holds the signal and GC set-up of a
long-running command. Imports anything below it; nothing imports it.
"""

from __future__ import annotations

from watcher.cli.main import main

__all__ = [
    "main",
]
