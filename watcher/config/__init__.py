"""Settings (layer: above the contract). One frozen, typed ``Settings`` loaded once from YAML and the
environment (``settings``), with a slice per component; the ``sinks:`` entries (``sinks``) and the
Flagger hook targets (``hooks``); Kafka bootstrap addresses (``addresses``); secrets masked
(``secret``). A bad value fails at load naming the field (``ConfigError``).
"""

from __future__ import annotations

from watcher.config.addresses import parse_bootstrap_servers
from watcher.config.hooks import MAX_NAME, FlaggerTarget, HooksSettings, validate_targets
from watcher.config.secret import MASK, mask_url, redact, secret_values
from watcher.config.settings import HttpSettings, KafkaSettings, Settings, TelemetrySettings, load_settings
from watcher.config.sinks import SinkSettings, check_unique_names

__all__ = [
    "FlaggerTarget",
    "HooksSettings",
    "HttpSettings",
    "KafkaSettings",
    "MASK",
    "MAX_NAME",
    "Settings",
    "SinkSettings",
    "TelemetrySettings",
    "check_unique_names",
    "load_settings",
    "mask_url",
    "parse_bootstrap_servers",
    "redact",
    "secret_values",
    "validate_targets",
]
