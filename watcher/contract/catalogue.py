"""The metric catalogue: every conversation metric watcher measures and judges, defined once.

An entry says what the metric is (``kind``, ``direction``, ``unit``, ``doc``), which turn field it is
measured from (``field``; ``column`` in ``TurnColumns``), the bundled policy's defaults for it
(``tolerance``, ``promote_tolerance``, ``min_samples``, ``on_regression``, ``critical``) and how
watcher exposes its per-series statistics to Prometheus (``families``). Everything else reads it: the
policy (which names exist, their defaults), the state (a rate metric's counts), the judges (what a
metric's kind and scale are), the drift monitor, the exposition (``watcher.service.telemetry``), the
dashboards generator, and the docs' tables, which tests hold against it.

Kinds: ``mean`` (a turn-weighted mean with the conversation as the cluster; ``log_scale`` means are
judged as ratios of geometric means), ``rate`` (the share of conversations with an event: a boolean
turn field), ``tail`` (the share of conversations with a turn above the control's quantile of a mean
metric's field: ``latency_pNN`` for any NN, ``tail_of`` names the metric). Adding a rate or a mean
metric is one entry here (plus its turn field in the event contract); a new kind also needs its
statistics in the judges.

>>> metric_def("latency_p99").quantile, metric_def("latency_p99").kind
(0.99, <Kind.TAIL: 'tail'>)
>>> [m.name for m in RATE_METRICS]
['escalation', 'error', 'compliance']
>>> metric_def("cost")
Traceback (most recent call last):
...
KeyError: 'unknown metric cost (quality, latency, latency_pNN, escalation, error, compliance)'
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "CATALOGUE",
    "MEAN_METRICS",
    "RATE_METRICS",
    "SERIES_FAMILIES",
    "Direction",
    "Family",
    "Kind",
    "MetricDef",
    "ToleranceMode",
    "metric_def",
    "metric_names",
]


class Kind(str, Enum):
    """How a metric is measured and tested (docs/statistics.md)."""

    MEAN = "mean"  # turn-weighted mean, conversation = cluster; mixture SPRT on the difference
    RATE = "rate"  # share of conversations with an event; conditional e-test on the rate ratio
    TAIL = "tail"  # share of conversations with a turn above the control's quantile; as a rate


class Direction(str, Enum):
    LOWER_IS_WORSE = "lower_is_worse"
    HIGHER_IS_WORSE = "higher_is_worse"


class ToleranceMode(str, Enum):
    ABSOLUTE = "absolute"  # effect = treatment - control
    RELATIVE = "relative"  # effect = treatment / control


@dataclass(frozen=True, slots=True)
class Family:
    """A Prometheus family of the per-series statistics (``watcher_<name>``; per segment
    ``watcher_segment_<name>``). ``stat`` is the series statistic it shows (of its metric, if any):
    ``turns``, ``conversations``, ``share`` (of the agent's turns), ``events`` / ``rate`` (turns with a
    rate metric's event, their share), ``mean`` / ``stddev`` / ``quantiles`` (of a mean metric).
    Counters are cumulative; gauges carry ``window`` (cumulative | recent)."""

    name: str
    type: str  # "counter" | "gauge"
    doc: str
    stat: str
    labels: tuple[str, ...] = ()  # beyond the series' (and the window)


@dataclass(frozen=True, slots=True)
class MetricDef:
    """One conversation metric (see the module docstring)."""

    name: str
    kind: Kind
    direction: Direction
    unit: str  # of the turn field
    doc: str
    field: str  # the ``watcher.turn/v1`` field it is measured from
    column: str  # the ``TurnColumns`` column of that field
    # the bundled policy's defaults (docs/statistics.md)
    tolerance_mode: ToleranceMode
    tolerance: float
    promote_tolerance: float | None
    min_samples: int  # conversations per arm before it is judged
    on_regression: str  # "pause" | "rollback"
    critical: bool = False  # a failure always rolls back
    log_scale: bool = False  # mean: judged on the log scale (ratios of geometric means)
    # mean: the mixing scale of the FAIL mixture SPRT, on the tested scale: the excess harm it sees
    # fastest. Tied to the regressions worth stopping, not to the tolerance, so that a small tolerance
    # does not make the test slow on large regressions (docs/statistics.md). None: 2 |tolerance|.
    fail_tau: float | None = None
    tail_of: str | None = None  # tail: the mean metric whose field the quantile is of
    quantile: float | None = None  # tail: the control's quantile (from the name)
    families: tuple[Family, ...] = ()  # its per-series Prometheus families


_TAIL = re.compile(r"^(?P<of>[a-z]+)_p(?P<q>\d{2,3})$")

CATALOGUE: tuple[MetricDef, ...] = (
    MetricDef(
        "quality",
        Kind.MEAN,
        Direction.LOWER_IS_WORSE,
        "score 0..1",
        "LLM-judge quality score of a turn, mean per turn (conversation = cluster)",
        "quality",
        "quality",
        ToleranceMode.ABSOLUTE,
        -0.01,  # treatment - control down to -0.01 is let through
        -0.03,  # promotion: shown to be no worse than -0.03
        20,  # conversations per arm (burn-in of the asymptotic test)
        "rollback",
        fail_tau=0.05,  # regressions of -0.05 .. -0.15
        families=(
            Family("quality_mean", "gauge", "mean LLM-judge quality score", "mean"),
            Family("quality_stddev", "gauge", "std deviation of quality", "stddev"),
        ),
    ),
    MetricDef(
        "latency",
        Kind.MEAN,
        Direction.HIGHER_IS_WORSE,
        "ms",
        "turn latency; judged in bulk as the geometric mean (mean of log latency)",
        "latency_ms",
        "latency",
        ToleranceMode.RELATIVE,
        1.025,  # +2.5 %
        1.10,
        20,
        "pause",
        log_scale=True,
        fail_tau=0.15,  # regressions of +10 .. +30 % (log scale)
        families=(Family("latency_seconds", "gauge", "turn latency quantile", "quantiles", ("quantile",)),),
    ),
    MetricDef(
        "latency_p95",
        Kind.TAIL,
        Direction.HIGHER_IS_WORSE,
        "conversations",
        "latency tail: share of conversations with a turn above the control's p95 (any latency_pNN)",
        "latency_ms",
        "latency",
        ToleranceMode.RELATIVE,
        1.05,
        1.5,
        20,
        "pause",
        tail_of="latency",
        quantile=0.95,
    ),
    MetricDef(
        "escalation",
        Kind.RATE,
        Direction.HIGHER_IS_WORSE,
        "conversations",
        "share of conversations handed to a human",
        "escalated",
        "escalated",
        ToleranceMode.RELATIVE,
        1.025,
        1.25,
        10,
        "rollback",
        families=(
            Family("turn_escalations", "counter", "turns handed to a human", "events"),
            Family("escalation_ratio", "gauge", "share of turns handed to a human", "rate"),
        ),
    ),
    MetricDef(
        "error",
        Kind.RATE,
        Direction.HIGHER_IS_WORSE,
        "conversations",
        "share of conversations where the agent failed to answer",
        "error",
        "error",
        ToleranceMode.RELATIVE,
        1.1,
        1.5,
        10,
        "rollback",
        families=(
            Family("turn_errors", "counter", "turns where the agent failed to answer", "events"),
            Family("error_ratio", "gauge", "share of turns where the agent failed to answer", "rate"),
        ),
    ),
    MetricDef(
        "compliance",
        Kind.RATE,
        Direction.HIGHER_IS_WORSE,
        "conversations",
        "share of conversations flagged by a compliance check",
        "compliance_violation",
        "compliance",
        ToleranceMode.RELATIVE,
        1.1,
        1.5,
        10,
        "rollback",
        critical=True,  # always rollback
        families=(
            Family("turn_compliance_violations", "counter", "turns flagged by a compliance check", "events"),
            Family(
                "compliance_violation_ratio", "gauge", "share of turns flagged by a compliance check", "rate"
            ),
        ),
    ),
)

MEAN_METRICS: tuple[MetricDef, ...] = tuple(m for m in CATALOGUE if m.kind is Kind.MEAN)
RATE_METRICS: tuple[MetricDef, ...] = tuple(m for m in CATALOGUE if m.kind is Kind.RATE)
_BY_NAME = {m.name: m for m in CATALOGUE}
_TAILS = {m.tail_of: m for m in CATALOGUE if m.kind is Kind.TAIL}

# Every per-series family with its metric (None: the series' own), in exposition order: counters,
# then gauges.
SERIES_FAMILIES: tuple[tuple[Family, MetricDef | None], ...] = (
    (Family("turns", "counter", "agent turns", "turns"), None),
    (
        Family("conversations", "counter", "conversations (counted at their first turn)", "conversations"),
        None,
    ),
    *((f, m) for m in CATALOGUE for f in m.families if f.type == "counter"),
    *((f, m) for m in CATALOGUE for f in m.families if f.type == "gauge"),
    (Family("traffic_share_ratio", "gauge", "share of the agent's turns", "share"), None),
)


def metric_def(name: str) -> MetricDef:
    """The catalogue entry of ``name``; a tail's quantile is read from its name (``latency_p99``).
    ``KeyError`` naming the known metrics for any other name."""
    found = _BY_NAME.get(name)
    if found is not None:
        return found
    m = _TAIL.match(name)
    template = _TAILS.get(m.group("of")) if m else None
    if m is None or template is None:
        raise KeyError(f"unknown metric {name} ({', '.join(metric_names())})")
    digits = m.group("q")
    return dataclasses.replace(template, name=name, quantile=int(digits) / 10 ** len(digits))


def metric_names() -> tuple[str, ...]:
    """The names a policy may judge, tails as their pattern (``latency_pNN``)."""
    return tuple(f"{m.tail_of}_pNN" if m.kind is Kind.TAIL else m.name for m in CATALOGUE)
