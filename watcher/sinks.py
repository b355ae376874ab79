"""Push sinks: what the outbox delivers, to whom, and the settings that configure them.

A sink turns an outbox ``Item`` (a decision, a rollout change or a drift signal) into one or more
``Request``s and sends each of them. The outbox (``watcher.outbox``) owns durability, ordering,
retries and metrics; a sink only knows its wire format:

* ``accepts(item)``   filter by kind, agent, environment and minimum severity (at enqueue time);
* ``render(item, state)``  pure: the requests for one item; called again before every attempt, so it
  may read per-sink state that an earlier delivery stored (a Grafana region id, an open PagerDuty
  incident) through ``state`` (``SinkState``, kept in the outbox's SQLite file);
* ``send(request)``   one network call; raises ``SinkError(permanent=..., retry_after=...)``; returns a
  ``Sent`` whose ``state`` the outbox stores under ``request.remember`` when that is set;
* ``aclose()``        releases connections at shutdown.

Implementations: ``sink_http`` (webhook), ``sink_slack``, ``sink_pagerduty``, ``sink_grafana``,
``sink_kafka``, ``sink_otel``; ``NullSink`` accepts nothing. ``build_sinks`` makes them from
``SinkSettings`` (unknown types are a ``ConfigError``, never a silent fallback).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from watcher.secret import secret
from watcher.errors import ConfigError

if TYPE_CHECKING:
    from watcher.clock import Clock
    from watcher.config import KafkaSettings

__all__ = [
    "SINK_TYPES",
    "Item",
    "ItemKind",
    "NullSink",
    "NullSinkState",
    "Request",
    "Sent",
    "Severity",
    "Sink",
    "SinkSettings",
    "SinkState",
    "build_sinks",
    "check_unique_names",
]


class ItemKind(str, Enum):
    DECISION = "decision"  # watcher.decision/v1
    MARKER = "marker"  # watcher.rollout_change/v1: a rollout started, changed or ended
    DRIFT = "drift"  # watcher.drift/v1


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2, Severity.CRITICAL: 3}


@dataclass(frozen=True, slots=True)
class Item:
    """One thing to deliver. ``record`` is the JSON record receivers get (decision, change, drift)."""

    kind: ItemKind
    item_id: str  # decision_id, change_id or signal_id: stable under replay
    record: dict[str, Any]
    agent_id: str
    environment: str
    severity: Severity
    ts: float  # event time

    def to_json(self) -> str:
        return json.dumps(
            {"v": 1, "kind": self.kind.value, "item_id": self.item_id, "record": self.record,
             "agent_id": self.agent_id, "environment": self.environment, "severity": self.severity.value,
             "ts": self.ts},
            sort_keys=True, separators=(",", ":"), allow_nan=False,
        )

    @classmethod
    def from_json(cls, text: str) -> Item:
        d = json.loads(text)
        if d.get("v") != 1:
            raise ValueError(f"unsupported outbox item version {d.get('v')!r}")
        return cls(ItemKind(d["kind"]), d["item_id"], d["record"], d["agent_id"], d["environment"],
                   Severity(d["severity"]), float(d["ts"]))


@dataclass(frozen=True, slots=True)
class Request:
    """One network call of one delivery. ``kind`` is unique within (item, sink): with the item id and
    the sink name it makes the idempotency key, and the outbox records which kinds are done so a
    retry never repeats a call that already succeeded."""

    kind: str
    method: str = "POST"
    url: str = ""  # HTTP URL, or the Kafka topic
    body: Any = None  # JSON-safe payload
    headers: tuple[tuple[str, str], ...] = ()
    key: str | None = None  # Kafka message key
    remember: str | None = None  # store the response's ``Sent.state`` under this state key
    idempotency_key: str = ""  # filled in by the outbox


@dataclass(frozen=True, slots=True)
class Sent:
    status: int | None = None  # HTTP status, None for non-HTTP sinks
    state: Any = None  # JSON-safe value to remember (e.g. a Grafana annotation id)
    detail: str = ""


class SinkState(Protocol):
    """Per-sink key/value state that survives restarts (JSON values)."""

    def get(self, key: str) -> Any: ...

    def put(self, key: str, value: Any) -> None: ...


class NullSinkState:
    def get(self, key: str) -> Any:
        return None

    def put(self, key: str, value: Any) -> None:
        return None


NULL_STATE = NullSinkState()


class Sink(Protocol):
    name: str
    timeout_s: float  # per request; the outbox enforces it
    max_attempts: int

    def accepts(self, item: Item) -> bool: ...

    def render(self, item: Item, state: SinkState = NULL_STATE) -> list[Request]: ...

    async def send(self, request: Request) -> Sent: ...

    async def aclose(self) -> None: ...


class NullSink:
    """Accepts nothing: a configured-but-disabled sink, and the wiring's default."""

    def __init__(self, name: str = "null") -> None:
        self.name = name
        self.timeout_s = 1.0
        self.max_attempts = 1

    def accepts(self, item: Item) -> bool:
        return False

    def render(self, item: Item, state: SinkState = NULL_STATE) -> list[Request]:
        return []

    async def send(self, request: Request) -> Sent:
        return Sent()

    async def aclose(self) -> None:
        return None


# --- settings -------------------------------------------------------------------------------------

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
PAGERDUTY_URL = "https://events.pagerduty.com"


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
    max_attempts: int = 20  # with the default backoff (1 s doubling, capped at 5 min) ~1 h of retries
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
            raise ConfigError(f"{where}.url", f"must be an http(s) URL, got {self.url!r}")
        required = {"webhook": "hmac_secret", "pagerduty": "routing_key", "grafana": "token"}.get(self.type)
        if required and not getattr(self, required):
            raise ConfigError(f"{where}.{required}", f"is required for a {self.type} sink")
        if self.type == "kafka" and not self.topic:
            raise ConfigError(f"{where}.topic", "is required for a kafka sink")
        if self.min_severity not in [s.value for s in Severity]:
            raise ConfigError(f"{where}.min_severity", f"must be one of info, warning, error, critical; "
                                                       f"got {self.min_severity!r}")
        if self.pause_severity not in ("warning", "error"):
            raise ConfigError(f"{where}.pause_severity", f"must be warning or error; got {self.pause_severity!r}")
        for k in self.kinds:
            if k not in [i.value for i in ItemKind]:
                raise ConfigError(f"{where}.kinds", f"unknown kind {k!r} (known: decision, marker, drift)")
        if self.timeout_s <= 0:
            raise ConfigError(f"{where}.timeout_s", f"must be > 0, got {self.timeout_s}")
        if self.max_attempts < 1:
            raise ConfigError(f"{where}.max_attempts", f"must be >= 1, got {self.max_attempts}")
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


class FilteredSink:
    """Base of the concrete sinks: the settings-driven filter and delivery limits."""

    def __init__(self, settings: SinkSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.timeout_s = settings.timeout_s
        self.max_attempts = settings.max_attempts
        self._kinds = settings.effective_kinds
        self._agents = frozenset(settings.agents)
        self._environments = frozenset(settings.environments)
        self._min_rank = Severity(settings.min_severity).rank

    def accepts(self, item: Item) -> bool:
        return (
            item.kind in self._kinds
            and (not self._agents or item.agent_id in self._agents)
            and (not self._environments or item.environment in self._environments)
            and item.severity.rank >= self._min_rank
        )

    async def aclose(self) -> None:
        return None


def build_sinks(
    settings: Sequence[SinkSettings],
    *,
    session_factory: Callable[[], Any] | None = None,
    kafka_producer_factory: Callable[..., Any] | None = None,
    clock: Clock | None = None,
    tracer_provider: Any = None,
    kafka: KafkaSettings | None = None,
) -> list[Sink]:
    """The sinks for the configured settings, in order.

    ``session_factory`` makes an ``aiohttp.ClientSession`` (one per HTTP sink, created on first use
    inside the loop); ``kafka_producer_factory(**options)`` an ``AIOKafkaProducer``; ``kafka`` gives a
    kafka sink without ``bootstrap_servers`` the daemon's broker and security options;
    ``tracer_provider`` is the OpenTelemetry provider of the otel sink (None: the global one).
    """
    # imported here: the sink modules import this one for the base types
    from watcher.clock import SystemClock
    from watcher.sink_grafana import GrafanaSink
    from watcher.sink_http import WebhookSink
    from watcher.sink_kafka import KafkaSink
    from watcher.sink_otel import OtelSink
    from watcher.sink_pagerduty import PagerDutySink
    from watcher.sink_slack import SlackSink

    check_unique_names(settings)
    clk = clock or SystemClock()
    out: list[Sink] = []
    for s in settings:
        if s.type == "kafka":
            out.append(KafkaSink(s, producer_factory=kafka_producer_factory, kafka=kafka))
        elif s.type == "otel":
            out.append(OtelSink(s, tracer_provider=tracer_provider))
        else:
            http_cls = {"webhook": WebhookSink, "slack": SlackSink, "pagerduty": PagerDutySink,
                        "grafana": GrafanaSink}[s.type]
            out.append(http_cls(s, session_factory=session_factory, clock=clk))
    return out


def links(settings: SinkSettings, record: dict[str, Any]) -> list[tuple[str, str]]:
    """(text, url) links for a record: the rollout in watcher's API and the dashboard."""
    rollout = record.get("rollout") or {}
    rollout_id = rollout.get("rollout_id") or ""
    agent = rollout.get("agent_id") or record.get("agent_id") or ""
    env = rollout.get("environment") or record.get("environment") or ""
    out: list[tuple[str, str]] = []
    if settings.api_url:
        base = settings.api_url.rstrip("/")
        if rollout_id:
            out.append(("Rollout in watcher", f"{base}/v1/rollouts/{rollout_id}"))
            out.append(("Decisions", f"{base}/v1/decisions?rollout_id={rollout_id}"))
        elif agent:
            out.append(("Drift signals", f"{base}/v1/drift?agent_id={agent}&environment={env}"))
    if settings.dashboard_url:
        url = settings.dashboard_url.format_map(
            _Blank(agent_id=agent, environment=env, rollout_id=rollout_id)
        )
        out.append(("Dashboard", url))
    return out


class _Blank(dict):  # type: ignore[type-arg]
    """format_map that leaves unknown placeholders empty instead of raising at send time."""

    def __missing__(self, key: str) -> str:
        return ""


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"

