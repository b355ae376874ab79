"""The ``otlp`` settings: OpenTelemetry traces in (docs/otlp.md).

Kept apart from ``settings`` like ``hooks`` and ``sinks``: the span-to-turn mapping itself is the
contract's (``watcher.contract.SpanMapping``, ``otlp.mapping``); this slice adds how OTLP arrives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from watcher.contract import SpanMapping
from watcher.errors import ConfigError

__all__ = ["OtlpSettings"]


@dataclass(frozen=True)
class OtlpSettings:
    # read the OTLP trace requests found on the telemetry topics (and in replayed files)
    enabled: bool = True
    mapping: SpanMapping = field(default_factory=SpanMapping)
    # a larger request is rejected (too_large); the OTLP specification recommends 64 MiB
    max_message_bytes: int = 64 * 1024 * 1024
    # POST /v1/traces writes the turns it reads here, keyed by agent; None: the first telemetry topic
    http_topic: str | None = None

    def __post_init__(self) -> None:
        if self.max_message_bytes <= 0:
            raise ConfigError("otlp.max_message_bytes", f"must be > 0, got {self.max_message_bytes}")
        if self.http_topic is not None and not self.http_topic.strip():
            raise ConfigError("otlp.http_topic", "must not be empty (null: the first telemetry topic)")
