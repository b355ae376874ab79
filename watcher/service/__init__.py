"""The service (layer: wiring). ``compose.build_daemon`` builds every component from the settings (the
composition root; tests pass their own parts); ``Daemon`` runs the consume -> engine -> dead letters,
decision log, outbox -> checkpoint -> commit loop; ``partitions`` keeps the checkpoints and answers
rebalances; ``handover`` moves partition state on rebalance; ``markers`` republishes HTTP markers;
``reload`` applies a new configuration without a restart; ``telemetry`` is watcher's own Prometheus
and OpenTelemetry; ``replay`` runs the engine on a file.
"""

from __future__ import annotations

from watcher.service.compose import build_daemon
from watcher.service.daemon import Daemon, Parts
from watcher.service.reload import ConfigSource
from watcher.service.replay import replay, summary_table

__all__ = [
    "ConfigSource",
    "Daemon",
    "Parts",
    "build_daemon",
    "replay",
    "summary_table",
]
