"""The service (layer: wiring). ``compose.build_daemon`` builds every component from the settings (the
composition root; tests pass their own parts); ``Daemon`` runs the consume -> engine -> dead letters,
decision log, outbox -> checkpoint -> commit loop; ``partitions`` keeps the checkpoints and answers
rebalances; ``handover`` moves partition state on rebalance; ``markers`` republishes HTTP markers;
``reload`` applies a new configuration without a restart; ``telemetry`` is watcher's own Prometheus
and OpenTelemetry; ``replay`` runs the engine on a file; ``gate`` and ``gate_report``: ``watcher
gate``, a candidate judged against a baseline on files, and its reports.
"""

from __future__ import annotations

from watcher.service.compose import build_daemon
from watcher.service.daemon import Daemon, Parts
from watcher.service.gate import GateInput, GateRequest, GateRun, run_gate
from watcher.service.gate import files as gate_files
from watcher.service.gate import load as load_gate_input
from watcher.service.gate_report import junit as gate_junit
from watcher.service.gate_report import markdown as gate_markdown
from watcher.service.reload import ConfigSource
from watcher.service.replay import replay, summary_table

__all__ = [
    "ConfigSource",
    "Daemon",
    "GateInput",
    "GateRequest",
    "GateRun",
    "Parts",
    "build_daemon",
    "gate_files",
    "gate_junit",
    "gate_markdown",
    "load_gate_input",
    "replay",
    "run_gate",
    "summary_table",
]
