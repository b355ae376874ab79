"""Detection benchmark of the shadow, blue-green and flag judges: ``python -m bench.strategies [--quick]``.

Per strategy: null runs (no false rollback or pause allowed) and the delay to the first stop for each
regression type (median over seeds; minutes after the onset, which is the rollout start or the
switch). Blue-green twice: ``blue_green`` with 3 previous days of blue (the same-hours reference, the
usual case) and ``blue_green_recent`` with only the hour before the switch (the widened fallback);
each with a time-of-day null, a late regression (starting 90 min after the switch) and a slow tail (5 %
of turns 4x slower: the latency-tail test). Then the sample-size advantage of pairing: conversations a
shadow (paired) and a 50/50
canary (unpaired) need before the same quality regression fails. Writes bench/strategies/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from watcher.contract.columns import TurnColumns
from watcher.contract.verdicts import Action, RolloutRef, Verdict
from watcher.judges import STRATEGIES
from watcher.judges.bluegreen import BlueGreenJudge
from watcher.judges.canary import Judge
from watcher.judges.policy import PolicyState, decide, load_policy
from watcher.judges.shadow import ShadowJudge
from watcher.sim import strategy_traffic as tf
from watcher.state.history import NullHistory, VersionHistory
from watcher.state.rollouts import Rollout, RolloutState

RESULTS = Path(__file__).with_name("results.json")
POLICY = load_policy(None).default
SWITCH = tf.T0 + 3 * 86400
STOPS = (Action.ROLLBACK, Action.PAUSE)
Stop = tuple[float, str, str] | None  # (minutes after onset, action, failing metric)


def _drive(
    judge: Any,
    ref: RolloutRef,
    batches: Iterator[tuple[list[Any], list[str]]],
    onset: float,
    arms_of: Callable[[list[Any], list[str]], list[str]] | None = None,
    every: int = 1,
) -> Stop:
    state = PolicyState()
    for i, (turns, arms) in enumerate(batches):
        judge.update(turns, arms_of(turns, arms) if arms_of else arms, ref.canary_weight)
        if i % every:
            continue
        ev = judge.evidence(turns[-1].ts)
        d, state = decide(state, ev, POLICY, ref, STRATEGIES.get(ref.strategy).conduct)
        if d is not None and d.action in STOPS:
            return (ev.ts - onset) / 60, d.action.value, d.trigger["metric"] if d.trigger else "?"
    return None


def shadow_run(tr: tf.Traffic, seed: int) -> Stop:
    ref = RolloutRef("ro-s", "bot", "prod", "shadow", "v1", "v2", 1.0)
    return _drive(ShadowJudge(ref, POLICY, tf.T0), ref, tf.shadow(tr, seed), tf.T0, every=2)


def blue_green_run(tr: tf.Traffic, seed: int, history_days: int = 0) -> Stop:
    """Minutes after the onset (the switch + ``tr.onset_min``) of the first stop; blue's history is fed
    to ``VersionHistory`` as the engine does (with the batch's columns)."""
    ref = RolloutRef("ro-bg", "bot", "prod", "blue_green", "v1", "v2", 1.0)
    history = VersionHistory()
    judge: BlueGreenJudge | None = None
    state = PolicyState()
    # blue's history covers the judged hours of the previous days (the reference window of each hour
    # reaches 30 min beyond it on both sides)
    hist_min = max(240.0, tr.minutes + 120.0)
    for turns, arms, after in tf.blue_green(
        tr, seed, switch=SWITCH, history_days=history_days, history_min=hist_min
    ):
        cols = TurnColumns(turns)
        history.update(turns, arms, cols)
        if after:
            judge = judge or BlueGreenJudge(ref, POLICY, SWITCH, history)
            judge.update(turns, arms, 1.0, cols)
            ev = judge.evidence(turns[-1].ts)
            d, state = decide(state, ev, POLICY, ref, STRATEGIES.get("blue_green").conduct)
            if d is not None and d.action in STOPS:
                onset = SWITCH + 60 * tr.onset_min
                return (ev.ts - onset) / 60, d.action.value, d.trigger["metric"] if d.trigger else "?"
    return None


FLAG = Rollout(
    "ro-f",
    "bot",
    "prod",
    "flag",
    "v1",
    None,
    0.5,
    RolloutState.RUNNING,
    tf.T0,
    flag={"name": "new_prompt", "control": "off", "treatment": "on"},
)


def flag_run(tr: tf.Traffic, seed: int) -> Stop:
    flag = STRATEGIES.get("flag")
    assert flag.arms is not None
    arms_of = flag.arms
    judge = flag.judge(FLAG, POLICY, NullHistory())
    return _drive(
        judge, FLAG.ref(), tf.flag(tr, seed), tf.T0, lambda t, a: arms_of(FLAG, t, a, TurnColumns(t)), every=2
    )


_BG = tf.Traffic(
    minutes=45, conv_per_min=30, daily_amp=1.0, p_error=0.01, p_escalation=0.02, p_compliance=0.005
)
BASE = {
    "shadow": tf.Traffic(minutes=60, conv_per_min=20, p_error=0.01, p_escalation=0.02),
    "blue_green": _BG,
    "blue_green_recent": _BG,
    "flag": tf.Traffic(minutes=60, conv_per_min=30, p_error=0.01, p_escalation=0.02),
}
REGRESSIONS = {
    "quality -0.08": {"quality_shift": -0.08},
    "latency x1.3": {"latency_factor": 1.3},
    "errors x4": {"error_factor": 4.0},
    "escalation x3": {"escalation_factor": 3.0},
}
# blue-green only: every customer is exposed, so the rare-event and late regressions are measured too
BG_REGRESSIONS = {
    "compliance x5": {"compliance_factor": 5.0},
    "errors x4 from +90 min": {"error_factor": 4.0, "onset_min": 90.0, "minutes": 150.0},
    # the simulator's latency_tail (preset slow_tail): p95/p99 move, the geometric mean x1.07 only
    "slow tail (5 % of turns x4)": {"tail_share": 0.05, "tail_factor": 4.0},
}
RUNNERS: dict[str, Callable[..., Stop]] = {
    "shadow": shadow_run,
    "blue_green": lambda tr, seed: blue_green_run(tr, seed, 3),
    "blue_green_recent": lambda tr, seed: blue_green_run(tr, seed, 0),
    "flag": flag_run,
}


def conversations_to_detect(paired: bool, seed: int, shift: float = -0.05) -> int | None:
    """Conversations (both sides / both arms together) before quality fails overall."""
    tr = tf.Traffic(minutes=180, conv_per_min=10, quality_shift=shift, mix_sd=0.08)
    ref = RolloutRef("ro-p", "bot", "prod", "shadow" if paired else "canary", "v1", "v2", 0.5)
    judge: Any = ShadowJudge(ref, POLICY, tf.T0) if paired else Judge(ref, POLICY, tf.T0)
    for turns, arms in tf.shadow(tr, seed, paired=paired, batch_s=30.0):
        judge.update(turns, arms, 0.5)
        ev = judge.evidence(turns[-1].ts)
        q = next(m for m in ev.metrics if m.metric == "quality" and m.slice == "all")
        if q.verdict is Verdict.FAIL:
            # a pair costs two answers of one conversation; the unpaired design, one answer each
            return (
                ev.conversations_treatment
                if paired
                else ev.conversations_control + ev.conversations_treatment
            )
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.strategies")
    ap.add_argument("--quick", action="store_true", help="few seeds (a smoke run)")
    ap.add_argument(
        "--only",
        choices=sorted(RUNNERS),
        action="append",
        help="these sections only (repeatable; results.json is written only for a full run)",
    )
    args = ap.parse_args(argv)
    n_null, n_seeds = (10, 1) if args.quick else (60, 3)
    started = time.monotonic()
    results: dict[str, Any] = {}
    for name, run in RUNNERS.items():
        if args.only and name not in args.only:
            continue
        base = BASE[name]
        blue_green = name.startswith("blue_green")
        seeds = 2 * n_seeds + 1 if blue_green else n_seeds  # blue-green: medians over 7 seeds
        null = [run(base, 1000 + s) for s in range(n_null)]
        section: dict[str, Any] = {"null_runs": n_null, "false_stops": sum(x is not None for x in null)}
        if blue_green:  # time-of-day null: a 4x stronger daily cycle (same-hours) / a 1.25x one (recent)
            amp = 4.0 if name == "blue_green" else 1.25
            day = [
                run(tf.Traffic(**{**base.__dict__, "daily_amp": amp}), 2000 + s)
                for s in range(n_null // 2 or 1)
            ]
            section[f"null_runs_daily_amp{amp:g}"] = len(day)
            section[f"false_stops_daily_amp{amp:g}"] = sum(x is not None for x in day)
        for reg, eff in {**REGRESSIONS, **(BG_REGRESSIONS if blue_green else {})}.items():
            tr = tf.Traffic(**{**base.__dict__, **eff})
            stops = [run(tr, s) for s in range(1, seeds + 1)]
            delays = [x[0] for x in stops if x is not None]
            section[reg] = {
                "detected": f"{len(delays)}/{seeds}",
                "median_delay_min": round(statistics.median(delays), 1) if delays else None,
                "actions": sorted({f"{x[1]}:{x[2]}" for x in stops if x is not None}),
            }
        results[name] = section
    if not args.only:
        pairs = [conversations_to_detect(True, s) for s in range(1, 6)]
        unpaired = [conversations_to_detect(False, s) for s in range(1, 6)]
        results["paired_vs_unpaired"] = {
            "regression": "quality -0.05 (tolerance -0.03), traffic-mix sd 0.08, conversation latent sd 1",
            "paired_conversations": pairs,
            "unpaired_conversations": unpaired,
            "median_ratio": round(statistics.median([u / p for p, u in zip(pairs, unpaired) if p and u]), 1)
            if any(p and u for p, u in zip(pairs, unpaired))
            else None,
        }
    results["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(results, indent=2))
    if not args.quick and not args.only:
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
