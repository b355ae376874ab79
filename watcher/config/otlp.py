"""The ``otlp`` settings: OpenTelemetry traces in (docs/otlp.md).

Kept apart from ``settings`` like ``hooks``: the span-to-turn mapping itself is the contract's
(``watcher.contract.SpanMapping``, ``otlp.mapping``); this slice adds how OTLP arrives.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from watcher.config.validate import TOPIC_PATTERN, Section
from watcher.contract import SpanMapping

__all__ = ["OtlpSettings"]


class OtlpSettings(Section, frozen=True):
    # read the OTLP trace requests found on the telemetry topics (and in replayed files)
    enabled: bool = True
    mapping: SpanMapping = msgspec.field(default_factory=SpanMapping)
    # a larger request is rejected (too_large; 413 over HTTP); the OTLP specification recommends 64 MiB
    max_message_bytes: Annotated[int, Meta(gt=0)] = 64 * 1024 * 1024
    # POST /v1/traces writes the turns it reads here, keyed by agent; None: the first telemetry topic
    http_topic: Annotated[str, Meta(pattern=TOPIC_PATTERN)] | None = None
