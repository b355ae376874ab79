"""What watcher emits to its sinks: an ``Item`` (a decision, a rollout change or a drift signal) with
its kind and severity. The outbox stores items; each sink renders them in its own wire format."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = ["Item", "ItemKind", "Severity"]


class ItemKind(str, Enum):
    DECISION = "decision"  # watcher.decision/v1
    MARKER = "marker"  # watcher.rollout_change/v1: a rollout started, changed or ended
    DRIFT = "drift"  # watcher.drift/v1


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2, Severity.CRITICAL: 3}


@dataclass(frozen=True, slots=True)
class Item:
    """One thing to deliver. ``record`` is the JSON record receivers get (decision, change, drift)."""

    kind: ItemKind
    item_id: str  # decision_id, change_id or signal_id: stable under replay
    record: dict[str, Any]
    agent_id: str
    environment: str
    severity: Severity
    ts: float  # event time

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "kind": self.kind.value,
                "item_id": self.item_id,
                "record": self.record,
                "agent_id": self.agent_id,
                "environment": self.environment,
                "severity": self.severity.value,
                "ts": self.ts,
            },
            sort_keys=True,
            separators=(",", ":"),
            allow_nan=False,
        )

    @classmethod
    def from_json(cls, text: str) -> Item:
        d = json.loads(text)
        if d.get("v") != 1:
            raise ValueError(f"unsupported outbox item version {d.get('v')!r}")
        return cls(
            ItemKind(d["kind"]),
            d["item_id"],
            d["record"],
            d["agent_id"],
            d["environment"],
            Severity(d["severity"]),
            float(d["ts"]),
        )
