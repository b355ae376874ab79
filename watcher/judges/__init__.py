"""Judges and policy (layer: pure). One judge per strategy (``canary``, ``shadow``, ``bluegreen``; flags
reuse the canary judge on remapped arms), chosen by ``strategies``; each turns per-arm statistics
into ``RolloutEvidence``. ``policy`` is the pure decision function (evidence + state -> decision +
state) and the YAML policies; ``drift`` the river detectors on versions without a control.
"""

from __future__ import annotations

from watcher.judges.drift import DriftMonitor, DriftSignal
from watcher.judges.policy import (
    Policy,
    PolicySet,
    PolicyState,
    acknowledge,
    decide,
    layout_change,
    load_policy,
    override,
    policy_from_doc,
    policy_to_doc,
)
from watcher.judges.shadow import ShadowJudge

__all__ = [
    "DriftMonitor",
    "DriftSignal",
    "Policy",
    "PolicySet",
    "PolicyState",
    "ShadowJudge",
    "acknowledge",
    "decide",
    "layout_change",
    "load_policy",
    "override",
    "policy_from_doc",
    "policy_to_doc",
]
