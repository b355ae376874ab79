"""The detection benchmark: watcher and two reference judges on simulated canaries (issue #3).

    python -m bench.detection.run            # full run: calibration (3 seeds) + 16 scenarios x 5 seeds
    python -m bench.detection.run --quick    # 1 calibration seed, 1 evaluation seed (a smoke run)
    python -m bench.detection.run --policy cand.yaml --judges watcher,watcher[cand] --no-calibration

For every scenario × seed the simulator writes a JSONL stream to a temporary directory; every judge
reads it and reports the event time at which it first stops the canary (watcher: its first
``pause`` or ``rollback`` decision from ``watcher.service.replay.replay_decisions``, the daemon's engine;
the references: their rollback). Delay = stop − onset (scenario start + the regression's start).
A stop in a null scenario is a false rollback; a stop before the onset of a regression is a
pre-onset alarm (false as well), not a detection.

Before the evaluation, each reference judge is calibrated (bench/detection/calibration.py) on the
same scenarios generated with *other* seeds (101, 102, ...): the "calibrated" rows use the most
sensitive setting of a small grid with no false alarm there. Prints Markdown tables, writes
bench/detection/results.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.detection import calibration as cal
from bench.detection import everyday
from bench.detection.reference_judges import FlaggerJudge, KayentaJudge, Prepared, load_jsonl
from bench.detection.scenarios import CASES, Case
from bench.detection.yardstick import Yardstick
from watcher.sim.simulate import write_jsonl

RESULTS = Path(__file__).with_name("results.json")
RESULTS_EVERYDAY = Path(__file__).with_name("results_everyday.json")  # --regime everyday
STOP_ACTIONS = frozenset({"pause", "rollback"})
CALIBRATION_FIRST_SEED = 101  # disjoint from the evaluation seeds (1, 2, ...)

Stop = tuple[float, str]  # (event time of the first pause/rollback, its reason)
JudgeFn = Callable[[Path, Prepared, Case], "Stop | None"]
LABELS = {
    "watcher": "watcher (bundled policy)",
    "flagger": "flagger, typical defaults",
    "flagger_cal": "flagger, calibrated",
    "kayenta": "kayenta, typical defaults",
    "kayenta_cal": "kayenta, calibrated",
    "yardstick": "plain anytime-valid yardstick",
}
NOT_APPLICABLE = (float("nan"), "n/a")  # a judge that cannot judge this strategy


def watcher_judge(policy: Path | None = None) -> JudgeFn:
    def judge(path: Path, prepared: Prepared, case: Case) -> Stop | None:
        from watcher.service.replay import replay_decisions  # late: the references run without watcher

        decisions = replay_decisions(path, policy_path=policy, until=STOP_ACTIONS)
        stops = [d for d in decisions if d["action"] in STOP_ACTIONS]
        if not stops:
            return None
        first = min(stops, key=lambda d: d["ts_unix"])
        return first["ts_unix"], first["reason"]

    return judge


def flagger_judge(path: Path, prepared: Prepared, case: Case) -> Stop | None:
    return FlaggerJudge().rollback(prepared)


def kayenta_judge(path: Path, prepared: Prepared, case: Case) -> Stop | None:
    # The canary's planned lifetime is the scenario's duration: its last 10-minute interval is
    # judged against the pass score (95), the earlier ones against the marginal score (75).
    return KayentaJudge(lifetime_s=case.scenario.duration_s).rollback(prepared)


def yardstick_judge(path: Path, prepared: Prepared, case: Case) -> Stop | None:
    if case.scenario.strategy not in ("canary", "flag"):
        return NOT_APPLICABLE
    return Yardstick().rollback(path)


def setting_judge(setting: cal.Setting) -> JudgeFn:
    def judge(path: Path, prepared: Prepared, case: Case) -> Stop | None:
        return setting.judge(case.scenario.duration_s).rollback(prepared)

    return judge


class _LazyPrepared(Prepared):
    """The references' prepared stream, loaded on first use (the everyday regime runs without them).

    A ``Prepared`` (the references' ``prepare`` takes it as it is) whose attributes are set on the
    first access of one of them."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def __getattr__(self, name: str) -> Any:  # only for attributes not set yet
        if name == "_path":
            raise AttributeError(name)
        Prepared.__init__(self, load_jsonl(self._path))
        return object.__getattribute__(self, name)


def materialise(case: Case, seed: int, workdir: Path) -> tuple[Path, Prepared, float | None, int]:
    scenario = replace(case.scenario, seed=seed)
    path = workdir / f"{case.name.replace(':', '_')}-{seed}.jsonl"
    events = write_jsonl(scenario, path)
    onset = scenario.start_ts + case.onset_s if case.onset_s is not None else None
    return path, _LazyPrepared(path), onset, events


def calibrate(cases: list[Case], seeds: list[int], workdir: Path) -> dict[str, Any]:
    """Evaluate both grids on the calibration runs and choose each tool's setting."""
    grids = {"flagger": cal.flagger_grid(), "kayenta": cal.kayenta_grid()}
    tallies = {tool: {s: cal.Tally() for s in grid} for tool, grid in grids.items()}
    for case in cases:
        for seed in seeds:
            path, prepared, onset, _ = materialise(case, seed, workdir)
            for tool, grid in grids.items():
                for setting in grid:
                    found = setting.judge(case.scenario.duration_s).rollback(prepared)
                    tallies[tool][setting].add(case.kind, onset, found[0] if found else None)
            path.unlink(missing_ok=True)
            print(f"calibration {case.name} seed {seed}", file=sys.stderr)
    out: dict[str, Any] = {"seeds": seeds}
    for tool, grid in grids.items():
        chosen, why = cal.choose(grid, tallies[tool])
        out[tool] = {"chosen": chosen, "why": why, "grid": cal.summary(grid, tallies[tool])}
    return out


def outcome(onset: float | None, stop: float | None, error: str | None) -> str:
    if error is not None:
        return "error"
    if stop is not None and stop != stop:  # NaN: NOT_APPLICABLE
        return "n/a"
    if onset is None:
        return "false_rollback" if stop is not None else "quiet"
    if stop is None:
        return "missed"
    return "detected" if stop >= onset else "pre_onset_alarm"


def run_case(case: Case, seed: int, judges: dict[str, JudgeFn], workdir: Path) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    path, prepared, onset, events = materialise(case, seed, workdir)
    gen_s = time.perf_counter() - t0
    rows = []
    for name, judge in judges.items():
        t1 = time.perf_counter()
        error, stop, reason = None, None, None
        try:
            found = judge(path, prepared, case)
            if found is not None:
                stop, reason = found
        except Exception as exc:  # one judge failing must not lose the others' results
            error = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=sys.stderr)
        result = outcome(onset, stop, error)
        rows.append(
            {
                "scenario": case.name,
                "kind": case.kind,
                "seed": seed,
                "judge": name,
                "events": events,
                "start_ts": case.scenario.start_ts,
                "onset_ts": onset,
                "stop_ts": stop,
                "delay_s": (stop - onset) if result == "detected" else None,  # type: ignore[operator]
                "outcome": result,
                "reason": reason,
                "error": error,
                "judge_seconds": round(time.perf_counter() - t1, 3),
                "prepare_seconds": round(gen_s, 3),
            }
        )
    path.unlink(missing_ok=True)
    return rows


_worker_judges: dict[str, JudgeFn] = {}


def _init_worker(judges: dict[str, JudgeFn]) -> None:
    global _worker_judges
    _worker_judges = judges


def _run_in_worker(case: Case, seed: int, workdir: Path) -> list[dict[str, Any]]:
    return run_case(case, seed, _worker_judges, workdir)


def run_all(
    runs: list[tuple[Case, int]], judges: dict[str, JudgeFn], workdir: Path, jobs: int = 1
) -> list[dict[str, Any]]:
    """Every (case, seed) run, in ``jobs`` processes; rows in the order of ``runs`` whatever the
    order of completion. Each run is independent (its own stream, seeded), so the rows do not depend
    on ``jobs``. Workers are forked: the judges (closures over a policy file) reach them without
    pickling; only the (case, seed) and the rows cross the process boundary."""

    def report(case: Case, seed: int, new: list[dict[str, Any]]) -> None:
        print(f"{case.name} seed {seed}: " + ", ".join(map(_brief, new)), file=sys.stderr)

    if jobs <= 1:
        out = []
        for case, seed in runs:
            new = run_case(case, seed, judges, workdir)
            report(case, seed, new)
            out.extend(new)
        return out
    done: dict[int, list[dict[str, Any]]] = {}
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(judges,)) as pool:
        futures = {pool.submit(_run_in_worker, case, seed, workdir): i for i, (case, seed) in enumerate(runs)}
        for fut in as_completed(futures):
            i = futures[fut]
            done[i] = fut.result()
            report(*runs[i], done[i])
    return [row for i in range(len(runs)) for row in done[i]]


def summarise(rows: list[dict[str, Any]], judges: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for j in judges:
        mine = [r for r in rows if r["judge"] == j and r["outcome"] != "n/a"]
        reg = [r for r in mine if r["kind"] == "regression"]
        null = [r for r in mine if r["kind"] == "null"]
        delays = [r["delay_s"] for r in reg if r["outcome"] == "detected"]
        out[j] = {
            "regression_runs": len(reg),
            "detected": len(delays),
            "detection_rate": len(delays) / len(reg) if reg else None,
            "median_delay_s": statistics.median(delays) if delays else None,
            "null_runs": len(null),
            "false_rollbacks": sum(r["outcome"] == "false_rollback" for r in null),
            "pre_onset_alarms": sum(r["outcome"] == "pre_onset_alarm" for r in reg),
            "errors": sum(r["outcome"] == "error" for r in mine),
        }
    return out


def paired_median(rows: list[dict[str, Any]], a: str, b: str) -> tuple[float | None, float | None, int]:
    """Median delays of judges a and b over the regression runs both detected."""
    key = {(r["judge"], r["scenario"], r["seed"]): r for r in rows}
    pairs = [
        (key[(a, s, k)]["delay_s"], r["delay_s"])
        for (j, s, k), r in key.items()
        if j == b and r["outcome"] == "detected" and key.get((a, s, k), {}).get("outcome") == "detected"
    ]
    if not pairs:
        return None, None, 0
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs), len(pairs)


def goal(rows: list[dict[str, Any]], summary: dict[str, dict[str, Any]], subject: str) -> dict[str, Any]:
    """The issue's goal for one watcher row: no false alarm, every regression caught, median delay
    below half of the best reference without false alarms (best: most detections, then fastest)."""
    s = summary[subject]
    clean = [
        j
        for j, v in summary.items()
        if not j.startswith("watcher")
        and v["false_rollbacks"] == 0
        and v["pre_onset_alarms"] == 0
        and v["errors"] == 0
        and v["detected"] > 0
    ]
    best = min(clean, key=lambda j: (-summary[j]["detected"], summary[j]["median_delay_s"]), default=None)
    out: dict[str, Any] = {
        "no_false_alarm": s["false_rollbacks"] == 0 and s["pre_onset_alarms"] == 0,
        "all_caught": s["detected"] == s["regression_runs"],
        "best_clean_reference": best,
        "vs_clean_references": {},
    }
    for j in clean:
        mine, theirs, n = paired_median(rows, subject, j)
        out["vs_clean_references"][j] = {
            "ratio_of_medians": (s["median_delay_s"] / summary[j]["median_delay_s"])
            if s["median_delay_s"] is not None
            else None,
            "paired_runs": n,
            "paired_median_subject_s": mine,
            "paired_median_reference_s": theirs,
        }
    ratio = out["vs_clean_references"].get(best, {}).get("ratio_of_medians") if best else None
    out["under_half_of_best"] = ratio is not None and ratio < 0.5
    out["met"] = out["no_false_alarm"] and out["all_caught"] and out["under_half_of_best"]
    return out


def everyday_goal(rows: list[dict[str, Any]], subject: str = "watcher") -> dict[str, Any]:
    """Issue #14's goals, per strategy: median delay <= 8 min over the required types, no type slower
    than the plain yardstick (per-type medians, where the yardstick judges), escalation +3 pp within
    60 min, no false stop in the nulls."""
    out: dict[str, Any] = {}
    strategies = sorted({r["scenario"].split(":")[0] for r in rows})
    for st in strategies:
        mine = [r for r in rows if r["scenario"].startswith(st + ":") and r["judge"] == subject]
        required = [
            r for r in mine if r["kind"] == "regression" and r["scenario"].split(":")[1] in everyday.TYPES
        ]
        delays = [r["delay_s"] for r in required if r["outcome"] == "detected"]
        slower = {}
        for t in everyday.TYPES:
            ours = [
                r["delay_s"] for r in required if r["scenario"] == f"{st}:{t}" and r["outcome"] == "detected"
            ]
            ref = [
                r["delay_s"]
                for r in rows
                if r["judge"] == "yardstick" and r["scenario"] == f"{st}:{t}" and r["outcome"] == "detected"
            ]
            if ref and (not ours or statistics.median(ours) > statistics.median(ref)):
                slower[t] = (statistics.median(ours) if ours else None, statistics.median(ref))
        esc = [r["delay_s"] for r in required if r["scenario"] == f"{st}:escalation_+3pp"]
        nulls = [r for r in mine if r["kind"] == "null"]
        out[st] = {
            "caught": f"{len(delays)}/{len(required)}",
            "median_delay_s": statistics.median(delays) if delays else None,
            "median_within_8_min": bool(delays) and statistics.median(delays) <= 480,
            "types_slower_than_yardstick": slower,
            "escalation_3pp_within_60_min": bool(esc) and all(d is not None and d <= 3600 for d in esc),
            "false_stops": f"{sum(r['outcome'] == 'false_rollback' for r in nulls)}/{len(nulls)}",
        }
    return out


def _fmt_delay(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f} s"


def markdown(
    rows: list[dict[str, Any]], summary: dict[str, dict[str, Any]], judges: list[str], cases: list[Case]
) -> str:
    lines = [
        "| judge | detection rate | median delay after onset | false rollbacks (null runs) | "
        "pre-onset alarms |",
        "|---|---|---|---|---|",
    ]
    for j in judges:
        s = summary[j]
        rate = (
            "–"
            if s["detection_rate"] is None
            else f"{s['detected']}/{s['regression_runs']} ({s['detection_rate']:.0%})"
        )
        err = f" ({s['errors']} errors)" if s["errors"] else ""
        lines.append(
            f"| {LABELS.get(j, j)}{err} | {rate} | {_fmt_delay(s['median_delay_s'])} | "
            f"{s['false_rollbacks']}/{s['null_runs']} | {s['pre_onset_alarms']} |"
        )
    lines += ["", "| scenario | " + " | ".join(judges) + " |", "|---|" + "---|" * len(judges)]
    for case in cases:
        cells = []
        for j in judges:
            mine = [r for r in rows if r["judge"] == j and r["scenario"] == case.name]
            if mine and all(r["outcome"] == "n/a" for r in mine):
                cells.append("n/a")
                continue
            if case.onset_s is None:
                cells.append(f"{sum(r['outcome'] == 'false_rollback' for r in mine)}/{len(mine)} false")
                continue
            d = [r["delay_s"] for r in mine if r["outcome"] == "detected"]
            early = sum(r["outcome"] == "pre_onset_alarm" for r in mine)
            cell = f"{len(d)}/{len(mine)}, {_fmt_delay(statistics.median(d) if d else None)}"
            cells.append(cell + (f", {early} early" if early else ""))
        lines.append(f"| {case.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _brief(r: dict[str, Any]) -> str:
    return f"{r['judge']}={r['outcome']}" + ("" if r["delay_s"] is None else f"({r['delay_s']:.0f}s)")


def results_path(args: argparse.Namespace) -> Path:
    """Where the results go without --out: the committed file only for a full run of every judge
    and scenario; a smoke run (--quick) or a subset goes to a temporary file."""
    if (
        args.quick
        or args.judges
        or args.scenarios
        or args.strategies
        or args.kind != "all"
        or args.onset_delay
    ):
        return Path(tempfile.gettempdir()) / "watcher-detection-partial.json"
    return RESULTS_EVERYDAY if args.regime == "everyday" else RESULTS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one calibration and one evaluation seed")
    p.add_argument("--seeds", type=int, default=5, help="evaluation seeds per scenario (default %(default)s)")
    p.add_argument("--first-seed", type=int, default=1)
    p.add_argument("--calibration-seeds", type=int, default=3, help="seeds 101.. (default %(default)s)")
    p.add_argument("--no-calibration", action="store_true", help="skip the calibrated reference rows")
    p.add_argument(
        "--calibration-exclude",
        default="",
        help="comma-separated scenarios left out of the calibration (a what-if, see docs/detection.md)",
    )
    p.add_argument(
        "--policy",
        type=Path,
        action="append",
        default=[],
        help="also run watcher with this policy file (judge name watcher[<file stem>])",
    )
    p.add_argument(
        "--regime",
        choices=("fast", "everyday"),
        default="fast",
        help="fast: issue #3's 20 conversations/s, 30-60 min; everyday: issue #14's 4 conversations/s, "
        "3 h, every strategy, watcher vs the plain yardstick (default %(default)s)",
    )
    p.add_argument(
        "--null-seeds",
        type=int,
        help="everyday: seeds per null scenario (default: 84 for the six kinds the issue lists and 4 x "
        "--seeds for the others at --seeds 5, i.e. 504 + 20 each; scaled with --seeds)",
    )
    p.add_argument("--strategies", help="everyday: comma-separated strategies (default: all)")
    p.add_argument(
        "--onset-delay",
        type=float,
        default=0.0,
        help="everyday: start every regression this many seconds later (300, 600, 900: between two "
        "restarts of a 20-min grid, the yardstick's; the results go to a temporary file)",
    )
    p.add_argument(
        "--kind",
        choices=("all", "regression", "null"),
        default="all",
        help="only the regression or only the null scenarios (default %(default)s)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs in parallel processes (default %(default)s; the results do not depend on it)",
    )
    p.add_argument("--judges", help="comma-separated subset of the judges (default: all)")
    p.add_argument("--scenarios", help="comma-separated subset of scenario names (calibration uses all)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON results (default {RESULTS.name}, {RESULTS_EVERYDAY.name} with --regime everyday, next "
        "to this file; with --quick, --judges, --scenarios or --strategies "
        "a temporary file, so a smoke run or a subset never replaces the committed figures)",
    )
    args = p.parse_args(argv)
    started = time.perf_counter()
    args.out = args.out or results_path(args)
    seeds = list(range(args.first_seed, args.first_seed + (1 if args.quick else args.seeds)))
    cal_seeds = list(
        range(CALIBRATION_FIRST_SEED, CALIBRATION_FIRST_SEED + (1 if args.quick else args.calibration_seeds))
    )
    everyday_run = args.regime == "everyday"
    null_seeds: dict[str, list[int]] = {}
    if everyday_run:
        strategies = tuple(args.strategies.split(",") if args.strategies else everyday.STRATEGY_SCENARIOS)
        pool = everyday.regression_cases(strategies, extra=True, delay_s=args.onset_delay) + list(
            everyday.NULLS
        )
        for case in everyday.NULLS:
            n = args.null_seeds or round(len(seeds) * everyday.NULL_SEEDS_PER_SEED.get(case.name, 4))
            null_seeds[case.name] = list(range(args.first_seed, args.first_seed + n))
        args.no_calibration = True
    else:
        pool = list(CASES)
    cases = [c for c in pool if not args.scenarios or c.name in args.scenarios.split(",")]
    cases = [c for c in cases if args.kind in ("all", c.kind)]
    judges: dict[str, JudgeFn] = {"watcher": watcher_judge()}
    for policy in args.policy:
        judges[f"watcher[{policy.stem}]"] = watcher_judge(policy)
    if everyday_run:
        judges["yardstick"] = yardstick_judge
    else:
        judges |= {"flagger": flagger_judge, "kayenta": kayenta_judge}
    wanted = args.judges.split(",") if args.judges else None
    calibration: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="watcher-detection-") as tmp:
        if not args.no_calibration and (wanted is None or {"flagger_cal", "kayenta_cal"} & set(wanted)):
            excluded = set(args.calibration_exclude.split(",")) - {""}
            calibration = calibrate([c for c in CASES if c.name not in excluded], cal_seeds, Path(tmp))
            calibration["excluded"] = sorted(excluded)
            for tool in ("flagger", "kayenta"):
                chosen = calibration[tool]["chosen"]
                print(f"{tool} calibrated: {calibration[tool]['why']}", file=sys.stderr)
                if chosen is not None:
                    judges[f"{tool}_cal"] = setting_judge(chosen)
        if wanted is not None:
            judges = {j: f for j, f in judges.items() if j in wanted}
        runs = [
            (case, seed)
            for case in cases
            for seed in (null_seeds.get(case.name, seeds) if case.onset_s is None else seeds)
        ]
        rows = run_all(runs, judges, Path(tmp), args.jobs)
    names = list(judges)
    summary = summarise(rows, names)
    goals = {j: goal(rows, summary, j) for j in names if j.startswith("watcher")}
    if everyday_run:
        goals = {j: everyday_goal(rows, j) for j in names if j.startswith("watcher")}
    print(markdown(rows, summary, names, cases))
    for j, g in goals.items():
        if everyday_run:
            for st, v in g.items():
                print(f"\n{j}, {st}: {json.dumps(v)}")
            continue
        print(f"\ngoal for {j}: {'met' if g['met'] else 'NOT met'} — {json.dumps(g)}")
    for tool in ("flagger", "kayenta"):
        if tool in calibration:
            calibration[tool]["chosen"] = (
                dict(calibration[tool]["chosen"].knobs) if calibration[tool]["chosen"] is not None else None
            )
    elapsed = round(time.perf_counter() - started, 1)
    args.out.write_text(
        json.dumps(
            {
                "seeds": seeds,
                "elapsed_s": elapsed,
                "policies": [str(x) for x in args.policy],
                "summary": summary,
                "goal": goals,
                "calibration": calibration,
                "scenarios": {
                    c.name: {
                        "description": c.description,
                        "onset_s": c.onset_s,
                        "kind": c.kind,
                        "duration_s": c.scenario.duration_s,
                    }
                    for c in cases
                },
                "runs": rows,
            },
            indent=1,
            default=str,
        )
        + "\n"
    )
    print(f"\n{len(rows)} runs in {elapsed:.0f} s; results in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
