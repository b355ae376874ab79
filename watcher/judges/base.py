"""The judge interface: what the engine needs from the judge of any rollout strategy.

A judge is made when its rollout starts (``Strategy.judge``), fed every batch of the rollout's agent
with the arms its strategy maps the turns to, asked for evidence at each look, and checkpointed as a
JSON-safe dict (restored by ``Strategy.restore``). Its evidence is a ``RolloutEvidence`` whatever
the strategy, so the policy, the decision records and the API are shared by every strategy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from watcher.contract import RolloutEvidence, RolloutRef, TurnColumns
from watcher.judges.policy import Policy

__all__ = ["RolloutJudge"]


class RolloutJudge(Protocol):
    """Evidence about one rollout, from the batches of its agent (canary, shadow, blue-green, flag)."""

    @property
    def rollout(self) -> RolloutRef:
        """The rollout judged (its decisions carry it)."""
        ...

    @property
    def policy(self) -> Policy:
        """The policy the judge runs with: its thresholds, and the layout of its statistics."""
        ...

    def update(
        self,
        turns: Sequence[Any],
        arms: Sequence[str],
        canary_weight: float | None,
        columns: TurnColumns | None = None,
    ) -> None:
        """Add a batch: ``arms`` parallel to ``turns`` (as the strategy maps them), the treatment's
        expected share (None: unknown) and the batch's shared columns (built when not given)."""
        ...

    def evidence(self, ts: float) -> RolloutEvidence:
        """Every metric x slice verdict with its numbers at event time ``ts``; reads only."""
        ...

    def to_state(self) -> dict[str, Any]:
        """The judge's statistics, JSON-safe (``Strategy.restore`` reads them back)."""
        ...

    def with_policy(self, policy: Policy) -> RolloutJudge:
        """The same statistics judged under ``policy`` (a reload): thresholds, tolerances and actions
        change, what was measured does not (``policy.layout_change`` must be None)."""
        ...
