"""The ``sinks:`` settings: one ``SinkSettings`` per push sink, validated at load naming the field."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from watcher.config.addresses import parse_bootstrap_servers
from watcher.config.secret import mask_url, secret
from watcher.contract import ItemKind, Severity
from watcher.errors import ConfigError

__all__ = ["DEFAULT_KINDS", "SINK_TYPES", "SinkSettings", "check_unique_names"]


SINK_TYPES: tuple[str, ...] = ("kafka", "webhook", "slack", "pagerduty", "grafana", "otel")
# what each type carries unless `kinds` says otherwise
DEFAULT_KINDS: dict[str, tuple[str, ...]] = {
    "kafka": ("decision", "marker", "drift"),
    "webhook": ("decision",),
    "slack": ("decision",),
    "pagerduty": ("decision", "marker"),
    "grafana": ("decision", "marker"),
    "otel": ("decision", "marker", "drift"),
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # a metric label value and a state key prefix
_NEEDS_URL = ("webhook", "slack", "grafana")


@dataclass(frozen=True)
class SinkSettings:
    """One push sink (``sinks:`` in the config file is a list of these).

    Validation errors name the field as ``sinks[<name>].<field>``: the loader builds each entry on
    its own, so the index is not known here, and the name is what an operator searches for.
    """

    name: str = ""
    type: str = ""
    url: str | None = None  # webhook / Slack URL; Grafana / PagerDuty base URL
    hmac_secret: str | None = secret()  # webhook signing key
    routing_key: str | None = secret()  # PagerDuty integration key
    token: str | None = secret()  # Grafana service-account token
    # kafka
    bootstrap_servers: str | None = None  # None: the daemon's kafka.bootstrap_servers
    topic: str = "watcher.decisions"
    markers_topic: str = "watcher.rollout-changes"
    drift_topic: str | None = None  # None: drift signals go to `topic` (their `schema` tells them apart)
    # filters
    agents: tuple[str, ...] = ()  # empty: every agent
    environments: tuple[str, ...] = ()
    min_severity: str = "info"  # info < warning < error < critical
    kinds: tuple[str, ...] = ()  # decision, marker, drift; empty: the type's default
    # delivery
    timeout_s: float = 10.0
    # a delivery that keeps failing transiently (5xx, timeouts, connection errors) is retried for this
    # long, not counting the time a receiver asked to wait (Retry-After); then it ends `failed`, kept
    # and re-drivable (POST /v1/deliveries/{id}/retry). Three days: a receiver down over a weekend.
    retry_for_s: float = 3 * 86_400.0
    max_attempts: int | None = None  # replaced by retry_for_s: set, it is an error naming the change
    # links and presentation
    api_url: str | None = None  # watcher's own external URL, for links in messages
    dashboard_url: str | None = None  # may hold {agent_id}, {environment}, {rollout_id}
    pause_severity: str = "warning"  # PagerDuty severity of a pause (rollback is always critical)
    source: str | None = None  # PagerDuty payload.source; None: "watcher/<agent>/<environment>"
    dashboard_uid: str | None = None  # Grafana: attach annotations to this dashboard (None: organisation)
    panel_id: int | None = None
    tags: tuple[str, ...] = ()  # extra Grafana tags
    max_evidence_rows: int = 8  # Slack: evidence rows shown (failing rows first)

    def __post_init__(self) -> None:
        where = f"sinks[{self.name}]" if self.name else "sinks[?]"
        if not _NAME.match(self.name or ""):
            raise ConfigError(f"{where}.name", "is required: 1-64 of letters, digits, '_', '.', '-'")
        if self.type not in SINK_TYPES:
            raise ConfigError(f"{where}.type", f"must be one of {', '.join(SINK_TYPES)}; got {self.type!r}")
        if self.type in _NEEDS_URL and not self.url:
            raise ConfigError(f"{where}.url", f"is required for a {self.type} sink")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.url", f"must be an http(s) URL, got {mask_url(self.url)!r}")
        required = {"webhook": "hmac_secret", "pagerduty": "routing_key", "grafana": "token"}.get(self.type)
        if required and not getattr(self, required):
            raise ConfigError(f"{where}.{required}", f"is required for a {self.type} sink")
        if self.bootstrap_servers is not None:
            parse_bootstrap_servers(self.bootstrap_servers, f"{where}.bootstrap_servers")
        if self.type == "kafka" and not self.topic:
            raise ConfigError(f"{where}.topic", "is required for a kafka sink")
        if self.min_severity not in [s.value for s in Severity]:
            raise ConfigError(
                f"{where}.min_severity",
                f"must be one of info, warning, error, critical; got {self.min_severity!r}",
            )
        if self.pause_severity not in ("warning", "error"):
            raise ConfigError(
                f"{where}.pause_severity", f"must be warning or error; got {self.pause_severity!r}"
            )
        for k in self.kinds:
            if k not in [i.value for i in ItemKind]:
                raise ConfigError(f"{where}.kinds", f"unknown kind {k!r} (known: decision, marker, drift)")
        if self.timeout_s <= 0:
            raise ConfigError(f"{where}.timeout_s", f"must be > 0, got {self.timeout_s}")
        if self.max_attempts is not None:
            raise ConfigError(
                f"{where}.max_attempts",
                "was replaced by retry_for_s (seconds a delivery is retried; default 259200, three days): "
                "a count of attempts gave up within seconds when a receiver answered 429 with a short "
                "Retry-After",
            )
        if not 0 < self.retry_for_s < float("inf"):
            raise ConfigError(f"{where}.retry_for_s", f"must be > 0 seconds, got {self.retry_for_s}")
        for tag in self.tags:
            if not 0 < len(tag) <= 100:  # Grafana keeps tags of at most 100 characters
                raise ConfigError(f"{where}.tags", f"a tag must have 1-100 characters, got {len(tag)}")
        if self.max_evidence_rows < 1:
            raise ConfigError(f"{where}.max_evidence_rows", f"must be >= 1, got {self.max_evidence_rows}")

    @property
    def effective_kinds(self) -> frozenset[ItemKind]:
        return frozenset(ItemKind(k) for k in (self.kinds or DEFAULT_KINDS[self.type]))


def check_unique_names(sinks: Sequence[SinkSettings]) -> None:
    """Sink names key the outbox rows and metrics: two sinks must not share one."""
    seen: set[str] = set()
    for i, s in enumerate(sinks):
        if s.name in seen:
            raise ConfigError(f"sinks[{i}].name", f"duplicate sink name {s.name!r}")
        seen.add(s.name)
