"""Kafka bootstrap addresses, checked when the settings are read.

A value the Kafka client cannot use must stop watcher at start-up naming the field: left to the
client, ``127.0.0.1:90a`` makes it log ``invalid literal for int()`` on every reconnect for ever, and
an empty value used to fall back to ``localhost:9092`` without a word.
"""

from __future__ import annotations

import re

from watcher.errors import ConfigError

__all__ = ["DEFAULT_KAFKA_PORT", "parse_bootstrap_servers"]

DEFAULT_KAFKA_PORT = 9092  # the Kafka client's own default when an entry has no port
_HOST = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")  # DNS name or IPv4 address


def parse_bootstrap_servers(
    value: str, field: str = "kafka.bootstrap_servers"
) -> tuple[tuple[str, int], ...]:
    """``host:port[,host:port...]`` as (host, port) pairs; ``[v6]:port`` for IPv6; a missing port is
    9092, as the Kafka client assumes. Raises ``ConfigError(field, ...)`` saying what is wrong."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(field, "must not be empty: give host:port, e.g. localhost:9092")
    out: list[tuple[str, int]] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            raise ConfigError(field, f"empty entry in {value!r}: separate host:port pairs by single commas")
        if "://" in entry:
            raise ConfigError(field, f"{entry!r} is a URL: give host:port without a scheme, e.g. kafka:9092")
        out.append(_host_port(entry, field))
    return tuple(out)


def _host_port(entry: str, field: str) -> tuple[str, int]:
    if entry.startswith("["):  # [IPv6]:port
        host, sep, rest = entry[1:].partition("]")
        if not sep or not host or (rest and not rest.startswith(":")):
            raise ConfigError(field, f"{entry!r} is not [ipv6-address]:port")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_or_empty = entry.rpartition(":")
        if not sep:
            host, port_text = entry, None
        else:
            port_text = port_text_or_empty
        if not _HOST.match(host):
            raise ConfigError(field, f"{entry!r}: {host!r} is not a host name or IPv4 address")
    if port_text is None:
        return host, DEFAULT_KAFKA_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(field, f"{entry!r}: the port must be a number from 1 to 65535, got {port_text!r}")
    return host, int(port_text)
