"""Settings (layer: above the contract). One frozen, typed ``Settings`` loaded once from YAML and the
environment (``settings``), with a slice per component; the Flagger hook targets (``hooks``); OTLP
traces in (``otlp``, with the contract's span-to-turn mapping); one
validation style for every settings class here and in the packages above (``validate``: frozen
msgspec structs, ``convert`` naming the dotted field of a bad value, secrets masked by ``plain``);
Kafka bootstrap addresses (``addresses``); the secret parts of URLs and free text (``redaction``).
The ``sinks:`` entries are kept as written and validated by ``watcher.sinks``, where each sink type
owns its settings. A bad value fails at load naming the field (``ConfigError``).
"""

from __future__ import annotations

from watcher.config.addresses import parse_bootstrap_servers
from watcher.config.hooks import MAX_NAME, FlaggerTarget, HooksSettings, validate_targets
from watcher.config.otlp import OtlpSettings
from watcher.config.redaction import mask_url, redact
from watcher.config.settings import (
    SINK_NAME,
    CheckpointSettings,
    HttpSettings,
    KafkaSettings,
    Settings,
    TelemetrySettings,
    Topic,
    check_sink_entries,
    load_settings,
)
from watcher.config.validate import MASK, PATTERNS, SECRET, Section, convert, plain, read_yaml, secret_values

__all__ = [
    "CheckpointSettings",
    "FlaggerTarget",
    "HooksSettings",
    "HttpSettings",
    "KafkaSettings",
    "MASK",
    "MAX_NAME",
    "OtlpSettings",
    "PATTERNS",
    "SECRET",
    "SINK_NAME",
    "Section",
    "Settings",
    "TelemetrySettings",
    "Topic",
    "check_sink_entries",
    "convert",
    "load_settings",
    "mask_url",
    "parse_bootstrap_servers",
    "plain",
    "read_yaml",
    "redact",
    "secret_values",
    "validate_targets",
]
