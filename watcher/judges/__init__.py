"""Judges and policy (layer: pure). A judge turns per-arm statistics into ``RolloutEvidence``; every
judge implements ``RolloutJudge`` (``base``) and shares the test parameters, the alpha split and the
evidence rows of ``helpers``. One judge per kind of comparison: ``canary`` (concurrent arms; its
tables in ``tables``), ``shadow`` (paired turns), ``bluegreen`` (against the versions' history).
``strategies`` is the registry of rollout strategies (canary, flag, shadow, blue_green, and
third-party ones through the ``watcher.strategies`` entry points): the only place a strategy is
declared. ``policy`` is the pure decision function (evidence + state -> decision + state) and the
YAML policies; ``drift`` the river detectors on versions without a control. ``gate`` and
``gate_sample``: the pre-production gate's verdict on a whole data set (fixed-sample tests on the
same metrics, slices and policy). ``preload`` imports the heavy libraries the judges load lazily
(the daemon, in a worker thread as it starts).
"""

from __future__ import annotations

from watcher.judges.base import RolloutJudge
from watcher.judges.drift import DriftMonitor, DriftSignal
from watcher.judges.gate import GATE_STRATEGY, GateResult, evaluate, gate_decision, gate_id
from watcher.judges.gate_sample import GateSample, build_sample
from watcher.judges.policy import (
    Conduct,
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
from watcher.judges.preload import preload
from watcher.judges.strategies import ENTRY_POINT_GROUP, STRATEGIES, Strategy, StrategyRegistry

__all__ = [
    "Conduct",
    "DriftMonitor",
    "DriftSignal",
    "ENTRY_POINT_GROUP",
    "GATE_STRATEGY",
    "GateResult",
    "GateSample",
    "Policy",
    "PolicySet",
    "PolicyState",
    "RolloutJudge",
    "STRATEGIES",
    "Strategy",
    "StrategyRegistry",
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
    "preload",
]
