"""The detection benchmark: watcher and two reference judges on simulated canaries.

    python -m bench.detection.run            # full run (5 seeds, ~10 min on one core)
    python -m bench.detection.run --quick    # 1 seed, a smoke run
    python -m bench.detection.run --judges flagger,kayenta --seeds 3 --scenarios errors_x4,a_a

For every scenario × seed the simulator (watcher.simulate) writes a JSONL stream to a temporary
directory; every judge reads it and reports the event time at which it first stops the canary
(watcher: its first ``pause`` or ``rollback`` decision from ``watcher.replay.replay_decisions``;
the references: their rollback). Delay = stop time − onset (scenario start + the regression's
``start_s``). A stop in a null scenario is a false rollback; a stop before the onset of a
regression scenario is counted as a pre-onset alarm (also false), not as a detection.
Prints Markdown tables and writes bench/detection/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.detection.reference_judges import FlaggerJudge, KayentaJudge, Stream, load_jsonl
from watcher.simulate import PRESETS, Regression, Scenario, write_jsonl

RESULTS = Path(__file__).with_name("results.json")
STOP_ACTIONS = frozenset({"pause", "rollback"})


@dataclass(frozen=True)
class Case:
    name: str
    scenario: Scenario
    onset_s: float | None  # None: a null scenario (no harmful difference between the arms)
    description: str


def _case(
    name: str, description: str, regressions: tuple[Regression, ...], onset_s: float, **kw: Any
) -> Case:
    return Case(name, Scenario(name=name, description=description, regressions=regressions, **kw), onset_s,
                description)


R = Regression
REGRESSIONS: tuple[Case, ...] = (
    # +0.75 pp per turn on a ~1.1 % per-turn rate: about +3 pp per conversation (4 turns on average).
    _case("escalation_+3pp", "escalation +3 pp per conversation (+0.75 pp per turn) from 300 s",
          (R("escalation", 0.0075, start_s=300.0),), 300.0),
    _case("segment_quality", "quality -0.15 for intent=cancellation (10 % of traffic) from 300 s while "
          "every turn gains +0.03: the average improves",
          (R("quality", 0.03), R("quality", -0.18, start_s=300.0, segment={"intent": "cancellation"})),
          300.0),
    _case("latency_+25%", "latency +25 % from 300 s", (R("latency", 0.25, start_s=300.0),), 300.0),
    _case("slow_tail_5%", "5 % of turns 4x slower from 300 s",
          (R("latency_tail", 0.05, start_s=300.0, slow_factor=4.0),), 300.0),
    _case("errors_x4", "error probability x4 from 300 s",
          (R("error", 4.0, start_s=300.0, mode="multiply"),), 300.0),
    _case("compliance_x5", "compliance-violation probability x5 from 300 s",
          (R("compliance", 5.0, start_s=300.0, mode="multiply"),), 300.0),
    _case("gradual_quality", "quality ramps down to -0.1 between 300 s and 1200 s",
          (R("quality", -0.1, start_s=300.0, shape="gradual", ramp_s=900.0),), 300.0, duration_s=2400.0),
    _case("from_first_minute", "quality -0.1 from the canary's first turn", (R("quality", -0.1),), 0.0),
)
NULLS: tuple[Case, ...] = tuple(
    Case(name, PRESETS[name], None, PRESETS[name].description)
    for name in ("a_a", "healthy", "both_arms_drift", "rare_events", "long_conversations", "low_traffic")
)
CASES = REGRESSIONS + NULLS

Stop = tuple[float, str]  # (event time of the first pause/rollback, its reason)
Judge = Callable[[Path, Stream, Case], Stop | None]


def watcher_judge(path: Path, stream: Stream, case: Case) -> Stop | None:
    from watcher.replay import replay_decisions  # imported late: the benchmark runs without it too

    stops = [d for d in replay_decisions(path) if d["action"] in STOP_ACTIONS]
    if not stops:
        return None
    first = min(stops, key=lambda d: d["ts_unix"])
    return first["ts_unix"], first["reason"]


def flagger_judge(path: Path, stream: Stream, case: Case) -> Stop | None:
    return FlaggerJudge().rollback(stream)


def kayenta_judge(path: Path, stream: Stream, case: Case) -> Stop | None:
    # The canary's planned lifetime is the scenario's duration: its last 10-minute interval is
    # judged against the pass score (95), the earlier ones against the marginal score (75).
    return KayentaJudge(lifetime_s=case.scenario.duration_s).rollback(stream)


JUDGES: dict[str, Judge] = {"watcher": watcher_judge, "flagger": flagger_judge, "kayenta": kayenta_judge}


def run_case(case: Case, seed: int, judges: dict[str, Judge], workdir: Path) -> list[dict[str, Any]]:
    scenario = replace(case.scenario, seed=seed)
    path = workdir / f"{case.name}-{seed}.jsonl"
    t0 = time.perf_counter()
    events = write_jsonl(scenario, path)
    stream = load_jsonl(path)
    gen_s = time.perf_counter() - t0
    onset = scenario.start_ts + case.onset_s if case.onset_s is not None else None
    rows = []
    for name, judge in judges.items():
        t1 = time.perf_counter()
        error, stop, reason = None, None, None
        try:
            found = judge(path, stream, case)
            if found is not None:
                stop, reason = found
        except Exception as exc:  # one judge failing must not lose the others' results
            error = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=sys.stderr)
        if error is not None:
            outcome = "error"
        elif onset is None:
            outcome = "false_rollback" if stop is not None else "quiet"
        elif stop is None:
            outcome = "missed"
        else:
            outcome = "detected" if stop >= onset else "pre_onset_alarm"
        rows.append({
            "scenario": case.name, "kind": "null" if onset is None else "regression", "seed": seed,
            "judge": name, "events": events, "start_ts": scenario.start_ts, "onset_ts": onset,
            "stop_ts": stop,
            "delay_s": (stop - onset) if (stop is not None and onset is not None and stop >= onset) else None,
            "outcome": outcome, "reason": reason, "error": error,
            "judge_seconds": round(time.perf_counter() - t1, 3), "generate_seconds": round(gen_s, 3),
        })
    path.unlink(missing_ok=True)
    return rows


def summarise(rows: list[dict[str, Any]], judges: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for j in judges:
        mine = [r for r in rows if r["judge"] == j]
        reg = [r for r in mine if r["kind"] == "regression"]
        null = [r for r in mine if r["kind"] == "null"]
        delays = [r["delay_s"] for r in reg if r["outcome"] == "detected"]
        out[j] = {
            "regression_runs": len(reg),
            "detected": sum(r["outcome"] == "detected" for r in reg),
            "detection_rate": (sum(r["outcome"] == "detected" for r in reg) / len(reg)) if reg else None,
            "median_delay_s": statistics.median(delays) if delays else None,
            "null_runs": len(null),
            "false_rollbacks": sum(r["outcome"] == "false_rollback" for r in null),
            "pre_onset_alarms": sum(r["outcome"] == "pre_onset_alarm" for r in reg),
            "errors": sum(r["outcome"] == "error" for r in mine),
        }
    return out


def _fmt_delay(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f} s"


def markdown(rows: list[dict[str, Any]], summary: dict[str, dict[str, Any]], judges: list[str]) -> str:
    lines = ["| judge | detection rate | median delay after onset | false rollbacks (null runs) | "
             "pre-onset alarms |", "|---|---|---|---|---|"]
    for j in judges:
        s = summary[j]
        rate = "–"
        if s["detection_rate"] is not None:
            rate = f"{s['detected']}/{s['regression_runs']} ({s['detection_rate']:.0%})"
        err = f" ({s['errors']} errors)" if s["errors"] else ""
        lines.append(f"| {j}{err} | {rate} | {_fmt_delay(s['median_delay_s'])} | "
                     f"{s['false_rollbacks']}/{s['null_runs']} | {s['pre_onset_alarms']} |")
    lines += ["", "| scenario | " + " | ".join(judges) + " |", "|---|" + "---|" * len(judges)]
    for case in CASES:
        cells = []
        for j in judges:
            mine = [r for r in rows if r["judge"] == j and r["scenario"] == case.name]
            if not mine:
                break
            if case.onset_s is None:
                cells.append(f"{sum(r['outcome'] == 'false_rollback' for r in mine)}/{len(mine)} false")
            else:
                d = [r["delay_s"] for r in mine if r["outcome"] == "detected"]
                early = sum(r["outcome"] == "pre_onset_alarm" for r in mine)
                cell = f"{len(d)}/{len(mine)}, {_fmt_delay(statistics.median(d) if d else None)}"
                cells.append(cell + (f", {early} early" if early else ""))
        else:
            lines.append(f"| {case.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _delay_note(row: dict[str, Any]) -> str:
    return "" if row["delay_s"] is None else f"({row['delay_s']:.0f}s)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one seed (a smoke run)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per scenario (default %(default)s)")
    p.add_argument("--first-seed", type=int, default=1)
    p.add_argument("--judges", default=",".join(JUDGES), help="comma-separated subset of %(default)s")
    p.add_argument("--scenarios", help="comma-separated subset of scenario names")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON results (default %(default)s)")
    args = p.parse_args(argv)
    judges = {j: JUDGES[j] for j in args.judges.split(",") if j}
    cases = [c for c in CASES if not args.scenarios or c.name in args.scenarios.split(",")]
    seeds = list(range(args.first_seed, args.first_seed + (1 if args.quick else args.seeds)))
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="watcher-detection-") as tmp:
        for case in cases:
            for seed in seeds:
                new = run_case(case, seed, judges, Path(tmp))
                rows.extend(new)
                brief = ", ".join(f"{r['judge']}={r['outcome']}" + _delay_note(r) for r in new)
                print(f"{case.name} seed {seed}: {brief}", file=sys.stderr)
    summary = summarise(rows, list(judges))
    table = markdown(rows, summary, list(judges))
    print(table)
    args.out.write_text(json.dumps({
        "seeds": seeds, "elapsed_s": round(time.perf_counter() - started, 1), "summary": summary,
        "scenarios": {c.name: {"description": c.description, "onset_s": c.onset_s, "kind":
                               "null" if c.onset_s is None else "regression"} for c in cases},
        "runs": rows,
    }, indent=1) + "\n")
    elapsed = time.perf_counter() - started
    print(f"\n{len(rows)} runs in {elapsed:.0f} s; results in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
