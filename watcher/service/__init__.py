"""The service (layer: wiring). ``Daemon`` builds every component from the settings and runs the
consume -> engine -> dead letters, decision log, outbox -> checkpoint -> commit loop; ``handover``
moves partition state on rebalance; ``reload`` applies a new configuration without a restart;
``telemetry`` is watcher's own Prometheus and OpenTelemetry; ``replay`` runs the engine on a file.
"""

from __future__ import annotations

from watcher.service.daemon import Daemon
from watcher.service.reload import ConfigSource
from watcher.service.replay import replay, summary_table

__all__ = [
    "ConfigSource",
    "Daemon",
    "replay",
    "summary_table",
]
