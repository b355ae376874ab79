"""The service (layer: wiring). ``compose.build_daemon`` builds every component from the settings (the
composition root; tests pass their own parts); ``Daemon`` runs the consume -> engine -> dead letters,
decision log, outbox -> checkpoint -> commit loop; ``partitions`` keeps the checkpoints and answers
rebalances; ``handover`` moves partition state on rebalance; ``markers`` republishes HTTP markers;
``reload`` applies a new configuration without a restart (``Reloader``); ``grace`` bounds the
shutdown in time; ``looplag`` measures how late the event loop runs; ``telemetry`` is watcher's own
Prometheus and OpenTelemetry, ``series_text`` the per-series families kept as text and redone per
changed agent, ``exposition`` ``GET /metrics`` built without holding the event loop; ``replay`` runs
the engine on a file; ``gate``, ``gate_report`` and ``gate_marker``: ``watcher gate``, a candidate
judged against a baseline on files or a time range of a topic, its reports, and its verdict as a
deployment marker.
"""

from __future__ import annotations

from watcher.service.compose import build_daemon
from watcher.service.daemon import Daemon, Parts
from watcher.service.gate import (
    GateInput,
    GateRequest,
    GateRun,
    gate_files,
    gate_kafka_range,
    load_gate_input,
    run_gate,
)
from watcher.service.gate_marker import gate_marker, record_marker
from watcher.service.gate_report import gate_html, gate_junit, gate_markdown
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
    "gate_html",
    "gate_junit",
    "gate_kafka_range",
    "gate_markdown",
    "gate_marker",
    "load_gate_input",
    "record_marker",
    "replay",
    "run_gate",
    "summary_table",
]
