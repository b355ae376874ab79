"""Configuration reload without a restart (SIGHUP to ``watcher run``; ``Daemon.reload``).

What reloads: the policy (``judge.policy_file`` and the file's content) and the sinks (``sinks``).
Both are swapped between two batches without losing state: running judges keep their statistics
(``Engine.replace_policies``), the outbox keeps every pending delivery (``Outbox.replace_sinks``).
Every other setting is read once at start-up (consumer group, ports, files, windows...): a reload
that changes one of them reports its name and leaves it as it is, until a restart.

``plan_reload`` is the pure-ish half: it reads the new configuration and the new policy exactly as
start-up would (YAML < environment < command-line overrides), validates both, and says what changed.
Any invalid value raises ``ConfigError`` naming the field, and nothing is applied: the configuration
in force stays in force.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge

from watcher.config import Settings, load_settings
from watcher.engine import Engine, Tasks
from watcher.errors import ConfigError
from watcher.judges import PolicySet, load_policy
from watcher.outbox import Outbox, SinkSwap
from watcher.service.partitions import Checkpoints
from watcher.sinks import Sink, build_sinks, sink_settings

__all__ = [
    "RELOADABLE",
    "ConfigSource",
    "ReloadMetrics",
    "ReloadPlan",
    "ReloadResult",
    "Reloadable",
    "Reloader",
    "plan_reload",
]

log = logging.getLogger(__name__)

# dotted settings a reload applies; everything else needs a restart
RELOADABLE = ("judge.policy_file", "sinks")


@dataclass(frozen=True)
class ConfigSource:
    """Where the running settings came from, so a reload reads them the same way.

    ``environ`` None: the process environment at the time of the reload."""

    path: str | Path | None = None
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    environ: Mapping[str, str] | None = None


def fingerprint(*paths: str | Path | None) -> str:
    """What the files hold now (content, not mtime: a ConfigMap swaps a symlink; a missing file is
    a value too). Equal fingerprints, nothing to reload."""
    digest = hashlib.sha256()
    for path in paths:
        if path is None:
            continue
        try:
            digest.update(Path(path).read_bytes())
        except OSError as exc:
            digest.update(f"unreadable {path}: {type(exc).__name__}".encode())
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class ReloadPlan:
    settings: Settings  # the settings in force after the reload: the old ones with the reloadable parts new
    policies: PolicySet  # the new policy set (validated)
    policy_changed: bool
    sinks_added: tuple[str, ...] = ()
    sinks_removed: tuple[str, ...] = ()
    sinks_changed: tuple[str, ...] = ()  # same name, other settings
    restart_needed: tuple[str, ...] = ()  # dotted names of changed settings that are not applied

    @property
    def sinks_differ(self) -> bool:
        return bool(self.sinks_added or self.sinks_removed or self.sinks_changed)

    def summary(self) -> str:
        parts = ["policy changed" if self.policy_changed else "policy unchanged"]
        if self.sinks_differ:
            for what, names in (
                ("added", self.sinks_added),
                ("changed", self.sinks_changed),
                ("removed", self.sinks_removed),
            ):
                if names:
                    parts.append(f"sinks {what}: {', '.join(names)}")
        else:
            parts.append("sinks unchanged")
        if self.restart_needed:
            parts.append(f"not applied until a restart: {', '.join(self.restart_needed)}")
        return "; ".join(parts)


@dataclass(frozen=True)
class ReloadResult:
    """What ``Daemon.reload`` did. ``applied`` False: nothing changed, ``error`` says why."""

    applied: bool
    error: str | None = None
    field: str | None = None  # the invalid setting (ConfigError.field) when rejected
    plan: ReloadPlan | None = None
    # rollout id -> why its judge keeps the policy it started with (Engine.replace_policies)
    policies_kept: dict[str, str] = dataclasses.field(default_factory=dict)
    sinks: SinkSwap | None = None


def plan_reload(
    old: Settings,
    config_path: str | Path | None,
    env: Mapping[str, str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    current_policies: PolicySet | None = None,
) -> ReloadPlan:
    """Load and validate the configuration and the policy file again; say what changed.

    ``env`` None: ``os.environ``. ``overrides``: the command-line overrides the process started with
    (``--policy``, ``--http-port``...), applied again so they neither get lost nor look changed.
    ``current_policies``: the policy set in force (None: reported as changed, which is harmless:
    judges whose policy is equal are left alone). Raises ``ConfigError`` naming the field.
    """
    new = load_settings(config_path, environ=os.environ if env is None else env, overrides=overrides)
    sink_settings(new.sinks)  # each sink's own options, as start-up validates them
    policies = load_policy(new.judge.policy_file)  # a ConfigError names the field and the file
    old_sinks = {s["name"]: s for s in old.sinks}
    new_sinks = {s["name"]: s for s in new.sinks}
    applied = msgspec.structs.replace(
        old, sinks=new.sinks, judge=msgspec.structs.replace(old.judge, policy_file=new.judge.policy_file)
    )
    return ReloadPlan(
        settings=applied,
        policies=policies,
        policy_changed=current_policies is None or policies != current_policies,
        sinks_added=tuple(n for n in new_sinks if n not in old_sinks),
        sinks_removed=tuple(n for n in old_sinks if n not in new_sinks),
        sinks_changed=tuple(n for n in new_sinks if n in old_sinks and new_sinks[n] != old_sinks[n]),
        restart_needed=tuple(_changed(old, new, "")),
    )


def _changed(old: Any, new: Any, prefix: str) -> list[str]:
    """Dotted names of the settings that differ, except the reloadable ones (names only: no values,
    so a changed secret is reported without being shown)."""
    out: list[str] = []
    for f in msgspec.structs.fields(old):
        name = prefix + f.name
        if name in RELOADABLE:
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if isinstance(a, msgspec.Struct) and isinstance(b, msgspec.Struct):
            out.extend(_changed(a, b, name + "."))
        elif a != b:
            out.append(name)
    return out


class ReloadMetrics:
    """``watcher_config_reloads_total{result}`` and the time of the last successful load."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.reloads = Counter(
            "watcher_config_reloads",
            "Configuration reloads by result (applied, rejected)",
            ["result"],
            registry=registry,
        )
        self.last_success = Gauge(
            "watcher_config_last_reload_success_timestamp_seconds",
            "When the configuration in force was loaded (start-up or the last applied reload; Unix time)",
            registry=registry,
        )
        for result in ("applied", "rejected"):
            self.reloads.labels(result)
        self.last_success.set(time.time())  # start-up loaded it

    def applied(self) -> None:
        self.reloads.labels("applied").inc()
        self.last_success.set(time.time())

    def rejected(self) -> None:
        self.reloads.labels("rejected").inc()


class Reloadable(Protocol):
    """What a reload reads and changes in a running daemon (``watcher.service.Daemon`` is one)."""

    settings: Settings  # replaced by the settings in force after the reload

    @property
    def config_source(self) -> ConfigSource | None: ...

    @property
    def engine(self) -> Engine | Tasks: ...

    @property
    def outbox(self) -> Outbox: ...

    @property
    def checkpoints(self) -> Checkpoints | None: ...

    @property
    def batch_lock(self) -> asyncio.Lock: ...


class Reloader:
    """Applies the configuration read again to a running daemon, on SIGHUP (``reload``) or when the
    files change (``watch``, every ``config_watch_s``)."""

    def __init__(self, target: Reloadable, metrics: ReloadMetrics) -> None:
        self.target = target
        self.metrics = metrics
        self._serial = asyncio.Lock()  # SIGHUPs in quick succession apply one after the other

    async def reload(self) -> ReloadResult:
        """Apply the policy and the sinks without a restart, keeping every judge's statistics and
        every pending delivery (docs/configuration.md#reloading). Applied between two batches, under
        the batch lock, so no batch, checkpoint or API override sees half of it. An invalid
        configuration is rejected whole: logged naming the field, counted, and the configuration in
        force stays."""
        target = self.target
        async with self._serial:
            source = target.config_source
            if source is None:
                return self._rejected(
                    "reload",
                    "this daemon's settings were not loaded from a configuration (built in code): "
                    "nothing to reload from",
                )
            try:
                plan = plan_reload(
                    target.settings,
                    source.path,
                    source.environ,
                    overrides=source.overrides,
                    current_policies=target.engine.policies,
                )
                sinks = _sinks_after(plan, target.outbox.sinks, target.settings)
            except ConfigError as exc:
                return self._rejected(exc.field, str(exc))
            async with target.batch_lock:
                try:
                    kept = target.engine.replace_policies(plan.policies) if plan.policy_changed else {}
                except Exception as exc:  # a judge that cannot be rebuilt: nothing was replaced
                    log.exception("configuration reload: the policy could not be applied")
                    return self._rejected("judge.policy_file", f"the policy could not be applied: {exc}")
                swap = await target.outbox.replace_sinks(sinks) if plan.sinks_differ else None
                target.settings = plan.settings
                if plan.policy_changed and target.checkpoints is not None:
                    target.checkpoints.mark_all_dirty()  # the judges' policies are part of the checkpoint
            self.metrics.applied()
            log.info("configuration reloaded: %s", plan.summary())
            for rid, why in kept.items():
                log.warning("rollout %s keeps the policy it started with until it ends: %s", rid, why)
            if plan.restart_needed:
                log.warning(
                    "configuration reload: %s changed but take effect only after a restart",
                    ", ".join(plan.restart_needed),
                )
            return ReloadResult(True, plan=plan, policies_kept=kept, sinks=swap)

    async def watch(self) -> None:
        """``config_watch_s``: reload when the configuration or the policy file changed (once per
        change: a rejected file is not retried until it changes again)."""
        source = self.target.config_source
        if source is None or source.path is None:
            log.warning(
                "config_watch_s is set but the settings were not loaded from a file: nothing to watch"
            )
            return
        path = source.path

        def files() -> str:
            return fingerprint(path, self.target.settings.judge.policy_file)

        seen = files()
        while True:
            await asyncio.sleep(self.target.settings.config_watch_s)
            try:
                now = files()
                if now != seen:
                    seen = now
                    log.info("configuration files changed: reloading")
                    await self.reload()
                    seen = files()  # the policy file may be another one now
            except Exception:  # the watcher must outlive any one failure
                log.exception("watching the configuration files failed")

    def _rejected(self, field: str, message: str) -> ReloadResult:
        self.metrics.rejected()
        log.error("configuration reload rejected, the configuration in force stays: %s", message)
        return ReloadResult(False, error=message, field=field)


def _sinks_after(plan: ReloadPlan, running: list[Sink], settings: Settings) -> list[Sink]:
    """The sinks of the new configuration, in its order: a new or changed entry built afresh, an
    unchanged one the very sink already running (its worker is not touched)."""
    by_name = {s.name: s for s in running}
    fresh = [
        entry
        for entry in plan.settings.sinks
        if plan.sinks_differ
        and (entry["name"] in plan.sinks_added + plan.sinks_changed or entry["name"] not in by_name)
    ]
    built = {s.name: s for s in build_sinks(fresh, kafka=settings.kafka)}
    return [built.get(entry["name"]) or by_name[entry["name"]] for entry in plan.settings.sinks]
