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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from watcher.config import SinkSettings, check_unique_names
from watcher.contract import Item, ItemKind, Severity

if TYPE_CHECKING:
    from watcher.clock import Clock
    from watcher.config import KafkaSettings

__all__ = [
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
]


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
    retry_for_s: float  # how long a delivery is retried after transient failures before it fails

    def accepts(self, item: Item) -> bool: ...

    def render(self, item: Item, state: SinkState = NULL_STATE) -> list[Request]: ...

    async def send(self, request: Request) -> Sent: ...

    async def aclose(self) -> None: ...


class NullSink:
    """Accepts nothing: a configured-but-disabled sink, and the wiring's default."""

    def __init__(self, name: str = "null") -> None:
        self.name = name
        self.timeout_s = 1.0
        self.retry_for_s = 0.0

    def accepts(self, item: Item) -> bool:
        return False

    def render(self, item: Item, state: SinkState = NULL_STATE) -> list[Request]:
        return []

    async def send(self, request: Request) -> Sent:
        return Sent()

    async def aclose(self) -> None:
        return None


# --- settings -------------------------------------------------------------------------------------


class FilteredSink:
    """Base of the concrete sinks: the settings-driven filter and delivery limits."""

    def __init__(self, settings: SinkSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.timeout_s = settings.timeout_s
        self.retry_for_s = settings.retry_for_s
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
    from watcher.sinks.grafana import GrafanaSink
    from watcher.sinks.kafka import KafkaSink
    from watcher.sinks.otel import OtelSink
    from watcher.sinks.pagerduty import PagerDutySink
    from watcher.sinks.slack import SlackSink
    from watcher.sinks.webhook import WebhookSink

    check_unique_names(settings)
    clk = clock or SystemClock()
    out: list[Sink] = []
    for s in settings:
        if s.type == "kafka":
            out.append(KafkaSink(s, producer_factory=kafka_producer_factory, kafka=kafka))
        elif s.type == "otel":
            out.append(OtelSink(s, tracer_provider=tracer_provider))
        else:
            http_cls = {
                "webhook": WebhookSink,
                "slack": SlackSink,
                "pagerduty": PagerDutySink,
                "grafana": GrafanaSink,
            }[s.type]
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
