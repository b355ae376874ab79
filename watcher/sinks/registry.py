"""The sink registry: which sink types exist, and building sinks from the ``sinks:`` entries.

Built-in types are listed in ``BUILTIN``, one ``SinkType`` per sink module. Other packages add
theirs through the ``watcher.sinks`` entry point group, the entry point's name being the type and
its object a ``SinkType``::

    [project.entry-points."watcher.sinks"]
    teams = "watcher_teams:TEAMS"

An entry point is imported only when a ``sinks:`` entry asks for its type (a broken plug-in cannot
stop a daemon that does not use it). A built-in type cannot be replaced by one.

``sink_settings(entries)`` validates each entry against its type's settings class, naming the field
as ``sinks[<name>].<field>``; an unknown type is an error that lists the known ones.
``build_sinks(entries)`` makes the sinks, with the side effects of a ``SinkContext``.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from watcher.clock import Clock, SystemClock
from watcher.config import check_sink_entries, convert
from watcher.errors import ConfigError
from watcher.sinks.base import Sink, SinkContext, SinkSettings, SinkType
from watcher.sinks.grafana import GRAFANA
from watcher.sinks.kafka import KAFKA
from watcher.sinks.otel import OTEL
from watcher.sinks.pagerduty import PAGERDUTY
from watcher.sinks.slack import SLACK
from watcher.sinks.webhook import WEBHOOK

if TYPE_CHECKING:
    from watcher.config import KafkaSettings

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "build_sinks", "find_type", "known_types", "sink_settings"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "watcher.sinks"
BUILTIN: dict[str, SinkType] = {t.name: t for t in (KAFKA, WEBHOOK, SLACK, PAGERDUTY, GRAFANA, OTEL)}

_plugins: dict[str, SinkType] = {}  # entry points loaded so far


def known_types() -> list[str]:
    """The built-in types, then the installed plug-ins' (by entry point name, not imported)."""
    installed = sorted({ep.name for ep in _entry_points()} - set(BUILTIN))
    return [*BUILTIN, *installed]


def find_type(name: str) -> SinkType | None:
    """The type called ``name``: built in, or an installed plug-in imported now (None: unknown).
    A plug-in that fails to import or names something else than a ``SinkType`` is a ``ConfigError``."""
    if name in BUILTIN:
        return BUILTIN[name]
    if name in _plugins:
        return _plugins[name]
    found = [ep for ep in _entry_points() if ep.name == name]
    if not found:
        return None
    ep = found[0]
    try:
        loaded = ep.load()
    except Exception as exc:  # a plug-in's own bug: say which one and why
        raise ConfigError(
            f"sink type {name}", f"the plug-in {ep.value} cannot be imported: {exc!r}"
        ) from None
    if not isinstance(loaded, SinkType) or loaded.name != name:
        raise ConfigError(
            f"sink type {name}",
            f"the plug-in {ep.value} must name a SinkType whose settings are tagged {name!r}",
        )
    _plugins[name] = loaded
    return loaded


def sink_settings(entries: Sequence[Mapping[str, Any] | SinkSettings]) -> tuple[SinkSettings, ...]:
    """Each ``sinks:`` entry as its type's settings, in order. Settings built in code are checked
    the same way (their constructor checks no constraint)."""
    raw = [msgspec.to_builtins(e) if isinstance(e, SinkSettings) else e for e in entries]
    check_sink_entries(raw)
    out: list[SinkSettings] = []
    for entry in raw:
        where, kind = f"sinks[{entry['name']}]", entry["type"]
        sink_type = find_type(kind)
        if sink_type is None:
            raise ConfigError(
                f"{where}.type", f"unknown sink type {kind!r} (known: {', '.join(known_types())})"
            )
        for key, why in sink_type.settings.RETIRED.items():
            if key in entry:
                raise ConfigError(f"{where}.{key}", why)
        out.append(convert(entry, sink_type.settings, where))
    return tuple(out)


def build_sinks(
    entries: Sequence[Mapping[str, Any] | SinkSettings],
    *,
    kafka: KafkaSettings | None = None,
    session_factory: Callable[[], Any] | None = None,
    kafka_producer_factory: Callable[..., Any] | None = None,
    clock: Clock | None = None,
    tracer_provider: Any = None,
) -> list[Sink]:
    """The sinks of ``entries`` (``sinks:`` entries as written, or settings built in code), in order.
    The keywords are the ``SinkContext``: the side effects the sinks may use."""
    context = SinkContext(
        kafka=kafka,
        session_factory=session_factory,
        producer_factory=kafka_producer_factory,
        clock=clock or SystemClock(),
        tracer_provider=tracer_provider,
    )
    out: list[Sink] = []
    for settings in sink_settings(entries):
        sink_type = find_type(settings.type)
        assert sink_type is not None  # sink_settings found it
        out.append(sink_type.build(settings, context))
    return out


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
