"""watcher: the safety net between the deployer and the customers of live AI agents."""

from __future__ import annotations

__version__ = "0.1.0"
