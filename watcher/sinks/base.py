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

Each sink module owns its settings class (a ``SinkSettings`` tagged with the type's name) and declares
a ``SinkType`` (settings class + builder); ``watcher.sinks.registry`` finds the type of a ``sinks:``
entry, validates the entry against its settings class and builds the sink with the side effects of a
``SinkContext``. ``NullSink`` accepts nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, Protocol, TypeVar

from msgspec import Meta

from watcher.clock import Clock, SystemClock
from watcher.config import PATTERNS, SINK_NAME, Section
from watcher.contract import Item, ItemKind, Severity
from watcher.errors import ConfigError

if TYPE_CHECKING:
    from watcher.config import KafkaSettings

__all__ = [
    "NULL_STATE",
    "FilteredSink",
    "HttpUrl",
    "NullSink",
    "NullSinkState",
    "Request",
    "Sent",
    "Sink",
    "SinkContext",
    "SinkSettings",
    "SinkState",
    "SinkType",
    "links",
    "truncate",
]

PATTERNS[SINK_NAME.pattern] = "must be 1-64 of letters, digits, '_', '.', '-'"
HttpUrl = Annotated[str, Meta(pattern=r"^https?://")]


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


# --- settings ---------------------------------------------------------------------------------


class SinkSettings(Section, tag_field="type", frozen=True):
    """What every sink has: a name, which items it carries, how long a delivery is tried.

    Each sink type's settings class extends this one with its own options and names its type as the
    tag (the ``type`` of a ``sinks:`` entry), e.g.
    ``class WebhookSettings(SinkSettings, tag="webhook", frozen=True, kw_only=True)``. Validated by
    ``watcher.sinks.registry`` naming the field as ``sinks[<name>].<field>`` (the name is what an
    operator searches for)."""

    name: Annotated[str, Meta(pattern=SINK_NAME.pattern)]
    agents: tuple[str, ...] = ()  # empty: every agent
    environments: tuple[str, ...] = ()
    min_severity: Severity = Severity.INFO  # info < warning < error < critical
    kinds: tuple[ItemKind, ...] = ()  # decision, marker, drift; empty: the type's DEFAULT_KINDS
    timeout_s: Annotated[float, Meta(gt=0)] = 10.0
    # a delivery that keeps failing transiently (5xx, timeouts, connection errors) is retried for this
    # long, not counting the time a receiver asked to wait (Retry-After); then it ends `failed`, kept
    # and re-drivable (POST /v1/deliveries/{id}/retry). Three days: a receiver down over a weekend.
    retry_for_s: Annotated[float, Meta(gt=0)] = 3 * 86_400.0

    DEFAULT_KINDS: ClassVar[tuple[ItemKind, ...]] = (ItemKind.DECISION,)  # what the type carries
    # options of earlier versions, refused with what replaced them (rather than "unknown setting")
    RETIRED: ClassVar[dict[str, str]] = {
        "max_attempts": "was replaced by retry_for_s (seconds a delivery is retried; default 259200, three "
        "days): a count of attempts gave up within seconds when a receiver answered 429 with a short "
        "Retry-After",
    }

    def __post_init__(self) -> None:
        if not math.isfinite(self.retry_for_s):
            raise ConfigError(
                f"sinks[{self.name}].retry_for_s", f"must be > 0 seconds, got {self.retry_for_s}"
            )

    @property
    def type(self) -> str:
        return str(self.__struct_config__.tag)

    @property
    def effective_kinds(self) -> frozenset[ItemKind]:
        return frozenset(self.kinds or self.DEFAULT_KINDS)


@dataclass(frozen=True)
class SinkContext:
    """The side effects a sink may need, given by whoever builds the sinks (the composition root,
    tests): ``session_factory`` makes an ``aiohttp.ClientSession`` (one per HTTP sink, created on
    first use inside the loop); ``producer_factory(**options)`` an ``AIOKafkaProducer``; ``kafka`` is
    the daemon's broker and security options (a kafka sink without ``bootstrap_servers`` uses them);
    ``tracer_provider`` is the OpenTelemetry provider of the otel sink (None: the global one)."""

    kafka: KafkaSettings | None = None
    session_factory: Callable[[], Any] | None = None
    producer_factory: Callable[..., Any] | None = None
    clock: Clock = field(default_factory=SystemClock)
    tracer_provider: Any = None


@dataclass(frozen=True)
class SinkType:
    """One kind of sink: its settings class (tagged with the type's name) and how to build a sink
    from those settings. A sink module declares one; ``watcher.sinks.registry`` lists the built-in
    ones, and other packages add theirs through the ``watcher.sinks`` entry point group."""

    settings: type[SinkSettings]
    build: Callable[[Any, SinkContext], Sink]

    @property
    def name(self) -> str:
        return str(self.settings.__struct_config__.tag)


S = TypeVar("S", bound=SinkSettings)


class FilteredSink(Generic[S]):
    """Base of the concrete sinks: the settings-driven filter and delivery limits."""

    def __init__(self, settings: S) -> None:
        self.settings = settings
        self.name = settings.name
        self.timeout_s = settings.timeout_s
        self.retry_for_s = settings.retry_for_s
        self._kinds = settings.effective_kinds
        self._agents = frozenset(settings.agents)
        self._environments = frozenset(settings.environments)
        self._min_rank = settings.min_severity.rank

    def accepts(self, item: Item) -> bool:
        return (
            item.kind in self._kinds
            and (not self._agents or item.agent_id in self._agents)
            and (not self._environments or item.environment in self._environments)
            and item.severity.rank >= self._min_rank
        )

    async def aclose(self) -> None:
        return None


def links(api_url: str | None, dashboard_url: str | None, record: dict[str, Any]) -> list[tuple[str, str]]:
    """(text, url) links for a record: the rollout in watcher's API (``api_url``: watcher's own
    external URL) and the dashboard (``dashboard_url`` may hold {agent_id}, {environment}, {rollout_id})."""
    rollout = record.get("rollout") or {}
    rollout_id = rollout.get("rollout_id") or ""
    agent = rollout.get("agent_id") or record.get("agent_id") or ""
    env = rollout.get("environment") or record.get("environment") or ""
    out: list[tuple[str, str]] = []
    if api_url:
        base = api_url.rstrip("/")
        if rollout_id:
            out.append(("Rollout in watcher", f"{base}/v1/rollouts/{rollout_id}"))
            out.append(("Decisions", f"{base}/v1/decisions?rollout_id={rollout_id}"))
        elif agent:
            out.append(("Drift signals", f"{base}/v1/drift?agent_id={agent}&environment={env}"))
    if dashboard_url:
        url = dashboard_url.format_map(_Blank(agent_id=agent, environment=env, rollout_id=rollout_id))
        out.append(("Dashboard", url))
    return out


class _Blank(dict[str, str]):
    """format_map that leaves unknown placeholders empty instead of raising at send time."""

    def __missing__(self, key: str) -> str:
        return ""


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"
