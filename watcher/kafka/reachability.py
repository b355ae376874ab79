"""Saying that no broker answers: once, with what to do, then a reminder now and then.

The Kafka client logs an ERROR for every failed connection attempt and the source a WARNING for
every retry: two lines every few seconds for as long as the broker is away, none of which says what
to do. Instead the first failure is one WARNING (with a hint towards ``watcher broker`` / ``watcher
demo`` when the address is this machine, where the likely cause is that no broker was started), the
retries are DEBUG, a reminder is logged every ``remind_s``, and the reconnection is INFO.
"""

from __future__ import annotations

import logging

from watcher.clock import Clock, SystemClock
from watcher.config import parse_bootstrap_servers
from watcher.errors import BrokerUnreachable, ConfigError

__all__ = ["ConnectionReport", "KafkaClientNoise", "local_broker_hint", "unreachable"]

_LOOPBACK = ("localhost", "127.", "::1")


def local_broker_hint(bootstrap_servers: str) -> str:
    """What to do when nothing answers at a loopback address ("" for any other address)."""
    try:
        hosts = [host for host, _ in parse_bootstrap_servers(bootstrap_servers)]
    except ConfigError:
        return ""
    if not all(host.startswith(_LOOPBACK) for host in hosts):
        return ""
    return (
        "Is a broker running on this machine? `watcher broker` starts one on localhost:9092 "
        "(`watcher demo` runs broker, traffic and daemon at once)"
    )


def unreachable(bootstrap_servers: str, exc: BaseException) -> BrokerUnreachable:
    """The error of a command that needs a broker now (``watcher simulate``), with the hint."""
    return BrokerUnreachable(bootstrap_servers, _short(exc), local_broker_hint(bootstrap_servers))


class ConnectionReport:
    """Logs the connection failures of one client to ``bootstrap_servers`` without flooding."""

    def __init__(
        self,
        bootstrap_servers: str,
        logger: logging.Logger,
        *,
        what: str = "Kafka",
        remind_s: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.log = logger
        self.what = what
        self.remind_s = remind_s
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.failures = 0
        self._since = 0.0
        self._remind_at = 0.0

    def failed(self, exc: BaseException) -> None:
        now = self.clock.monotonic()
        self.failures += 1
        if self.failures == 1:
            self._since, self._remind_at = now, now + self.remind_s
            hint = local_broker_hint(self.bootstrap_servers)
            self.log.warning(
                "cannot connect to %s at %s (%s); retrying with backoff%s",
                self.what,
                self.bootstrap_servers,
                _short(exc),
                f". {hint}" if hint else "",
            )
        elif now >= self._remind_at:
            self._remind_at = now + self.remind_s
            self.log.warning(
                "still cannot connect to %s at %s: %d attempts in %.0f s (%s); retrying",
                self.what,
                self.bootstrap_servers,
                self.failures,
                now - self._since,
                _short(exc),
            )
        else:
            self.log.debug("cannot connect to %s at %s (%r)", self.what, self.bootstrap_servers, exc)

    def connected(self) -> None:
        if self.failures:
            self.log.info(
                "connected to %s at %s after %d failed attempts (%.0f s)",
                self.what,
                self.bootstrap_servers,
                self.failures,
                self.clock.monotonic() - self._since,
            )
        self.failures = 0


class KafkaClientNoise(logging.Filter):
    """Drops the Kafka client's own log lines about an unreachable broker (for a log handler): it
    logs them at ERROR on every attempt, and watcher says it once with ``ConnectionReport``. Every
    other client line (a failed commit, a fatal group error) passes."""

    _MESSAGES = ("Unable connect to", "Unable to update metadata from")

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka"):
            return True
        if isinstance(record.msg, str) and record.msg.startswith(self._MESSAGES):
            return False
        return not any(_is_connection_error(a) for a in _args(record))


def _args(record: logging.LogRecord) -> tuple[object, ...]:
    args = record.args
    if isinstance(args, tuple):
        return args
    return () if args is None else (args,)


def _is_connection_error(value: object) -> bool:
    if isinstance(value, OSError):  # refused, unreachable, reset
        return True
    # aiokafka's own: KafkaConnectionError, NodeNotReadyError, RequestTimedOutError (checked by name:
    # this module must not import the client at start-up)
    return type(value).__name__ in ("KafkaConnectionError", "NodeNotReadyError", "RequestTimedOutError")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if "Unable to bootstrap from" in text:  # aiokafka's list of resolved address tuples
        return "connection refused or no answer"
    return text if len(text) <= 200 else text[:197] + "..."
