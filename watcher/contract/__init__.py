"""The event contract (docs EVENT_SCHEMA.md): decoding, validation, deduplication, dead letters.

The package's public face; each concept lives in its own module:

- ``schema``: the typed events (``Turn``, ``Deployment``, ``FlagSpec``), the closed
  vocabulary of ``RejectReason``, ``Rejected``, the encoders and ``dead_letter_record``;
- ``decode``: ``decode_batch`` / ``decode_deployment`` (a fast path validated in C, a slow
  path naming the precise reason) and their result, ``DecodedBatch``;
- ``dedup``: the ``Deduplicator`` window of recently seen event ids;
- ``columns``: ``TurnColumns``, a batch's columns extracted once for every consumer;
- ``columnar``: the columnar batch path (and the optional C scanner ``_turnscan``);
- ``otlp``: OTLP trace requests (protobuf or JSON) into turn messages (``OtlpDecoder``), with the
  span-to-turn ``SpanMapping`` of ``otlp_mapping``; readers ``otlp_proto`` (and the optional C decoder
  ``_otlpscan``) and ``otlp_json``;
- ``verdicts``: what comes out: verdicts, actions, evidence and decision records (``watcher.decision/v1``);
- ``catalogue``: the metric catalogue, every conversation metric defined once (``CATALOGUE``,
  ``metric_def``): its kind, direction, unit, turn field, policy defaults and Prometheus families.

Malformed input is a value (:class:`Rejected`), never an exception.

>>> dedup = Deduplicator()
>>> raw = (b'{"event_id":"e1","ts":"2026-11-27T08:00:00Z","agent_id":"bot","version":"v2",'
...        b'"conversation_id":"c1"}')
>>> batch = decode_batch([raw, raw, b'{"event_id":"e2"}'], dedup)
>>> batch.turns[0].ts, batch.turns[0].environment, batch.duplicates
(1795766400.0, 'prod', 1)
>>> batch.rejected[0].reason, batch.rejected[0].detail
(<RejectReason.MISSING_FIELD: 'missing_field'>, 'ts: object missing required field `ts`')
"""

from __future__ import annotations

from watcher.contract.catalogue import (
    CATALOGUE,
    MEAN_METRICS,
    RATE_METRICS,
    SERIES_FAMILIES,
    Direction,
    Family,
    Kind,
    MetricDef,
    ToleranceMode,
    metric_def,
    metric_names,
)
from watcher.contract.columns import TurnColumns, renumber
from watcher.contract.decode import DecodedBatch, MarkerCheck, decode_batch, decode_deployment
from watcher.contract.dedup import Deduplicator
from watcher.contract.otlp import (
    OTLP_JSON,
    OTLP_PROTO,
    Expansion,
    MessageTurns,
    NullOtlp,
    OtlpCounts,
    OtlpDecoder,
    sniff,
)
from watcher.contract.otlp_mapping import SpanMapping
from watcher.contract.schema import (
    SCHEMA_DEADLETTER,
    SCHEMA_DEPLOYMENT,
    SCHEMA_TURN,
    Arm,
    Deployment,
    FlagSpec,
    GateOutcome,
    MarkerAction,
    Rejected,
    RejectReason,
    StrategyName,
    Turn,
    dead_letter_record,
    encode_deployment,
    encode_turn,
)
from watcher.contract.signals import Item, ItemKind, Severity
from watcher.contract.verdicts import (
    Action,
    ArmEstimate,
    Cause,
    Decision,
    Example,
    MetricEvidence,
    RolloutEvidence,
    RolloutRef,
    SampleRatioEvidence,
    Verdict,
    decision_id,
    rfc3339,
)

# keep: Action Arm ArmEstimate Cause Decision DecodedBatch Deduplicator Deployment FlagSpec GateOutcome Item
# keep: ItemKind MarkerAction MarkerCheck MetricEvidence RejectReason Rejected RolloutEvidence RolloutRef
# keep: SCHEMA_DEADLETTER SCHEMA_DEPLOYMENT SCHEMA_TURN SampleRatioEvidence Severity StrategyName Turn
# keep: Example TurnColumns Verdict dead_letter_record decision_id decode_batch decode_deployment
# keep: encode_deployment encode_turn renumber OTLP_JSON OTLP_PROTO Expansion MessageTurns NullOtlp
# keep: OtlpCounts OtlpDecoder SpanMapping sniff
# keep: CATALOGUE MEAN_METRICS RATE_METRICS SERIES_FAMILIES Direction Family Kind MetricDef ToleranceMode
# keep: metric_def metric_names

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
    "Action",
    "Arm",
    "ArmEstimate",
    "Cause",
    "Decision",
    "Example",
    "DecodedBatch",
    "Deduplicator",
    "Deployment",
    "Expansion",
    "FlagSpec",
    "GateOutcome",
    "Item",
    "ItemKind",
    "MarkerAction",
    "MarkerCheck",
    "MessageTurns",
    "MetricEvidence",
    "NullOtlp",
    "OTLP_JSON",
    "OTLP_PROTO",
    "OtlpCounts",
    "OtlpDecoder",
    "RejectReason",
    "Rejected",
    "RolloutEvidence",
    "RolloutRef",
    "SCHEMA_DEADLETTER",
    "SCHEMA_DEPLOYMENT",
    "SCHEMA_TURN",
    "SampleRatioEvidence",
    "Severity",
    "SpanMapping",
    "StrategyName",
    "Turn",
    "TurnColumns",
    "Verdict",
    "dead_letter_record",
    "decision_id",
    "decode_batch",
    "decode_deployment",
    "encode_deployment",
    "encode_turn",
    "renumber",
    "rfc3339",
    "sniff",
]
