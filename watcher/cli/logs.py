"""Logging of a command: one format on stderr, secrets masked, the Kafka client's retry noise left out.

Every log line goes through ``Redact``: the secret values of the settings (tokens, keys, the secret
parts of configured URLs) and the credentials of any URL in the line (a password in its user info, a
``?token=``) are masked, in the message and in a traceback alike, whichever module logged it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from watcher.config import redact
from watcher.kafka import KafkaClientNoise

__all__ = ["Redact", "configure_logging"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Redact(logging.Filter):
    """Masks secrets in a record before any handler formats it."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = frozenset(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message, self.secrets)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True


def configure_logging(level: str, secrets: Iterable[str] = ()) -> None:
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr, force=True)
    logging.getLogger("aiokafka").setLevel(logging.ERROR if level != "DEBUG" else logging.DEBUG)
    for handler in logging.getLogger().handlers:
        handler.addFilter(Redact(secrets))
        if level != "DEBUG":
            # aiokafka logs an ERROR for every failed connection attempt; watcher's source says it
            # once, with the address and what to do
            handler.addFilter(KafkaClientNoise())
