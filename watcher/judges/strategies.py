"""One judge per rollout strategy: the integration point between the engine and the judges.

``canary``: the concurrent canary judge (``watcher.judges.canary.Judge``). ``flag``: the same judge on
remapped arms (treatment variant -> "canary", control variant -> "baseline", within the flag's
version), so the sample-ratio check and every test apply unchanged. ``shadow``: the paired judge
(``watcher.judges.shadow``). ``blue_green``: green after the switch against blue's history
(``watcher.judges.bluegreen``). Every judge produces the same ``RolloutEvidence``, so ``policy.decide``
and the decision records are shared; decisions carry the rollout's strategy and flag (docs/strategies/).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from watcher.contract import RolloutEvidence, TurnColumns
from watcher.judges.bluegreen import BlueGreenJudge, BlueGreenSettings
from watcher.judges.canary import Judge
from watcher.judges.policy import Policy
from watcher.judges.shadow import ShadowJudge
from watcher.state import NullHistory, Rollout, VersionHistory

__all__ = [
    "RolloutJudge",
    "VersionHistory",
    "NullHistory",
    "judge_for",
    "arms_for",
    "judge_from_state",
    "history_from_state",
    "new_history",
    "STRATEGIES",
]

STRATEGIES = ("canary", "flag", "shadow", "blue_green")


class RolloutJudge(Protocol):
    def update(
        self, turns: Sequence[Any], arms: Sequence[str], canary_weight: float | None, columns: Any = None
    ) -> None: ...  # columns: the engine's pre-extracted batch columns (optional)
    def evidence(self, ts: float) -> RolloutEvidence: ...
    def to_state(self) -> dict[str, Any]: ...


def judge_for(rollout: Rollout, policy: Policy, history: VersionHistory) -> RolloutJudge | None:
    """The judge of a starting rollout; None when the strategy is not judged (unknown, or a flag without
    spec)."""
    ref = rollout.ref()
    if rollout.strategy == "canary":
        return Judge(ref, policy, rollout.started_ts)
    if rollout.strategy == "flag":
        return Judge(ref, policy, rollout.started_ts) if _flag_ok(rollout.flag) else None
    if rollout.strategy == "shadow":
        return ShadowJudge(ref, policy, rollout.started_ts)
    if rollout.strategy == "blue_green":
        return BlueGreenJudge(ref, policy, rollout.started_ts, history)
    return None


_HISTORY_BUCKET_S = 1800.0


def _min_window() -> tuple[int, int]:
    """What a blue-green reference window needs: ``min_ref_conversations`` within the widest window
    (same hours, padded), in the buckets an unaligned window of that width touches."""
    cfg = BlueGreenSettings()
    return cfg.min_ref_conversations, math.ceil((cfg.bin_s + 2 * cfg.pad_s) / _HISTORY_BUCKET_S) + 1


def new_history() -> VersionHistory:
    """The engine's version history: blue-green's reference, keeping only buckets that a reference
    window could use."""
    return VersionHistory(bucket_s=_HISTORY_BUCKET_S, min_window=_min_window())


def history_from_state(d: dict[str, Any]) -> VersionHistory:
    return VersionHistory.from_state(d, min_window=_min_window())


def judge_from_state(d: dict[str, Any], policy: Policy | None = None) -> RolloutJudge:
    """Restore any strategy's judge from its ``to_state`` dict."""
    kind = d.get("kind")
    if kind == "shadow":
        return ShadowJudge.from_state(d, policy)
    if kind == "blue_green":
        return BlueGreenJudge.from_state(d, policy)
    return Judge.from_state(d, policy)


def _flag_ok(flag: dict[str, str] | None) -> bool:
    return bool(
        flag
        and flag.get("name")
        and flag.get("control")
        and flag.get("treatment")
        and flag["control"] != flag["treatment"]
    )


def arms_for(
    rollout: Rollout, turns: Sequence[Any], arms: Sequence[str], columns: TurnColumns | None = None
) -> list[str]:
    """The arms the rollout's judge sees (parallel to ``turns``; ``columns`` are theirs, if built)."""
    if rollout.strategy != "flag" or not _flag_ok(rollout.flag):
        return list(arms)
    assert rollout.flag is not None
    cols = columns if columns is not None else TurnColumns(turns)
    name, control, treatment = rollout.flag["name"], rollout.flag["control"], rollout.flag["treatment"]
    version = rollout.baseline_version
    role = {treatment: "canary", control: "baseline"}
    # both variants run on one version; turns of other versions (or without the flag) are not compared
    variant = [role.get(f.get(name, ""), "other") for f in cols.flags]
    if version is None:
        return variant
    return [v if same else "other" for v, same in zip(variant, cols.version_is(version).tolist())]
