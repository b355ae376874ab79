"""Settings: one frozen, typed object, loaded once from YAML plus environment overrides.

Every component gets its own slice (``settings.kafka``, ``settings.http``...). Each slice is a frozen
``msgspec.Struct`` validated by ``msgspec.convert`` (``watcher.config.validate``): a bad value fails at
start-up with a ``ConfigError`` naming the dotted field; unknown keys are errors too (a typo must not
silently fall back to a default). Secrets are masked in ``masked()`` (what ``check-config`` prints).

Environment overrides: ``WATCHER_<SECTION>__<FIELD>=value``, e.g.
``WATCHER_KAFKA__BOOTSTRAP_SERVERS=broker:9092``; lists are comma-separated, ``null`` (or an empty
value) unsets an optional field, booleans read true/false, yes/no, on/off, 1/0.

The ``sinks:`` entries are kept as written (``check_sink_entries`` checks only their names): each sink
type owns its settings class in ``watcher.sinks``, which validates them when the sinks are built (at
start-up, on reload and by ``check-config``), naming the field as ``sinks[<name>].<field>``.
"""

from __future__ import annotations

import math
import os
import re
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from watcher.config.addresses import parse_bootstrap_servers
from watcher.config.hooks import HooksSettings
from watcher.config.otlp import OtlpSettings
from watcher.config.validate import (
    SECRET,
    TOPIC_PATTERN,
    Section,
    convert,
    field_type,
    plain,
    read_yaml,
    unwrap,
)
from watcher.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "SINK_NAME",
    "CheckpointSettings",
    "HttpSettings",
    "JudgeSettings",
    "KafkaSettings",
    "OutboxSettings",
    "RolloutSettings",
    "Settings",
    "SpoolSettings",
    "StateSettings",
    "TelemetrySettings",
    "Topic",
    "check_sink_entries",
    "load_settings",
]

ENV_PREFIX = "WATCHER_"
# a sink's name keys its outbox rows, metric labels and stored state
SINK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

Positive = Annotated[int, Meta(gt=0)]
PositiveFloat = Annotated[float, Meta(gt=0)]
Token = Annotated[Annotated[str, Meta(min_length=16)] | None, SECRET]
Password = Annotated[str | None, SECRET]
HttpUrl = Annotated[str, Meta(pattern=r"^https?://")]
Topic = Annotated[str, Meta(pattern=TOPIC_PATTERN)]  # checked at start-up, not at the first write


class KafkaSettings(Section, frozen=True):
    bootstrap_servers: str = "localhost:9092"
    group_id: str = "watcher"
    client_id: str = "watcher"
    telemetry_topics: Annotated[tuple[Topic, ...], Meta(min_length=1)] = ("watcher.telemetry",)
    deployments_topics: tuple[Topic, ...] = ("watcher.deployments",)
    dead_letter_topic: Topic = "watcher.deadletter"
    # a batch waits at most this long for the dead-letter topic; then its dead letters go to the spool
    # (spool.path) and are forwarded when the topic takes them, so a topic that refuses writes never
    # holds consumption
    dead_letter_timeout_s: PositiveFloat = 5.0
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # a partition whose position is beyond the end of its log (the broker came back empty or
    # truncated) reads from the log's start (earliest) or its end (latest), counted in
    # watcher_offset_resets_total; waiting there would count nothing until the log grew past it
    past_end: Literal["earliest", "latest"] = "earliest"
    max_batch_records: Positive = 2000
    poll_timeout_ms: Positive = 500
    request_timeout_ms: Positive = 30_000
    session_timeout_ms: Positive = 10_000
    heartbeat_interval_ms: Positive = 3_000
    max_partition_fetch_bytes: Positive = 8 * 1024 * 1024  # large fetches: fewer round trips per batch
    # /readyz turns not-ready when no fetch response arrived for this long (broker lost or frozen)
    ready_stale_after_s: PositiveFloat = 15.0
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: Password = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        parse_bootstrap_servers(self.bootstrap_servers)

    def client_options(self) -> dict[str, Any]:
        """Security settings passed through to aiokafka as they are."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        for name in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password"):
            value = getattr(self, name)
            if value is not None:
                options[name] = value
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
            )
        return options


class HttpSettings(Section, frozen=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    max_body_bytes: Positive = 65_536
    auth_token: Token = None  # mutating endpoints (markers, acknowledge, override)
    read_token: Token = None  # read endpoints, if set (health, readiness and /metrics stay open)
    flagger_token: Token = None  # the Flagger hooks, if set
    argo_token: Token = None  # the verdict endpoints Argo Rollouts polls, if set
    otlp_token: Token = None  # POST /v1/traces (OTLP/HTTP in), if set
    # how the other instances reach this one (checkpoint.scope: partition forwards requests about an
    # agent to its owner); default http://<host or hostname>:<bound port>
    advertised_url: HttpUrl | None = None
    # a client gets this long to send a whole request (headers and body); a connection with no request
    # in progress for this long (idle keep-alive, or headers sent a byte at a time) is closed
    client_timeout_s: PositiveFloat = 10.0
    max_connections_per_client: Positive = 64  # open connections per client address; the next: 503
    # the Host names requests may carry (empty: any; without a token, writes need a loopback name)
    allowed_hosts: tuple[str, ...] = ()
    # origins (scheme://host[:port]) of web pages allowed to write, e.g. an internal console
    allowed_origins: tuple[str, ...] = ()


class StateSettings(Section, frozen=True):
    window_seconds: PositiveFloat = 300.0
    window_buckets: Positive = 10
    max_segment_values: Positive = 50
    dedup_capacity: Positive = 200_000
    max_event_bytes: Positive = 65_536
    # Turns older than their agent's event-time watermark minus this are dead-lettered as too_late
    # (watcher.state.lateness); None accepts any lateness. One hour covers buffered clients, quality scores
    # computed after the conversation and producer outages, and stops a replayed spool or a wrong
    # clock from being counted against rollouts that were not running at the time (docs/guarantees.md).
    allowed_lateness_s: Annotated[float, Meta(ge=0)] | None = 3600.0
    # Turns stamped more than this ahead of both watcher's clock and the latest event time accepted are
    # dead-lettered as too_early: one message from a producer whose clock runs far ahead must not move
    # its agent's watermark (and make every later turn too late). None: no bound.
    max_future_s: Annotated[float, Meta(ge=0)] | None = 3600.0
    # A retired version (the canary of a rollout rolled back or aborted, the baseline a promotion
    # replaced) leaves the state, /metrics and the drift detectors once it has had no turn for this long
    # in event time (its late turns are still counted meanwhile): a platform that ships many times a
    # week does not grow without bound.
    retired_after_s: Annotated[float, Meta(ge=0)] = 900.0
    # Any version without a turn for this long (event time) leaves them too (it starts afresh with its
    # next turn); None: never.
    idle_after_s: Annotated[float, Meta(gt=0)] | None = 7 * 86400.0

    def __post_init__(self) -> None:
        if self.allowed_lateness_s is not None and not math.isfinite(self.allowed_lateness_s):
            raise ConfigError(
                "state.allowed_lateness_s", f"must be >= 0 (or null: no limit), got {self.allowed_lateness_s}"
            )
        if self.max_future_s is not None and not math.isfinite(self.max_future_s):
            raise ConfigError(
                "state.max_future_s", f"must be >= 0 (or null: no bound), got {self.max_future_s}"
            )


class RolloutSettings(Section, frozen=True):
    auto_start: bool = True  # a canary arm next to a known baseline starts a rollout by itself
    # expected share of an auto-started rollout until a marker says more
    auto_canary_weight: Annotated[float, Meta(gt=0, lt=1)] = 0.1


class JudgeSettings(Section, frozen=True):
    policy_file: str | None = None  # None: the bundled default policy
    decision_log: str = "watcher-decisions.sqlite"
    # the judge looks at each rollout at started_ts + k * this (event time), whatever the batches: replay
    # makes the daemon's decisions (docs/guarantees.md); 0: after every batch. Its statistics are updated
    # with every batch; this only spaces out the looks (a look costs a few ms)
    evaluate_every_s: Annotated[float, Meta(ge=0)] = 30.0
    # a pause or rollback names this many of the treatment's worst conversations on the metric and in
    # the slice that decided (0: none), so a person starts from the conversations, not the numbers
    examples: Annotated[int, Meta(ge=0, le=50)] = 5
    # each example's link to its traces: a URL with {trace_id} (the trace of the conversation's latest
    # turn, when its turns carry one: OTLP input) and/or {conversation_id}, URL-quoted, e.g. a Tempo
    # trace, a Jaeger search by tag, a Langfuse session (docs/otlp.md); None: examples without links
    trace_link: str | None = None

    def __post_init__(self) -> None:
        if self.policy_file is not None and not Path(self.policy_file).is_file():
            raise ConfigError("judge.policy_file", f"no such file: {self.policy_file}")
        if self.trace_link is not None:
            try:
                self.trace_link.format(conversation_id="c", trace_id="t")
            except (KeyError, IndexError, ValueError) as e:
                raise ConfigError(
                    "judge.trace_link",
                    f"{self.trace_link!r}: only {{trace_id}} and {{conversation_id}} are filled in ({e!r})",
                ) from None
            if "{trace_id}" not in self.trace_link and "{conversation_id}" not in self.trace_link:
                raise ConfigError(
                    "judge.trace_link", f"{self.trace_link!r} has no {{trace_id}} or {{conversation_id}}"
                )


class OutboxSettings(Section, frozen=True):
    path: str = "watcher-outbox.sqlite"  # the durable queue of deliveries to the sinks


class CheckpointSettings(Section, frozen=True):
    """The engine's state with the Kafka offsets it covers (docs/guarantees.md)."""

    # a restart, a crash or an upgrade keeps the statistics and the judges' evidence
    enabled: bool = True
    path: str = "watcher-checkpoint.sqlite"  # SQLite file, one row per scope ("all" for one instance)
    # at most this often while consuming; always before offsets are committed and at shutdown
    interval_s: Annotated[float, Meta(ge=0)] = 5.0
    # "instance": one state for everything this instance consumes (one instance per consumer group);
    # "partition": one state per partition, handed over on rebalance, so several instances can share
    # a group: needs topics keyed by agent_id, co-partitioned, and a store all instances reach
    scope: Literal["instance", "partition"] = "instance"
    # where checkpoints live: "sqlite" (``path``; instances on one host or one volume) or "kafka" (a
    # compacted topic on the cluster every instance reaches: several hosts)
    store: Literal["sqlite", "kafka"] = "sqlite"
    topic: Topic = "watcher.checkpoints"
    # SQLite store: whole-file copies (<path>.1, .2...) made at most every backup_interval_s; a
    # checkpoint that cannot be read falls back to the newest readable copy (docs/guarantees.md)
    backups: Annotated[int, Meta(ge=0, le=20)] = 2
    backup_interval_s: Annotated[float, Meta(ge=0)] = 600.0

    def __post_init__(self) -> None:
        if self.enabled and not self.path.strip():
            raise ConfigError("checkpoint.path", "must not be empty when checkpoints are enabled")
        if self.scope == "partition" and not self.enabled:
            raise ConfigError(
                "checkpoint.scope", "'partition' hands state over through checkpoints: enable them"
            )


class SpoolSettings(Section, frozen=True):
    """Records Kafka would not take yet (dead letters, markers posted over HTTP), kept on local disk
    until it does (docs/guarantees.md)."""

    path: str = "watcher-spool.sqlite"  # created only when a first record must wait
    # the most dead-letter bytes the spool holds; when it is full the consumer waits (nothing is lost,
    # /readyz says why) until the dead-letter topic takes records again
    max_bytes: Positive = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if not self.path.strip():
            raise ConfigError("spool.path", "must not be empty")


class TelemetrySettings(Section, frozen=True):
    # which series' families /metrics carries (docs/metrics.md#how-many-series): every series ("all"),
    # the series of agents with an active rollout ("rollouts"), or every series while the state holds
    # at most ``series_limit`` of them and the rollouts' beyond, until back at 90 % of it ("auto": a
    # platform of thousands of agents would otherwise answer each scrape with hundreds of megabytes)
    series: Literal["auto", "all", "rollouts"] = "auto"
    series_limit: Positive = 20_000
    service_name: str = "watcher"
    traces_exporter: Literal["none", "otlp", "console"] = "none"
    otlp_endpoint: str | None = None
    otlp_headers: Password = None

    def __post_init__(self) -> None:
        if self.traces_exporter == "otlp" and not self.otlp_endpoint:
            raise ConfigError("telemetry.otlp_endpoint", "is required when traces_exporter is otlp")


class Settings(Section, frozen=True):
    kafka: KafkaSettings = msgspec.field(default_factory=KafkaSettings)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    state: StateSettings = msgspec.field(default_factory=StateSettings)
    rollouts: RolloutSettings = msgspec.field(default_factory=RolloutSettings)
    judge: JudgeSettings = msgspec.field(default_factory=JudgeSettings)
    telemetry: TelemetrySettings = msgspec.field(default_factory=TelemetrySettings)
    hooks: HooksSettings = msgspec.field(default_factory=HooksSettings)
    outbox: OutboxSettings = msgspec.field(default_factory=OutboxSettings)
    spool: SpoolSettings = msgspec.field(default_factory=SpoolSettings)
    checkpoint: CheckpointSettings = msgspec.field(default_factory=CheckpointSettings)
    otlp: OtlpSettings = msgspec.field(default_factory=OtlpSettings)
    # the push sinks as written; ``watcher.sinks`` validates each against its type's settings class
    sinks: tuple[dict[str, Any], ...] = ()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # check the configuration and policy files this often and reload when their content changed
    # (a Kubernetes ConfigMap update sends no SIGHUP); 0: reload on SIGHUP only
    config_watch_s: Annotated[float, Meta(ge=0)] = 0.0
    # SIGTERM/SIGINT: the batch in hand, a last checkpoint and the commit get this long; then the
    # process exits anyway (what was not committed is read again at the next start). Below
    # Kubernetes' terminationGracePeriodSeconds (30 s by default), so watcher ends before the SIGKILL.
    shutdown_grace_s: Annotated[float, Meta(ge=1)] = 25.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.shutdown_grace_s):
            raise ConfigError("shutdown_grace_s", f"must be >= 1 second, got {self.shutdown_grace_s}")
        if not math.isfinite(self.config_watch_s):
            raise ConfigError("config_watch_s", f"must be >= 0 (0 = SIGHUP only), got {self.config_watch_s}")
        check_sink_entries(self.sinks)

    def masked(self, sinks: Sequence[Any] | None = None) -> dict[str, Any]:
        """The effective settings as plain data, secrets replaced by a mask. ``sinks``: the sinks'
        validated settings (``watcher.sinks.sink_settings``), shown with their own secrets masked;
        without them only each sink's name and type are shown (the rest may hold secrets)."""
        out: dict[str, Any] = plain(self)
        if sinks is not None:
            out["sinks"] = plain(tuple(sinks))
        else:
            out["sinks"] = [{"name": e.get("name"), "type": e.get("type")} for e in self.sinks]
        return out


def check_sink_entries(entries: Sequence[Any]) -> None:
    """Each ``sinks:`` entry is a mapping with a valid, unique ``name`` and a ``type``; the rest is
    its type's own (``watcher.sinks``). Sink names key the outbox rows and metrics."""
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ConfigError(f"sinks[{i}]", f"expected a mapping, got {type(entry).__name__}")
        name = entry.get("name")
        if not isinstance(name, str) or not SINK_NAME.match(name):
            got = f", got {name!r}" if name is not None else ""
            raise ConfigError(f"sinks[{i}].name", f"is required: 1-64 of letters, digits, '_', '.', '-'{got}")
        if name in seen:
            raise ConfigError(f"sinks[{i}].name", f"duplicate sink name {name!r}")
        seen.add(name)
        if not isinstance(entry.get("type"), str) or not entry["type"]:
            raise ConfigError(f"sinks[{name}].type", "is required (the kind of sink: webhook, slack...)")


def load_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """YAML file (optional) < environment (``WATCHER_...``) < explicit overrides (dotted keys)."""
    raw: dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml(path, "config")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("config", f"{path} must hold a mapping at the top level")
        raw = loaded or {}
    env = os.environ if environ is None else environ
    from_env: dict[str, str] = {}  # dotted field -> the variable that set it, named in an error
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and name != ENV_PREFIX + "CONFIG":
            dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
            from_env[dotted] = name
            try:
                _set_dotted(raw, dotted, _from_text(dotted, value))
            except ConfigError as exc:
                raise _from_variable(exc, name) from None
    for dotted, value in (overrides or {}).items():
        from_env.pop(dotted, None)
        _set_dotted(raw, dotted, value)
    try:
        # strict=False: "9100" is a port and "true" a boolean, as environment variables spell them
        return convert(raw, Settings, strict=False)
    except ConfigError as exc:
        if exc.field not in from_env:
            raise
        raise _from_variable(exc, from_env[exc.field]) from None


def _from_variable(exc: ConfigError, name: str) -> ConfigError:
    """The error, saying it comes from the environment variable ``name``: the field alone ("nope:
    unknown setting") does not tell a person where to look."""
    return ConfigError(exc.field, f"{exc.message} (from the environment variable {name})")


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(dotted, f"{part} is not a section")
        node = child
    node[parts[-1]] = value


def _from_text(dotted: str, value: str) -> Any:
    """An environment variable's text as the field's type reads it (msgspec converts the rest)."""
    tp = field_type(Settings, dotted.split("."))
    if tp is None:  # an unknown setting: the conversion names it
        return value
    inner, optional = unwrap(tp)
    text = value.strip()
    if optional and text.lower() in ("", "null", "none"):
        return None
    if typing.get_origin(inner) in (tuple, list):
        return [v.strip() for v in text.split(",") if v.strip()]
    if inner is bool and text.lower() in ("yes", "on", "no", "off"):
        return text.lower() in ("yes", "on")
    return value
