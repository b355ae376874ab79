"""The outbox's own Prometheus metrics (``watcher_outbox_*``, docs/metrics.md).

Backlog, oldest pending age, failed and orphaned deliveries are computed at scrape time from the
store: true after a restart, no bookkeeping to drift. Attempts and latency are counted by the
delivery workers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from enum import Enum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from watcher.clock import Clock
from watcher.contract import Severity
from watcher.outbox.store import OutboxStore

__all__ = ["LATENCY_BUCKETS", "OutboxMetrics", "Outcome"]

LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class Outcome(str, Enum):
    """Label values of ``watcher_outbox_deliveries_total``."""

    DELIVERED = "delivered"
    FAILED_PERMANENT = "failed_permanent"  # a permanent error, or retried for the whole budget
    RETRIED = "retried"  # a transient failure: retried after a backoff
    THROTTLED = "throttled"  # the receiver asked to wait (Retry-After): retried then, not a failure


class OutboxMetrics:
    """``configured`` returns the names of the sinks configured now (pending deliveries of any other
    name are orphaned)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        store: OutboxStore,
        clock: Clock,
        configured: Callable[[], Iterable[str]],
    ) -> None:
        self._store, self._clock, self._configured = store, clock, configured
        self.backlog = Gauge(
            "watcher_outbox_backlog", "Deliveries pending per sink", ["sink"], registry=registry
        )
        self.deliveries = Counter(
            "watcher_outbox_deliveries",
            "Delivery attempts by outcome",
            ["sink", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "watcher_outbox_delivery_latency_seconds",
            "Enqueue to delivered",
            ["sink"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.oldest = Gauge(
            "watcher_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending delivery per sink (0 when none)",
            ["sink"],
            registry=registry,
        )
        self.orphaned = Gauge(
            "watcher_outbox_orphaned_deliveries",
            "Pending deliveries of sinks no longer configured (kept, not sent)",
            registry=registry,
        )
        self.orphaned.set_function(self._orphaned)
        registry.register(_FailedCollector(store, configured))

    def register(self, name: str) -> None:
        """Label values of a new sink, so its series exist (at zero) before its first delivery."""
        self.backlog.labels(name).set_function(self._backlog_fn(name))
        self.oldest.labels(name).set_function(self._oldest_fn(name))
        for outcome in Outcome:
            self.deliveries.labels(name, outcome.value)

    def unregister(self, name: str) -> None:
        """A removed sink: its pending deliveries count in ``watcher_outbox_orphaned_deliveries`` now."""
        for gauge in (self.backlog, self.oldest):
            with contextlib.suppress(KeyError):
                gauge.remove(name)

    def _orphaned(self) -> float:
        names = set(self._configured())
        return float(sum(n for sink, n in self._store.pending_by_sink().items() if sink not in names))

    def _backlog_fn(self, sink: str) -> Callable[[], float]:
        return lambda: float(self._store.pending_stats(sink)[0])

    def _oldest_fn(self, sink: str) -> Callable[[], float]:
        def age() -> float:
            oldest = self._store.pending_stats(sink)[1]
            return 0.0 if oldest is None else max(0.0, self._clock.now() - oldest)

        return age


class _FailedCollector:
    """``watcher_outbox_failed_deliveries{sink, severity}``: deliveries given up and not re-driven or
    dismissed. Every configured sink has its four severities at 0, so an alert sees the first one."""

    def __init__(self, store: OutboxStore, configured: Callable[[], Iterable[str]]) -> None:
        self._store, self._configured = store, configured

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> list[GaugeMetricFamily]:
        family = self._family()
        counts = {s: dict.fromkeys(Severity, 0) for s in self._configured()}
        by_rank = {s.rank: s for s in Severity}
        for (sink, priority), n in self._store.failed_by_sink().items():
            counts.setdefault(sink, dict.fromkeys(Severity, 0))[by_rank.get(priority, Severity.INFO)] += n
        for sink, per in sorted(counts.items()):
            for severity, n in per.items():
                family.add_metric([sink, severity.value], float(n))
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "watcher_outbox_failed_deliveries",
            "Deliveries given up (a permanent error, or retried for the whole budget) and not re-driven "
            "or dismissed, per sink and item severity (critical: a rollback)",
            labels=["sink", "severity"],
        )
