"""Golden streams: seeded simulator streams through the engine give exactly the recorded outputs.

One stream per strategy and judge path (canary: a segment regression, a slow tail, a sample-ratio
mismatch, a healthy canary that is promoted; shadow; blue-green: a rate regression and a slow tail;
flag). For each, ``golden.json`` holds every decision in full (times, reasons, evidence numbers), the
last evidence of every rollout (overall rows in full, segment rows as a digest), a digest of every
rollout's evidence at each look and a digest of each part of the engine's checkpoint state at the end.
Floats are compared exactly: a refactoring of the judges, the state or the engine must leave them
byte-identical.

A change that *means* to change the statistics or a checkpoint's format regenerates the file and
says so in its commit:

    .venv/bin/python tests/engine/test_golden.py --update
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from watcher.config import load_settings
from watcher.engine import Engine
from watcher.judges import load_policy
from watcher.sim.presets import PRESETS, STRATEGY_PRESETS
from watcher.sim.scenario import Regression, Scenario
from watcher.sim.traffic import generate

GOLDEN = Path(__file__).with_name("golden.json")
BATCH = 1000

# Wide promote margins and short minimums, so that a healthy canary is promoted within the stream.
PROMOTABLE = """
version: 1
defaults:
  metrics:
    quality: {promote_tolerance: -0.1}
    latency: {promote_tolerance: 1.5}
    latency_p95: {promote_tolerance: 3.0}
    escalation: {promote_tolerance: 3.0}
    error: {promote_tolerance: 3.0}
    compliance: {promote_tolerance: 3.0}
  promote: {min_duration_s: 600, min_conversations: 300}
"""


def _streams() -> dict[str, tuple[Scenario, str | None]]:
    slow = Regression("latency_tail", 0.05, start_s=1800.0, slow_factor=4.0)
    return {
        "canary_segment": (PRESETS["demo"], None),
        "canary_slow_tail": (replace(PRESETS["slow_tail"], conversations_per_s=8.0, duration_s=1200.0), None),
        "canary_srm": (replace(PRESETS["srm"], conversations_per_s=10.0, duration_s=900.0), None),
        "canary_promoted": (
            replace(PRESETS["healthy"], conversations_per_s=6.0, canary_weight=0.3, duration_s=1500.0),
            PROMOTABLE,
        ),
        "shadow": (replace(STRATEGY_PRESETS["shadow_errors_x4"], duration_s=600.0), None),
        "blue_green": (replace(STRATEGY_PRESETS["blue_green_errors_x4"], duration_s=2700.0), None),
        "blue_green_tail": (
            replace(STRATEGY_PRESETS["blue_green_healthy"], duration_s=2700.0, regressions=(slow,)),
            None,
        ),
        "flag": (STRATEGY_PRESETS["flag_errors_x4"], None),
    }


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True, default=_hex)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _hex(value: Any) -> str:
    """Arrays in checkpoint parts are raw bytes."""
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(type(value).__name__)


def _evidence(ev: Any) -> dict[str, Any]:
    return {
        "ts": ev.ts,
        "metrics": [m.to_dict() for m in ev.metrics],
        "sample_ratio": None if ev.sample_ratio is None else ev.sample_ratio.to_dict(),
        "conversations": [ev.conversations_control, ev.conversations_treatment],
    }


def _last(ev: Any) -> dict[str, Any]:
    """The last evidence: overall rows in full, the segment slices' rows as a digest."""
    full = _evidence(ev)
    rows = full.pop("metrics")
    full["overall"] = [m for m in rows if m["slice"] == "all"]
    full["slices"] = sorted({m["slice"] for m in rows} - {"all"})
    full["slice_rows"] = _digest([m for m in rows if m["slice"] != "all"])
    return full


def _batches(scenario: Scenario) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for raw in generate(scenario):
        batch.append(raw)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def run(name: str, tmp: Path) -> dict[str, Any]:
    """The recorded outputs of one stream."""
    scenario, policy = _streams()[name]
    policies = None
    if policy is not None:
        path = tmp / f"{name}.yaml"
        path.write_text(policy)
        policies = load_policy(path)
    engine = Engine(load_settings(environ={}), policies=policies)
    decisions: list[dict[str, Any]] = []
    looks: dict[str, list[str]] = {}
    seen: dict[str, float] = {}
    for raws in _batches(scenario):
        result = engine.process(raws)
        decisions.extend(d.to_dict() for d in result.decisions)
        for rid, ev in engine.evidence.items():
            if seen.get(rid) != ev.ts:  # a new look
                seen[rid] = ev.ts
                looks.setdefault(rid, []).append(_digest(_evidence(ev)))
    return {
        "decisions": decisions,
        "last_evidence": {rid: _last(ev) for rid, ev in sorted(engine.evidence.items())},
        "looks": looks,
        "state": {part: _digest(value) for part, value in sorted(_state(engine).items())},
    }


def _state(engine: Engine) -> dict[str, Any]:
    """The engine's checkpoint state; the deduplicator's ids are sets (in hash order: sorted here)."""
    state = engine.to_state()
    for part in ("dedup", "dedup-previous"):
        state[part]["ids"] = sorted(state[part]["ids"])
    return state


def _canonical(obj: Any) -> Any:
    """The JSON round trip of ``obj``: what the golden file holds."""
    return json.loads(json.dumps(obj, allow_nan=True))


@pytest.mark.parametrize("name", list(_streams()))
def test_golden_stream(name: str, tmp_path: Path) -> None:
    golden = json.loads(GOLDEN.read_text())[name]
    got = _canonical(run(name, tmp_path))
    assert [d["decision_id"] for d in got["decisions"]] == [d["decision_id"] for d in golden["decisions"]]
    for mine, want in zip(got["decisions"], golden["decisions"]):
        assert mine == want
    assert got["last_evidence"] == golden["last_evidence"]
    for rid, digests in golden["looks"].items():
        mine = got["looks"].get(rid, [])
        first = next((i for i, (a, b) in enumerate(zip(mine, digests)) if a != b), None)
        assert first is None and len(mine) == len(digests), f"{rid}: look {first} of {len(digests)} differs"
    changed = sorted(
        part
        for part in {*got["state"], *golden["state"]}
        if got["state"].get(part) != golden["state"].get(part)
    )
    assert not changed, f"the engine's checkpoint state differs in {changed}"


def test_golden_streams_cover_every_verdict_and_action() -> None:
    """The recorded streams exercise what they are meant to (a guard on the golden file itself)."""
    golden = json.loads(GOLDEN.read_text())
    actions = {d["action"] for g in golden.values() for d in g["decisions"]}
    assert {"pause", "rollback", "promote"} <= actions
    strategies = {d["rollout"]["strategy"] for g in golden.values() for d in g["decisions"]}
    assert strategies == {"canary", "shadow", "blue_green", "flag"}
    verdicts = {
        m["verdict"] for g in golden.values() for ev in g["last_evidence"].values() for m in ev["overall"]
    }
    assert verdicts == {"pass", "fail", "inconclusive"}
    assert all(ev["slices"] for g in golden.values() for ev in g["last_evidence"].values())


def main(argv: list[str]) -> int:
    if argv != ["--update"]:
        print(__doc__)
        return 2
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = {name: run(name, Path(tmp)) for name in _streams()}
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True, allow_nan=True) + "\n")
    print(f"wrote {GOLDEN}: " + ", ".join(f"{k} {len(v['decisions'])} decisions" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
