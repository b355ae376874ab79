"""Logging of a command: one format on stderr, secrets masked, the Kafka client's retry noise left out.

Every log line goes through ``Redact``: the secret values of the settings (tokens, keys, the secret
parts of configured URLs) and the credentials of any URL in the line (a password in its user info, a
``?token=``) are masked, in the message and in a traceback alike, whichever module logged it. For a
daemon the secrets follow its settings (``SettingsSecrets``): a sink a reload adds is masked too.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

from watcher.config import redact
from watcher.kafka import KafkaClientNoise

__all__ = ["Redact", "SettingsSecrets", "configure_logging"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class SettingsSecrets:
    """The secret values of the settings in force, computed again only when they were replaced (a
    reload assigns new settings): log lines are few, an identity check per line is nothing."""

    def __init__(self, settings_now: Callable[[], Any], secrets_of: Callable[[Any], Iterable[str]]) -> None:
        self._now = settings_now
        self._of = secrets_of
        self._seen: Any = None
        self._values: frozenset[str] = frozenset()

    def __call__(self) -> frozenset[str]:
        settings = self._now()
        if settings is not self._seen:
            self._seen, self._values = settings, frozenset(self._of(settings))
        return self._values


class Redact(logging.Filter):
    """Masks secrets in a record before any handler formats it."""

    def __init__(self, secrets: Iterable[str] | Callable[[], Iterable[str]] = ()) -> None:
        super().__init__()
        fixed = frozenset(secrets) if not callable(secrets) else frozenset()
        self.secrets: Callable[[], Iterable[str]] = secrets if callable(secrets) else (lambda: fixed)

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self.secrets()
        message = record.getMessage()
        masked = redact(message, secrets)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, secrets)
        return True


def configure_logging(level: str, secrets: Iterable[str] | Callable[[], Iterable[str]] = ()) -> None:
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr, force=True)
    logging.getLogger("aiokafka").setLevel(logging.ERROR if level != "DEBUG" else logging.DEBUG)
    for handler in logging.getLogger().handlers:
        handler.addFilter(Redact(secrets))
        if level != "DEBUG":
            # aiokafka logs an ERROR for every failed connection attempt; watcher's source says it
            # once, with the address and what to do
            handler.addFilter(KafkaClientNoise())
