"""Push sinks (layer: I/O). A ``Sink`` renders an outbox ``Item`` into requests and sends them:
``webhook`` (HMAC-signed), ``slack``, ``pagerduty``, ``grafana``, ``kafka``, ``otel``, each module with
its own settings class and ``SinkType``; ``registry`` lists the types (other packages add theirs
through the ``watcher.sinks`` entry point group), validates the ``sinks:`` entries
(``sink_settings``: an unknown type is a ``ConfigError`` listing the known ones) and builds them
(``build_sinks``).
"""

from __future__ import annotations

from watcher.sinks.base import NullSink, Sink, SinkContext, SinkSettings, SinkType
from watcher.sinks.registry import ENTRY_POINT_GROUP, build_sinks, find_type, known_types, sink_settings

__all__ = [
    "ENTRY_POINT_GROUP",
    "NullSink",
    "Sink",
    "SinkContext",
    "SinkSettings",
    "SinkType",
    "build_sinks",
    "find_type",
    "known_types",
    "sink_settings",
]
