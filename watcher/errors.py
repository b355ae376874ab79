"""The one exception tree of watcher.

    WatcherError
    ├── ConfigError          a setting or policy value is invalid (carries ``field``)
    ├── SourceError          the telemetry source cannot be read (broker down, file unreadable)
    ├── BrokerUnreachable    no broker answers a command that cannot wait (carries ``bootstrap_servers``)
    ├── SinkError            a signal could not be delivered (carries ``retry_after``, ``permanent``)
    ├── CheckpointError      state could not be saved or restored
    │   ├── CheckpointUnavailable  the store could not be reached (worth retrying)
    │   └── CheckpointLost   no readable checkpoint where one was written (carries ``scope``, ``reasons``)
    ├── EmbeddedBrokerError  the embedded broker could not be started
    └── ReportUnavailable    the HTML report needs an optional extra that is not installed (``extra``)

Malformed input events are *not* exceptions: they are values (``events.Rejected``) that are counted
and dead-lettered. "Not enough data" is a value too (the ``inconclusive`` verdict).
"""

from __future__ import annotations


class WatcherError(Exception):
    """Root of every error watcher raises on purpose."""


class ConfigError(WatcherError):
    """A configuration or policy value is invalid; ``field`` names it (dotted path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class SourceError(WatcherError):
    """The telemetry source cannot be read."""


class BrokerUnreachable(WatcherError):
    """No Kafka broker answered at ``bootstrap_servers``, for a command that does not wait for one
    (the daemon itself never raises it: it retries until the broker is back)."""

    def __init__(self, bootstrap_servers: str, detail: str, hint: str = "") -> None:
        super().__init__(
            f"no Kafka broker answers at {bootstrap_servers} ({detail})" + (f". {hint}" if hint else "")
        )
        self.bootstrap_servers = bootstrap_servers
        self.detail = detail


class SinkError(WatcherError):
    """A delivery to a sink failed.

    ``permanent`` failures (e.g. HTTP 400) are not retried; ``retry_after`` (seconds) is the
    receiver's own hint, honoured by the outbox.
    """

    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


class CheckpointError(WatcherError):
    """State could not be saved or restored."""


class CheckpointUnavailable(CheckpointError):
    """The checkpoint store could not be reached (locked, I/O, broker down): the checkpoint may be
    fine, so a restore is worth retrying rather than starting from a fresh state."""


class CheckpointLost(CheckpointError):
    """A checkpoint was written for ``scope`` but cannot be read (checksum, format, or missing rows;
    ``reasons`` says why). The daemon refuses to start from a fresh state unless the operator asks for
    it (``watcher run --reset-state``); the unreadable rows are kept aside."""

    def __init__(self, scope: str, reasons: list[str], *, where: str = "") -> None:
        super().__init__(
            f"no readable checkpoint of {scope!r}{f' in {where}' if where else ''}: {'; '.join(reasons)}"
        )
        self.scope = scope
        self.reasons = list(reasons)
        self.where = where


class EmbeddedBrokerError(WatcherError):
    """The embedded Kafka-compatible broker could not be started."""


class ReportUnavailable(WatcherError):
    """The HTML report cannot be drawn: its plotting library (the optional extra ``extra``) is missing."""

    def __init__(self, extra: str, missing: str) -> None:
        super().__init__(
            f"the HTML report needs the optional extra '{extra}' ({missing} is not installed): "
            f"pip install 'rollout-watcher[{extra}]'"
        )
        self.extra = extra
        self.missing = missing
