"""Error rates of ``watcher gate`` on seeded simulations: ``python -m bench.gate [--quick] [--seeds N]``.

Realistic telemetry from the simulator (``watcher.sim``: segments, correlated turns, rare events),
evaluated exactly as ``watcher gate`` does (``service.gate.load`` and ``run_gate``), paired (both
versions answer the same conversations: ``strategy: shadow``) and unpaired (a 50/50 split). Per run
the verdict is pass, fail or inconclusive; the tables give their shares over seeds:

1. **false blocks**: healthy candidates that fail (the fail test's type-I error over the whole family);
2. **false passes**: a candidate exactly at the margin on quality (-0.03, one margin for both tests,
   quality the only metric a pass needs) that passes: the pass test's type-I error, bounded by
   ``promote.alpha`` = 5 % (with the bundled two margins such a candidate simply fails);
3. **power**: each regression type (and a segment-only one) that fails the gate;
4. **data to pass**: the share of healthy candidates that pass at 1k .. 16k conversations per arm,
   under three rules: the bundled policy with every segment required (the default), the bundled
   policy with ``--segments no-fail``, and deploy/ci/gate-policy.yaml with ``no-fail`` (the examples).

Writes bench/gate/results.json. ``--large``: only table 4, at 32,000 and 64,000 paired conversations per
arm (3 seeds; bench/gate/results_large.json). Figures in docs/gate.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from watcher.judges import PolicySet, load_policy
from watcher.service import GateInput, GateRequest, load_gate_input, run_gate
from watcher.sim.scenario import ArmProfile, Regression, Scenario
from watcher.sim.traffic import generate

ROOT = Path(__file__).parents[2]
RESULTS = Path(__file__).with_name("results.json")
BUNDLED = load_policy(None)
EXAMPLE = load_policy(ROOT / "deploy" / "ci" / "gate-policy.yaml")
DURATION = 1800.0
LOWER = ArmProfile(quality_mean=0.6)
RULES = {
    "bundled, every segment": (BUNDLED, True),
    "bundled, --segments no-fail": (BUNDLED, False),
    "gate-policy.yaml, --segments no-fail": (EXAMPLE, False),
}
REGRESSIONS = {
    "quality -0.05": Regression("quality", -0.05),
    "quality -0.10 in intent=billing": Regression("quality", -0.10, segment={"intent": "billing"}),
    "latency +25 %": Regression("latency", 0.25),
    "slow tail: 5 % of turns x4": Regression("latency_tail", 0.05, slow_factor=4.0),
    "escalation x2": Regression("escalation", 2.0, mode="multiply"),
    "errors x3": Regression("error", 3.0, mode="multiply"),
    "compliance x4": Regression("compliance", 4.0, mode="multiply"),
}


def quality_only(policies: PolicySet, delta: float) -> PolicySet:
    """One quality margin ``delta`` for both tests; the other metrics must not fail but need not pass."""
    p = policies.default
    metrics = tuple(
        replace(m, tolerance=delta, promote_tolerance=delta)
        if m.name == "quality"
        else replace(m, promote_gate=False)
        for m in p.metrics
    )
    return PolicySet(replace(p, metrics=metrics))


PASS_RULES = list(RULES)  # the three rules a user chooses between
RULES["quality only, one margin -0.03"] = (quality_only(BUNDLED, -0.03), False)


def scenario(paired: bool, per_arm: int, seed: int, regressions: tuple[Regression, ...] = ()) -> Scenario:
    """``per_arm`` conversations per version in DURATION seconds of staging traffic."""
    if paired:
        return Scenario(
            seed=seed,
            strategy="shadow",
            environment="staging",
            duration_s=DURATION,
            conversations_per_s=per_arm / DURATION,
            regressions=regressions,
        )
    return Scenario(
        seed=seed,
        environment="staging",
        canary_weight=0.5,
        duration_s=DURATION,
        conversations_per_s=2 * per_arm / DURATION,
        regressions=regressions,
    )


def data(sc: Scenario) -> GateInput:
    raws = list(generate(sc))
    return load_gate_input([(raws, [f"sim:{i}" for i in range(len(raws))])])


def verdict(d: GateInput, rule: str) -> str:
    policies, strict = RULES[rule]
    return run_gate(d, GateRequest(segments_must_pass=strict), policies).result.verdict.value


def shares(verdicts: list[str]) -> dict[str, Any]:
    c = Counter(verdicts)
    n = len(verdicts)
    return {"runs": n, **{v: round(c[v] / n, 3) for v in ("pass", "fail", "inconclusive")}}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.gate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=None, help="seeds per cell (default 60 null, 20 other)")
    ap.add_argument("--quick", action="store_true", help="a few seeds per cell, not written to results.json")
    ap.add_argument("--large", action="store_true", help="table 4 only, 32k and 64k paired conversations")
    args = ap.parse_args()
    if args.large:
        return large(args.seeds or 3)
    null_seeds = args.seeds or (5 if args.quick else 60)
    seeds = args.seeds or (3 if args.quick else 20)
    started = time.time()
    out: dict[str, Any] = {"seeds_null": null_seeds, "seeds": seeds, "duration_s": DURATION}
    rule = "gate-policy.yaml, --segments no-fail"

    print(f"1-2. healthy and at-the-margin candidates, 4,000 conversations per arm, {null_seeds} seeds")
    null: dict[str, Any] = {}
    for paired in (True, False):
        design = "paired" if paired else "unpaired"
        healthy = [data(scenario(paired, 4000, s)) for s in range(1, null_seeds + 1)]
        null[f"{design} healthy"] = {r: shares([verdict(d, r) for d in healthy]) for r in PASS_RULES}
        # a baseline mean of 0.6: quality is clipped to [0, 1], and near 1 the clipping shrinks a
        # -0.03 shift by a few thousandths, which puts the candidate inside the margin, not on it
        margin = [
            data(replace(scenario(paired, 4000, s, (Regression("quality", -0.03),)), baseline=LOWER))
            for s in range(1, null_seeds + 1)
        ]
        at = "quality only, one margin -0.03"
        null[f"{design} quality -0.03 (at the margin)"] = {at: shares([verdict(d, at) for d in margin])}
        print(f"  {design}: {null[f'{design} healthy']}")
        print(f"  {design} at the margin: {null[f'{design} quality -0.03 (at the margin)']}")
    out["null"] = null

    print(f"3. regressions, {seeds} seeds, 2,000 conversations per arm")
    power: dict[str, Any] = {}
    for name, reg in REGRESSIONS.items():
        power[name] = {}
        for paired in (True, False):
            runs = [verdict(data(scenario(paired, 2000, 100 + s, (reg,))), rule) for s in range(seeds)]
            power[name]["paired" if paired else "unpaired"] = shares(runs)
        print(f"  {name}: {power[name]}")
    out["power"] = power

    print(f"4. healthy candidates by size, {seeds} seeds")
    sizes: dict[str, Any] = {}
    for paired in (True, False):
        design = "paired" if paired else "unpaired"
        for n in (1000, 2000, 4000, 8000, 16000):
            sets = [data(scenario(paired, n, 200 + s)) for s in range(seeds)]
            sizes[f"{design} {n}"] = {r: shares([verdict(d, r) for d in sets]) for r in PASS_RULES}
            print(
                f"  {design} {n}: "
                + ", ".join(f"{r}: pass {v['pass']}" for r, v in sizes[f"{design} {n}"].items())
            )
    out["sizes"] = sizes
    out["seconds"] = round(time.time() - started)
    out["python"] = platform.python_version()
    if not args.quick:
        RESULTS.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {RESULTS.relative_to(ROOT)} ({out['seconds']} s)")


def large(seeds: int) -> None:
    """Where the default rule (every segment) stands on large paired data sets."""
    started = time.time()
    out: dict[str, Any] = {"seeds": seeds, "duration_s": DURATION, "sizes": {}}
    for n in (32000, 64000):
        sets = [data(scenario(True, n, 300 + s)) for s in range(seeds)]
        out["sizes"][f"paired {n}"] = {r: shares([verdict(d, r) for d in sets]) for r in PASS_RULES}
        print(f"paired {n}: {out['sizes'][f'paired {n}']}", flush=True)
    out["seconds"] = round(time.time() - started)
    path = RESULTS.with_name("results_large.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)} ({out['seconds']} s)")


if __name__ == "__main__":
    main()
