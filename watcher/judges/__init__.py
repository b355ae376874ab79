"""Judges and policy (layer: pure). One judge per strategy (``canary``, ``shadow``, ``bluegreen``; flags
reuse the canary judge on remapped arms), chosen by ``strategies``; each turns per-arm statistics
into ``RolloutEvidence``. ``policy`` is the pure decision function (evidence + state -> decision +
state) and the YAML policies; ``drift`` the river detectors on versions without a control. ``gate``
and ``gate_sample``: the pre-production gate's verdict on a whole data set (fixed-sample tests on the
same metrics, slices and policy).
"""

from __future__ import annotations

from watcher.judges.drift import DriftMonitor, DriftSignal
from watcher.judges.gate import GATE_STRATEGY, GateResult, evaluate, gate_decision, gate_id
from watcher.judges.gate_sample import GateSample, build_sample
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
    "GATE_STRATEGY",
    "GateResult",
    "GateSample",
    "Policy",
    "PolicySet",
    "PolicyState",
    "ShadowJudge",
    "acknowledge",
    "build_sample",
    "decide",
    "evaluate",
    "gate_decision",
    "gate_id",
    "layout_change",
    "load_policy",
    "override",
    "policy_from_doc",
    "policy_to_doc",
]
