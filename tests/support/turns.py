"""Turns for the per-series state's tests: a duck-typed ``Turn`` and a random one."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from watcher.state import SeriesKey


@dataclass
class T:
    """Duck-typed stand-in for watcher.contract.Turn (only the attributes state reads)."""

    ts: float
    agent_id: str = "bot"
    environment: str = "prod"
    version: str = "v1"
    conversation_id: str = "c"
    turn: int = 0
    segment: Any = field(default_factory=dict)
    latency_ms: float | None = 100.0
    quality: float | None = None
    escalated: bool = False
    error: bool = False
    compliance_violation: bool = False


def overall(agent: str = "bot", env: str = "prod", version: str = "v1", arm: str = "baseline") -> SeriesKey:
    return (agent, env, version, arm, "", "")


def random_turn(rng: random.Random, ts: float) -> T:
    seg = {}
    for key, values in (("intent", 12), ("language", 4), ("channel", 3)):
        if rng.random() < 0.9:
            seg[key] = f"{key[0]}{min(int(rng.expovariate(0.4)), values)}"
    if rng.random() < 0.05:
        seg["tenant"] = f"t{rng.randrange(3)}"
    return T(
        ts=ts,
        agent_id=rng.choice(["a", "b"]),
        environment=rng.choice(["prod", "prod", "stg"]),
        version=rng.choice(["v1", "v2"]),
        conversation_id="c",
        turn=rng.choice([0, 0, 1, 2]),
        segment=seg,
        latency_ms=None if rng.random() < 0.1 else rng.lognormvariate(6, 1),
        quality=None if rng.random() < 0.4 else rng.random(),
        escalated=rng.random() < 0.1,
        error=rng.random() < 0.05,
        compliance_violation=rng.random() < 0.03,
    )
