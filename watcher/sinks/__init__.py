"""Push sinks (layer: I/O). A ``Sink`` renders an outbox ``Item`` into requests and sends them:
``webhook`` (HMAC-signed), ``slack``, ``pagerduty``, ``grafana``, ``kafka``, ``otel``; ``build_sinks``
makes them from the settings (an unknown type is a ``ConfigError``).
"""

from __future__ import annotations

from watcher.sinks.base import Sink, build_sinks

__all__ = [
    "Sink",
    "build_sinks",
]
