"""The vocabulary of judgement: verdicts, actions, evidence and decision records.

Shared by the judge (which produces evidence), the policy (evidence in, decision out), the decision
log, the sinks and the API. Everything here is a plain frozen value with a JSON form, so a decision
can be replayed, stored and sent without translation.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

DECISION_SCHEMA = "watcher.decision/v1"


class Verdict(str, Enum):
    """The verdict on one metric in one slice."""

    PASS = "pass"  # non-inferiority established: the treatment is not worse by more than the tolerance
    FAIL = "fail"  # harm beyond the tolerance established at the slice's error budget
    INCONCLUSIVE = "inconclusive"  # data, but not enough evidence either way (yet)
    NODATA = "nodata"  # below the minimum sample: nothing to say


class Action(str, Enum):
    """What a decision asks the deployer to do. ``continue`` is the silent default, never recorded.

    ``inconclusive`` is a pre-production gate's answer when its data show neither a regression nor
    non-inferiority (``watcher gate`` exits 2): hold, gather more data. A live rollout never emits it
    (while evidence is thin it simply continues), and no human override asks for it.
    """

    CONTINUE = "continue"
    PAUSE = "pause"
    ROLLBACK = "rollback"
    PROMOTE = "promote"
    RESUME = "resume"
    INCONCLUSIVE = "inconclusive"


class Cause(str, Enum):
    """Why a decision was taken (closed vocabulary, used as a label)."""

    REGRESSION = "regression"  # a metric failed in a slice
    SAMPLE_RATIO_MISMATCH = "sample_ratio_mismatch"  # the observed treatment share is not the expected one
    NON_INFERIOR = "non_inferior"  # every guardrail passed after the minimum duration and sample
    OVERRIDE = "override"  # a human told watcher what to do
    ACKNOWLEDGED = "acknowledged"  # a human acknowledged a pause and let the rollout go on
    INSUFFICIENT_EVIDENCE = "insufficient_evidence"  # a gate's data show neither harm nor non-inferiority


@dataclass(frozen=True, slots=True)
class ArmEstimate:
    n: int  # units behind the estimate (conversations for means, turns for rates)
    estimate: float | None


@dataclass(frozen=True, slots=True)
class MetricEvidence:
    """One metric in one slice: the verdict and the numbers behind it."""

    metric: str  # e.g. quality, latency, latency_p95, escalation, error, compliance
    slice: str  # "all" or "key=value"
    verdict: Verdict
    control: ArmEstimate
    treatment: ArmEstimate
    effect: float | None  # treatment vs control, in `effect_unit`
    effect_unit: str  # "difference" (treatment − control) or "ratio" (treatment / control)
    lower: float | None  # anytime-valid confidence interval of the effect
    upper: float | None
    statistic: float  # the e-value against "no harm beyond tolerance"
    threshold: float  # the e-value that rejects at this test's share of the error budget
    tolerance: float  # the smallest regression worth acting on, in `effect_unit`
    critical: bool
    reason: str  # one line, human, with the numbers
    # the non-inferiority margin of the PASS (promotion) test, in `effect_unit`; None: `tolerance`
    promote_tolerance: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = _rounded(asdict(self))
        d["verdict"] = self.verdict.value
        return d


@dataclass(frozen=True, slots=True)
class SampleRatioEvidence:
    expected_share: float
    observed_share: float | None
    n_treatment: int
    n_control: int
    statistic: float  # e-value against "the share is the expected one"
    threshold: float
    mismatch: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return _rounded(asdict(self))


@dataclass(frozen=True, slots=True)
class RolloutEvidence:
    """Everything the judge knows about one rollout at event time ``ts``."""

    rollout_id: str
    ts: float
    elapsed_s: float
    metrics: tuple[MetricEvidence, ...]
    sample_ratio: SampleRatioEvidence | None
    conversations_control: int = 0
    conversations_treatment: int = 0

    def failing(self) -> list[MetricEvidence]:
        return [m for m in self.metrics if m.verdict is Verdict.FAIL]


@dataclass(frozen=True, slots=True)
class RolloutRef:
    """The rollout a decision is about, as receivers need it."""

    rollout_id: str
    agent_id: str
    environment: str
    strategy: str
    baseline_version: str | None
    canary_version: str | None
    canary_weight: float | None = None
    flag: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Example:
    """A conversation behind a decision: one of the treatment's worst on the metric that decided, in
    the slice that decided, with its value on that metric and a link to its traces (``judge.trace_link``)."""

    conversation_id: str
    value: float | None  # mean quality or latency (ms; a tail too), 1.0 for a rate: it had the event
    trace_id: str | None = None  # the trace of the conversation's latest turn (turns that carry one)
    url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _rounded(asdict(self))


@dataclass(frozen=True, slots=True)
class Decision:
    """A decision record (``watcher.decision/v1``); see docs/decisions.md."""

    decision_id: str
    ts: float  # event time
    rollout: RolloutRef
    action: Action
    cause: Cause
    reason: str
    evidence: tuple[MetricEvidence, ...] = ()
    sample_ratio: SampleRatioEvidence | None = None
    trigger: dict[str, str] | None = None  # {"metric": ..., "slice": ...} of the evidence that decided
    actor: str = "watcher"
    sequence: int = 0  # n-th decision of this rollout, from 1
    examples: tuple[Example, ...] = ()  # the trigger's worst treatment conversations (worst first)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": DECISION_SCHEMA,
            "decision_id": self.decision_id,
            "ts": rfc3339(self.ts),
            "ts_unix": self.ts,
            "rollout": asdict(self.rollout),
            "action": self.action.value,
            "cause": self.cause.value,
            "reason": self.reason,
            "trigger": self.trigger,
            "actor": self.actor,
            "sequence": self.sequence,
            "evidence": [m.to_dict() for m in self.evidence],
            "sample_ratio": self.sample_ratio.to_dict() if self.sample_ratio else None,
            "examples": [x.to_dict() for x in self.examples],
        }


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    """Floats to 12 significant digits: the judges' sums are accumulated batch by batch, and where a
    stream is cut into batches moves their last bits (~1e-16), never the first twelve. Records of the
    same stream are then identical whatever the batch boundaries (docs/guarantees.md)."""
    for k, v in d.items():
        if isinstance(v, float):
            d[k] = float(f"{v:.12g}")
        elif isinstance(v, dict):
            _rounded(v)
    return d


def decision_id(rollout_id: str, sequence: int, action: Action) -> str:
    """Stable id: the same input replayed gives the same ids, so receivers can deduplicate."""
    digest = hashlib.sha256(f"{rollout_id}|{sequence}|{action.value}".encode()).hexdigest()
    return f"dec-{digest[:24]}"


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


__all__ = [
    "DECISION_SCHEMA",
    "Action",
    "ArmEstimate",
    "Cause",
    "Decision",
    "Example",
    "MetricEvidence",
    "RolloutEvidence",
    "RolloutRef",
    "SampleRatioEvidence",
    "Verdict",
    "decision_id",
    "rfc3339",
]
