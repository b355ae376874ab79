"""Settings: one frozen, typed object, loaded once from YAML plus environment overrides.

Every component gets its own slice (``settings.kafka``, ``settings.http``...). A bad value fails at
start-up with a ``ConfigError`` naming the dotted field; unknown keys are errors too (a typo must not
silently fall back to a default). Secrets are masked in ``masked()`` (what ``check-config`` prints).

Environment overrides: ``WATCHER_<SECTION>__<FIELD>=value``, e.g.
``WATCHER_KAFKA__BOOTSTRAP_SERVERS=broker:9092``; lists are comma-separated.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from watcher.config.addresses import parse_bootstrap_servers
from watcher.config.hooks import HooksSettings
from watcher.config.secret import MASK, mask_url, secret, secret_values
from watcher.config.sinks import SinkSettings, check_unique_names
from watcher.errors import ConfigError

ENV_PREFIX = "WATCHER_"


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = "localhost:9092"
    group_id: str = "watcher"
    client_id: str = "watcher"
    telemetry_topics: tuple[str, ...] = ("watcher.telemetry",)
    deployments_topics: tuple[str, ...] = ("watcher.deployments",)
    dead_letter_topic: str = "watcher.deadletter"
    auto_offset_reset: str = "earliest"
    max_batch_records: int = 2000
    poll_timeout_ms: int = 500
    request_timeout_ms: int = 30_000
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_partition_fetch_bytes: int = 8 * 1024 * 1024  # large fetches: fewer round trips per batch
    # /readyz turns not-ready when no fetch response arrived for this long (broker lost or frozen)
    ready_stale_after_s: float = 15.0
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = secret()
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        _one_of("kafka.auto_offset_reset", self.auto_offset_reset, ("earliest", "latest"))
        _one_of(
            "kafka.security_protocol",
            self.security_protocol,
            ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        )
        if self.sasl_mechanism is not None:
            _one_of("kafka.sasl_mechanism", self.sasl_mechanism, ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"))
        _positive("kafka.max_batch_records", self.max_batch_records)
        _positive("kafka.poll_timeout_ms", self.poll_timeout_ms)
        parse_bootstrap_servers(self.bootstrap_servers)
        if not self.telemetry_topics:
            raise ConfigError("kafka.telemetry_topics", "needs at least one topic")

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


@dataclass(frozen=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 65_536
    auth_token: str | None = secret()  # mutating endpoints (markers, acknowledge, override)
    read_token: str | None = secret()  # read endpoints, if set (health, readiness and /metrics stay open)
    flagger_token: str | None = secret()  # the Flagger hooks, if set
    argo_token: str | None = secret()  # the verdict endpoints Argo Rollouts polls, if set
    # how the other instances reach this one (checkpoint.scope: partition forwards requests about an
    # agent to its owner); default http://<host or hostname>:<bound port>
    advertised_url: str | None = None

    def __post_init__(self) -> None:
        for name in ("auth_token", "read_token", "flagger_token", "argo_token"):
            value = getattr(self, name)
            if value is not None and len(value) < 16:
                raise ConfigError(f"http.{name}", "must be at least 16 characters")
        if not 0 <= self.port <= 65535:
            raise ConfigError("http.port", f"must be 0..65535, got {self.port}")
        _positive("http.max_body_bytes", self.max_body_bytes)
        if self.advertised_url is not None and not self.advertised_url.startswith(("http://", "https://")):
            raise ConfigError(
                "http.advertised_url", f"must be an http(s) URL, got {mask_url(self.advertised_url)!r}"
            )


@dataclass(frozen=True)
class StateSettings:
    window_seconds: float = 300.0
    window_buckets: int = 10
    max_segment_values: int = 50
    dedup_capacity: int = 200_000
    max_event_bytes: int = 65_536
    # Turns older than their agent's event-time watermark minus this are dead-lettered as too_late
    # (watcher.state.lateness); None accepts any lateness. One hour covers buffered clients, quality scores
    # computed after the conversation and producer outages, and stops a replayed spool or a wrong
    # clock from being counted against rollouts that were not running at the time (docs/guarantees.md).
    allowed_lateness_s: float | None = 3600.0

    def __post_init__(self) -> None:
        _positive("state.window_seconds", self.window_seconds)
        if self.allowed_lateness_s is not None and not 0 <= self.allowed_lateness_s < float("inf"):
            raise ConfigError(
                "state.allowed_lateness_s", f"must be >= 0 (or null: no limit), got {self.allowed_lateness_s}"
            )
        _positive("state.window_buckets", self.window_buckets)
        _positive("state.max_segment_values", self.max_segment_values)
        _positive("state.dedup_capacity", self.dedup_capacity)
        _positive("state.max_event_bytes", self.max_event_bytes)


@dataclass(frozen=True)
class RolloutSettings:
    auto_start: bool = True  # a canary arm next to a known baseline starts a rollout by itself
    auto_canary_weight: float = 0.1  # expected share of an auto-started rollout until a marker says more

    def __post_init__(self) -> None:
        if not 0.0 < self.auto_canary_weight < 1.0:
            raise ConfigError("rollouts.auto_canary_weight", "must be strictly between 0 and 1")


@dataclass(frozen=True)
class JudgeSettings:
    policy_file: str | None = None  # None: the bundled default policy
    decision_log: str = "watcher-decisions.sqlite"
    # the judge's evidence is recomputed when event time has advanced this much since the last time
    # (its statistics are updated with every batch; this only spaces out the looks)
    evaluate_every_s: float = 10.0

    def __post_init__(self) -> None:
        if self.evaluate_every_s < 0:
            raise ConfigError("judge.evaluate_every_s", f"must be >= 0, got {self.evaluate_every_s}")
        if self.policy_file is not None and not Path(self.policy_file).is_file():
            raise ConfigError("judge.policy_file", f"no such file: {self.policy_file}")


@dataclass(frozen=True)
class OutboxSettings:
    path: str = "watcher-outbox.sqlite"  # the durable queue of deliveries to the sinks


@dataclass(frozen=True)
class CheckpointSettings:
    """The engine's state with the Kafka offsets it covers (docs/guarantees.md)."""

    # a restart, a crash or an upgrade keeps the statistics and the judges' evidence
    enabled: bool = True
    path: str = "watcher-checkpoint.sqlite"  # SQLite file, one row per scope ("all" for one instance)
    # at most this often while consuming; always before offsets are committed and at shutdown
    interval_s: float = 5.0
    # "instance": one state for everything this instance consumes (one instance per consumer group);
    # "partition": one state per partition, handed over on rebalance, so several instances can share
    # a group: needs topics keyed by agent_id, co-partitioned, and a store all instances reach
    scope: str = "instance"
    # where checkpoints live: "sqlite" (``path``; instances on one host or one volume) or "kafka" (a
    # compacted topic on the cluster every instance reaches: several hosts)
    store: str = "sqlite"
    topic: str = "watcher.checkpoints"

    def __post_init__(self) -> None:
        if self.interval_s < 0:
            raise ConfigError("checkpoint.interval_s", f"must be >= 0, got {self.interval_s}")
        if self.enabled and not self.path.strip():
            raise ConfigError("checkpoint.path", "must not be empty when checkpoints are enabled")
        if self.scope not in ("instance", "partition"):
            raise ConfigError("checkpoint.scope", f"must be 'instance' or 'partition', got {self.scope!r}")
        if self.store not in ("sqlite", "kafka"):
            raise ConfigError("checkpoint.store", f"must be 'sqlite' or 'kafka', got {self.store!r}")
        if self.store == "kafka" and not self.topic.strip():
            raise ConfigError("checkpoint.topic", "must not be empty when checkpoints are stored in Kafka")
        if self.scope == "partition" and not self.enabled:
            raise ConfigError(
                "checkpoint.scope", "'partition' hands state over through checkpoints: enable them"
            )


@dataclass(frozen=True)
class TelemetrySettings:
    service_name: str = "watcher"
    traces_exporter: str = "none"  # none | otlp | console
    otlp_endpoint: str | None = None
    otlp_headers: str | None = secret()

    def __post_init__(self) -> None:
        _one_of("telemetry.traces_exporter", self.traces_exporter, ("none", "otlp", "console"))
        if self.traces_exporter == "otlp" and not self.otlp_endpoint:
            raise ConfigError("telemetry.otlp_endpoint", "is required when traces_exporter is otlp")


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    state: StateSettings = field(default_factory=StateSettings)
    rollouts: RolloutSettings = field(default_factory=RolloutSettings)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    hooks: HooksSettings = field(default_factory=HooksSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    sinks: tuple[SinkSettings, ...] = ()
    log_level: str = "INFO"
    # check the configuration and policy files this often and reload when their content changed
    # (a Kubernetes ConfigMap update sends no SIGHUP); 0: reload on SIGHUP only
    config_watch_s: float = 0.0

    def __post_init__(self) -> None:
        _one_of("log_level", self.log_level, ("DEBUG", "INFO", "WARNING", "ERROR"))
        if not 0.0 <= self.config_watch_s < float("inf"):
            raise ConfigError("config_watch_s", f"must be >= 0 (0 = SIGHUP only), got {self.config_watch_s}")
        check_unique_names(self.sinks)

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data, secrets (and the secret parts of URLs) masked."""
        return _to_plain(self)

    def secrets(self) -> set[str]:
        """Every secret value in the settings, for masking log lines (``watcher.config.redact``)."""
        return secret_values(self)


def load_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """YAML file (optional) < environment (``WATCHER_...``) < explicit overrides (dotted keys)."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError("config", f"{path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("config", f"{path} must hold a mapping at the top level")
        raw = loaded or {}
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and name != ENV_PREFIX + "CONFIG":
            dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
            _set_dotted(raw, dotted, value)
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return _build(Settings, raw, "")


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(dotted, f"{part} is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(prefix.rstrip(".") or "config", "must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}", f"unknown setting (known: {', '.join(sorted(names))})")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(prefix.rstrip(".") or "config", str(exc)) from None


def _coerce(tp: Any, value: Any, dotted: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, dotted + ".")
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "null", "none")):
            return None
        return _coerce(args[0], value, dotted)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(dotted, f"expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_coerce(item, v, f"{dotted}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(dotted, f"expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(dotted, f"expected a number, got {value!r}")
        try:
            number = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(
                dotted, f"expected {'an integer' if tp is int else 'a number'}, got {value!r}"
            ) from None
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(dotted, f"expected an integer, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(dotted, f"expected a string, got {type(value).__name__}")
        return str(value)
    return value


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        out: dict[str, Any] = {}
        slack = getattr(obj, "type", None) == "slack"  # a Slack webhook URL is the credential itself
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.metadata.get("secret") and value is not None:
                out[f.name] = MASK
            elif isinstance(value, str) and "://" in value:
                out[f.name] = mask_url(value, path_is_secret=slack and f.name == "url")
            else:
                out[f.name] = _to_plain(value)
        return out
    if isinstance(obj, tuple):
        return [_to_plain(v) for v in obj]
    return obj


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(name, f"must be one of {', '.join(allowed)}; got {value!r}")


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(name, f"must be > 0, got {value}")
