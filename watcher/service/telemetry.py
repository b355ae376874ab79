"""watcher's own observability: Prometheus metrics and OpenTelemetry traces.

Per-series metrics are never updated per event: ``StateCollector`` computes their exposition at
scrape time from the engine's state (prometheus-client's custom-collector contract), so the hot path
pays nothing for them; ``series_text`` keeps the per-series lines between scrapes and redoes only the
agents that changed, and ``exposition`` answers ``/metrics`` without holding the event loop. watcher's
own health counters are updated once per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import watcher
from watcher.config import TelemetrySettings
from watcher.contract import Action, OtlpCounts, RejectReason
from watcher.engine import Unjudged
from watcher.service.looplag import LAG_BUCKETS
from watcher.service.series_text import Selection, SeriesText

if TYPE_CHECKING:
    from watcher.engine import EngineView

log = logging.getLogger(__name__)

ROLLOUT_LABELS = ["rollout_id", "agent", "environment", "strategy", "baseline_version", "canary_version"]
OTLP_OUTCOMES = ("turn", "ignored", "rejected")


class WatcherMetrics:
    """watcher's own health, registered on an injected registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events_consumed = Counter(
            "watcher_events_consumed", "Messages consumed, by topic", ["topic"], registry=registry
        )
        self.events_rejected = Counter(
            "watcher_events_rejected",
            "Messages rejected by validation, by reason",
            ["reason"],
            registry=registry,
        )
        for reason in RejectReason:
            self.events_rejected.labels(reason.value)
        self.otlp_spans = Counter(
            "watcher_otlp_spans",
            "Spans of OTLP trace requests (Kafka and POST /v1/traces), by outcome: turn, ignored (not a "
            "turn span), rejected (a turn span that breaks the mapping)",
            ["outcome"],
            registry=registry,
        )
        for outcome in OTLP_OUTCOMES:
            self.otlp_spans.labels(outcome)
        self.events_duplicate = Counter(
            "watcher_events_duplicate", "Messages ignored as duplicate event ids", registry=registry
        )
        self.dead_letters = Counter(
            "watcher_dead_letters_published",
            "Rejected messages published to the dead-letter sink",
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "watcher_consumer_lag_messages",
            "Messages behind the high watermark",
            ["topic", "partition"],
            registry=registry,
        )
        self.batch_duration = Histogram(
            "watcher_batch_duration_seconds",
            "Time to process one batch (decode, state, judge)",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )
        self.engine_seconds = Counter(
            "watcher_engine_seconds_total",
            "CPU seconds of the engine per stage (decode, state, judge)",
            ["stage"],
            registry=registry,
        )
        self.loop_lag = Histogram(
            "watcher_event_loop_lag_seconds",
            "How late a timer due every 50 ms fires: how long the event loop was held (batches, checkpoints)",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.batch_events = Histogram(
            "watcher_batch_events",
            "Messages per batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
            registry=registry,
        )
        self.last_batch = Gauge(
            "watcher_last_batch_timestamp_seconds", "Wall time of the last processed batch", registry=registry
        )
        self.ready = Gauge("watcher_ready", "1 while watcher consumes telemetry", registry=registry)
        self.decisions = Counter(
            "watcher_decisions",
            "Decisions taken, by action",
            ["agent", "environment", "action"],
            registry=registry,
        )
        self.drift_signals = Counter(
            "watcher_drift_signals",
            "Drift signals raised",
            ["agent", "environment", "version", "metric"],
            registry=registry,
        )
        build = Gauge("watcher_build_info", "watcher's version", ["version"], registry=registry)
        build.labels(watcher.__version__).set(1)

    def count_spans(self, counts: OtlpCounts) -> None:
        """What a batch's (or a request's) OTLP spans became."""
        self.otlp_spans.labels("turn").inc(counts.turns)
        self.otlp_spans.labels("ignored").inc(counts.ignored)
        self.otlp_spans.labels("rejected").inc(counts.rejected)


class StateCollector(Collector):
    """Exposes the engine's per-series state, rollouts and verdicts.

    The per-series families come from ``series`` (``SeriesText``: kept as text, redone only for the
    agents that changed); the rollout families are computed from the engine at each scrape (a few
    lines per rollout). ``Exposition`` brings them up to date on the event loop in steps and
    ``hold``s them while a worker thread writes the answer; without a held set (a plain
    ``render_metrics`` of the registry, as tests do) ``collect`` does all of it at once."""

    def __init__(self, engine: EngineView, series: Selection = "all", series_limit: int = 20_000) -> None:
        self._engine = engine
        self.series = SeriesText(engine, series, series_limit)
        self._held: list[Metric] | None = None

    def collect(self) -> Iterator[Metric]:
        held = self._held
        if held is None:
            for _ in self.series.steps():
                pass
            held = [m for step in self.prepare_steps() if step is not None for m in step]
        yield from held

    def hold(self, families: list[Metric] | None) -> None:
        """What ``collect`` yields until ``hold(None)``: families prepared on the event loop."""
        self._held = families

    def prepare_steps(self) -> Iterator[list[Metric] | None]:
        """The families of a scrape, read from the engine (on the loop): the per-series text as the
        last ``series.steps()`` left it, then the rollouts' and verdicts' families. ``None`` after
        each rollout (the caller may let the loop run there), the families last."""
        out: list[Metric] = [self.series.rendered()]
        try:
            for part in (self._rollouts, self._unjudged, self._verdicts):
                yield from part(out)
        except Exception:  # a scrape must never take the daemon down; the log says why
            log.exception("collecting state metrics failed")
        yield out

    def _rollouts(self, out: list[Metric]) -> Iterator[None]:
        registry = self._engine.registry
        info = GaugeMetricFamily(
            "watcher_rollout_info", "rollouts and their state", labels=[*ROLLOUT_LABELS, "state"]
        )
        started = GaugeMetricFamily(
            "watcher_rollout_started_timestamp_seconds",
            "event time the rollout started",
            labels=ROLLOUT_LABELS,
        )
        ended = GaugeMetricFamily(
            "watcher_rollout_ended_timestamp_seconds",
            "event time the rollout ended",
            labels=[*ROLLOUT_LABELS, "outcome"],
        )
        weight = GaugeMetricFamily(
            "watcher_rollout_canary_weight_ratio", "expected treatment share", labels=ROLLOUT_LABELS
        )
        for r in registry.all():
            values = [
                r.rollout_id,
                r.agent_id,
                r.environment,
                r.strategy,
                r.baseline_version or "",
                r.canary_version or "",
            ]
            info.add_metric([*values, r.state.value], 1.0)
            started.add_metric(values, r.started_ts)
            if r.ended_ts is not None:
                ended.add_metric([*values, r.state.value], r.ended_ts)
            if r.active:
                weight.add_metric(values, r.canary_weight)
            yield None
        markers = GaugeMetricFamily(
            "watcher_deployment_marker_timestamp_seconds",
            "event time of the last marker of each action",
            labels=["agent", "environment", "action", "version"],
        )
        for (agent, env, action, version), ts in registry.marker_times.items():
            markers.add_metric([agent, env, action, version], ts)
        out.extend((info, started, ended, weight, markers))

    def _unjudged(self, out: list[Metric]) -> Iterator[None]:
        """Active rollouts their judge cannot judge, per reason (every reason, 0 included), and which."""
        count = GaugeMetricFamily(
            "watcher_rollouts_unjudged", "active rollouts that are not judged, by reason", labels=["reason"]
        )
        which = GaugeMetricFamily(
            "watcher_rollout_unjudged_info",
            "an active rollout that is not judged, and why (GET /v1/rollouts/{id} has the detail)",
            labels=[*ROLLOUT_LABELS, "reason"],
        )
        per_reason = dict.fromkeys((u.value for u in Unjudged), 0)
        for r in self._engine.registry.all():
            cov = self._engine.coverage.get(r.rollout_id)
            if not r.active or cov is None or cov.problem is None:
                continue
            per_reason[cov.problem.value] += 1
            labels = [r.rollout_id, r.agent_id, r.environment, r.strategy]
            labels += [r.baseline_version or "", r.canary_version or "", cov.problem.value]
            which.add_metric(labels, 1)
            yield None
        for reason, n in per_reason.items():
            count.add_metric([reason], n)
        out.extend((count, which))

    def _verdicts(self, out: list[Metric]) -> Iterator[None]:
        engine = self._engine
        verdict = GaugeMetricFamily(
            "watcher_rollout_verdict",
            "1 for the rollout's current decision",
            labels=["rollout_id", "agent", "environment", "canary_version", "decision"],
        )
        metric_labels = ["rollout_id", "agent", "environment", "metric", "slice"]
        effect = GaugeMetricFamily(
            "watcher_metric_effect", "treatment vs control effect", labels=metric_labels
        )
        lower = GaugeMetricFamily(
            "watcher_metric_effect_lower", "anytime-valid lower bound", labels=metric_labels
        )
        upper = GaugeMetricFamily(
            "watcher_metric_effect_upper", "anytime-valid upper bound", labels=metric_labels
        )
        evalue = GaugeMetricFamily("watcher_metric_evalue", "e-value against no harm", labels=metric_labels)
        threshold = GaugeMetricFamily(
            "watcher_metric_evalue_threshold", "e-value that rejects", labels=metric_labels
        )
        mverdict = GaugeMetricFamily(
            "watcher_metric_verdict", "1 for the metric's current verdict", labels=[*metric_labels, "verdict"]
        )
        for r in engine.registry.all():
            if r.rollout_id not in engine.judges and r.rollout_id not in engine.last_action:
                continue
            action = engine.last_action.get(r.rollout_id, Action.CONTINUE)
            verdict.add_metric(
                [r.rollout_id, r.agent_id, r.environment, r.canary_version or "", action.value], 1.0
            )
            evidence = engine.evidence.get(r.rollout_id)
            if evidence is None:
                continue
            for m in evidence.metrics:
                values = [r.rollout_id, r.agent_id, r.environment, m.metric, m.slice]
                mverdict.add_metric([*values, m.verdict.value], 1.0)
                evalue.add_metric(values, m.statistic)
                threshold.add_metric(values, m.threshold)
                if m.effect is not None:
                    effect.add_metric(values, m.effect)
                if m.lower is not None:
                    lower.add_metric(values, m.lower)
                if m.upper is not None:
                    upper.add_metric(values, m.upper)
            yield None
        out.extend((verdict, effect, lower, upper, evalue, threshold, mverdict))


def setup_tracing(settings: TelemetrySettings) -> Any:
    """An OpenTelemetry tracer for watcher's batches; a no-op tracer unless an exporter is set."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
    if settings.traces_exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif settings.traces_exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:  # pragma: no cover - depends on the optional extra
            from watcher.errors import ConfigError

            raise ConfigError(
                "telemetry.traces_exporter", "otlp needs: pip install 'rollout-watcher[otlp]'"
            ) from None
        headers = dict(item.split("=", 1) for item in (settings.otlp_headers or "").split(",") if "=" in item)
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint, headers=headers or None))
        )
    return provider.get_tracer("watcher")
