from __future__ import annotations

import json

import numpy as np
import pytest

from bench.detection.calibration import Setting, Tally, choose, flagger_grid, kayenta_grid
from bench.detection.reference_judges import (
    FLAGGER_TYPICAL,
    KAYENTA_TOLERANCE,
    FlaggerJudge,
    KayentaJudge,
    Prepared,
    flagger_ranges,
    load_stream,
    parse_ts,
    per_window,
)
from bench.detection.run import goal, outcome, paired_median, summarise
from bench.detection.scenarios import CASES_BY_NAME, ESCALATION_PER_TURN_FOR_3PP, NULLS, REGRESSIONS
from watcher.sim.scenario import expected_outcome

T0 = 1_795_766_400.0  # 2026-11-27T08:00:00Z


def _lines(
    minutes: int,
    *,
    seed: int = 0,
    per_min: int = 300,
    canary_share: float = 0.3,
    p_err_canary: float | None = None,
    err_from_min: int = 0,
    q_shift: float = 0.0,
    lat_factor: float = 1.0,
    with_marker: bool = True,
) -> list[bytes]:
    r = np.random.default_rng(seed)
    out = []
    if with_marker:
        marker = {
            "schema": "watcher.deployment/v1",
            "event_id": "d",
            "ts": "2026-11-27T08:00:00Z",
            "agent_id": "a",
            "action": "started",
            "strategy": "canary",
            "baseline_version": "v1",
            "canary_version": "v2",
        }
        out.append(json.dumps(marker).encode())
    for i in range(minutes * per_min):
        t = T0 + 0.5 + i * 60.0 / per_min
        canary = r.random() < canary_share
        minute = i // per_min
        p_err = p_err_canary if (canary and p_err_canary is not None and minute >= err_from_min) else 0.002
        ev = {
            "event_id": f"e{i}",
            "ts": t,
            "agent_id": "a",
            "version": "v2" if canary else "v1",
            "arm": "canary" if canary else "baseline",
            "conversation_id": f"c{i}",
            "latency_ms": float(np.exp(r.normal(6.0, 0.3)) * (lat_factor if canary else 1.0)),
            "quality": float(np.clip(r.normal(0.8, 0.05) + (q_shift if canary else 0.0), 0, 1)),
            "escalated": bool(r.random() < 0.005),
            "error": bool(r.random() < p_err),
            "compliance_violation": False,
        }
        out.append(json.dumps(ev).encode())
    return out


def test_parse_ts_rfc3339_and_numbers() -> None:
    assert parse_ts("2026-11-27T08:00:00Z") == T0
    assert parse_ts("2026-11-27T08:00:18.839Z") == pytest.approx(T0 + 18.839)
    assert parse_ts("2026-11-27T09:00:00+01:00") == T0
    assert parse_ts(T0 + 1.5) == T0 + 1.5


def test_load_stream_columns_arms_and_start() -> None:
    lines = _lines(2, per_min=50) + [b"not json", b""]
    s = load_stream(lines)
    assert s.start_ts == T0
    assert len(s.t) == 100 and s.canary.dtype == bool and 0 < s.canary.sum() < 100
    # Without the arm field the started marker's canary_version decides.
    no_arm = [json.dumps({k: v for k, v in json.loads(x).items() if k != "arm"}).encode() for x in lines[:-2]]
    assert (load_stream(no_arm).canary == s.canary).all()
    # Without a started marker the rollout starts at the first turn.
    assert load_stream(_lines(1, per_min=10, with_marker=False)).start_ts == pytest.approx(T0 + 0.5)


def test_per_window_values() -> None:
    s = load_stream(_lines(3, per_min=100))
    w = per_window(s, s.canary, 60.0, 3)
    assert w["n"].sum() == s.canary.sum()
    assert np.allclose(w["quality"], 0.8, atol=0.03)
    assert np.all(w["latency_p99"] >= w["latency_p95"])


# -- Flagger ---------------------------------------------------------------------------------------


def test_flagger_healthy_canary_passes() -> None:
    s = load_stream(_lines(20))
    assert FlaggerJudge().rollback_time(s) is None
    assert all(passed for _, passed, _ in FlaggerJudge().checks(s))


def test_flagger_rolls_back_on_the_fifth_failed_check() -> None:
    # Canary errors at 10 % from minute 4: checks 5..9 fail, rollback at the end of minute 9.
    s = load_stream(_lines(20, p_err_canary=0.10, err_from_min=4))
    checks = FlaggerJudge().checks(s)
    assert [passed for _, passed, _ in checks[:4]] == [True] * 4
    assert "error=" in checks[4][2]
    assert FlaggerJudge().rollback_time(s) == T0 + 9 * 60


def test_flagger_total_versus_consecutive_counter() -> None:
    j = FlaggerJudge(ranges={"quality": (0.5, None)}, threshold=3)
    s = load_stream(_lines(12))
    # Fail minutes 1, 3, 5 only: total count reaches 3 at minute 5; consecutive never does.
    for m in (1, 3, 5):
        sel = (s.t >= T0 + 60 * m) & (s.t < T0 + 60 * (m + 1))
        s.quality[sel] = 0.1
    assert j.rollback_time(s) == T0 + 6 * 60
    consecutive = FlaggerJudge(ranges={"quality": (0.5, None)}, threshold=3, consecutive=True)
    assert consecutive.rollback_time(s) is None


def test_flagger_counts_a_minute_without_canary_traffic_as_failed() -> None:
    s = load_stream(_lines(10, canary_share=0.0))
    assert FlaggerJudge().rollback_time(s) == T0 + 5 * 60


# -- Kayenta ---------------------------------------------------------------------------------------


def test_kayenta_identical_arms_pass() -> None:
    s = load_stream(_lines(30, seed=3))
    assert KayentaJudge().rollback_time(s) is None


def test_kayenta_critical_error_metric_rolls_back_at_first_interval() -> None:
    s = load_stream(_lines(30, p_err_canary=0.05))
    j = KayentaJudge()
    score, reasons = j.score(s, 600.0)
    assert score == 0.0 and any(r.startswith("error") for r in reasons)
    assert j.rollback_time(s) == T0 + 600


def test_kayenta_single_noncritical_failure_is_marginal_until_the_last_interval() -> None:
    # Latency +30 %: p95 and p99 fail, 4 of 6 pass: 66.7 < marginal 75 -> rollback at the first interval.
    s = load_stream(_lines(30, lat_factor=1.3))
    assert KayentaJudge().rollback_time(s) == T0 + 600
    # Quality -0.1 fails one metric of six: 83.3 >= marginal, but < pass at the final interval.
    s = load_stream(_lines(30, q_shift=-0.1))
    j = KayentaJudge(lifetime_s=1800.0)
    score, reasons = j.score(s, 600.0)
    assert score == pytest.approx(100 * 5 / 6) and reasons[0].startswith("quality")
    assert j.rollback_time(s) == T0 + 1800


def test_kayenta_tolerance_lets_small_significant_changes_pass() -> None:
    s = load_stream(_lines(30, q_shift=-0.02, per_min=600))
    verdict, reason = KayentaJudge().classify(
        "quality", per_window(s, s.canary, 60, 30)["quality"], per_window(s, ~s.canary, 60, 30)["quality"]
    )
    assert verdict == "pass" and "within tolerance" in reason


def test_flagger_min_turns_skips_thin_minutes_instead_of_failing() -> None:
    s = load_stream(_lines(10, canary_share=0.0))
    assert FlaggerJudge(min_turns=1).rollback_time(s) is None
    assert FlaggerJudge(min_turns=1).checks(s) == []
    # A guard of 30 turns skips minutes with ~9 canary turns even when they would fail.
    bad = load_stream(_lines(10, per_min=30, canary_share=0.3, p_err_canary=0.5))
    assert FlaggerJudge().rollback_time(bad) is not None
    assert FlaggerJudge(min_turns=30).rollback_time(bad) is None


def test_flagger_ranges_scale_the_headroom_over_the_healthy_level() -> None:
    assert all(flagger_ranges(1.0)[m] == pytest.approx(v) for m, v in FLAGGER_TYPICAL.items())
    r2 = flagger_ranges(2.0)
    assert r2["error"][1] == pytest.approx(0.005 + 2 * (0.02 - 0.005))
    assert r2["quality"][0] == pytest.approx(0.775 - 2 * (0.775 - 0.74)) and r2["quality"][1] is None


# -- shared preparation ----------------------------------------------------------------------------


def test_prepared_stream_gives_the_same_verdicts_as_the_raw_stream() -> None:
    s = load_stream(_lines(30, p_err_canary=0.05, err_from_min=12))
    p = Prepared(s)
    for judge in (KayentaJudge(), KayentaJudge(lifetime_s=1800.0, marginal=90.0), FlaggerJudge()):
        assert judge.rollback(p) == judge.rollback(s)
    # Scope since the start: 8 bad minutes of 20 are not significant yet, 18 of 30 are.
    assert KayentaJudge().rollback_time(p) == T0 + 1800


def test_kayenta_equal_baseline_is_a_fixed_sample_of_the_canarys_size() -> None:
    s = load_stream(_lines(30, canary_share=0.1))
    m = Prepared(s).mask("baseline_equal")
    assert not (m & s.canary).any()
    assert abs(int(m.sum()) - int(s.canary.sum())) < 0.15 * s.canary.sum()
    assert (Prepared(s).mask("baseline_equal") == m).all()  # deterministic
    assert KayentaJudge(baseline="baseline_equal").rollback_time(s) is None


# -- calibration -------------------------------------------------------------------------------------


def test_choose_prefers_no_false_alarm_then_detections_then_speed() -> None:
    grid = [
        Setting("flagger", (("headroom_scale", x), ("failed_checks", 5), ("min_turns", 0)))
        for x in (1, 2, 3, 4)
    ]
    tallies = {s: Tally() for s in grid}
    # 1: most sensitive but a false alarm; 2: two detections, slow; 3: two detections, fast; 4: one.
    for stop in (None, 10.0):
        tallies[grid[0]].add("null", None, stop)
    for setting, delays in ((grid[1], (500.0, 700.0)), (grid[2], (300.0, 400.0)), (grid[3], (100.0, None))):
        for d in delays:
            tallies[setting].add("regression", 1000.0, None if d is None else 1000.0 + d)
    tallies[grid[0]].add("regression", 1000.0, 1100.0)
    chosen, why = choose(grid, tallies)
    assert chosen == grid[2] and "3/4" in why
    assert tallies[grid[2]].to_dict()["median_delay_s"] == 350.0
    pre = Tally()
    pre.add("regression", 1000.0, 900.0)  # a stop before the onset is a false alarm, not a detection
    assert pre.false_alarms == 1 and pre.to_dict()["detected"] == 0
    assert choose(grid[:1], {grid[0]: tallies[grid[0]]})[0] is None
    j = grid[1].judge()
    assert isinstance(j, FlaggerJudge) and j.ranges["error"][1] == pytest.approx(0.035)


def test_grids_start_from_the_typical_defaults() -> None:
    f, k = flagger_grid()[0].judge(), kayenta_grid()[0].judge(1800.0)
    assert isinstance(f, FlaggerJudge) and isinstance(k, KayentaJudge)
    assert f.threshold == FlaggerJudge().threshold and f.min_turns == 0
    assert all(f.ranges[m] == pytest.approx(v) for m, v in FLAGGER_TYPICAL.items())
    assert (k.marginal, k.confidence, k.baseline, k.tolerance) == (75.0, 0.98, "baseline", KAYENTA_TOLERANCE)


# -- scenarios -----------------------------------------------------------------------------------------


def test_scenarios_have_the_issue_sizes_and_realistic_traffic() -> None:
    by = CASES_BY_NAME
    assert {c.name for c in REGRESSIONS} == {
        "escalation_+3pp",
        "segment_quality",
        "latency_+25%",
        "slow_tail_5%",
        "errors_x4",
        "compliance_x5",
        "gradual_quality",
        "from_first_minute",
    }
    for c in REGRESSIONS:
        assert expected_outcome(c.scenario) == "regression"
        assert c.onset_s == min(r.start_s for r in c.scenario.regressions if r.harmful)
        assert c.scenario.conversations_per_s == 20.0 and c.scenario.canary_weight == 0.1
        assert 1800.0 <= c.scenario.duration_s <= 3600.0
    for c in NULLS:
        assert expected_outcome(c.scenario) == "null" and c.onset_s is None
    (esc,) = by["escalation_+3pp"].scenario.regressions
    assert (esc.metric.value, esc.size, esc.mode.value) == ("escalation", ESCALATION_PER_TURN_FOR_3PP, "add")
    up, down = by["segment_quality"].scenario.regressions
    assert up.size + down.size == pytest.approx(-0.15) and down.segment == {"intent": "cancellation"}
    assert up.size * 0.9 + (up.size + down.size) * 0.1 > 0  # the average improves
    (lat,) = by["latency_+25%"].scenario.regressions
    assert (lat.size, lat.mode.value) == (0.25, "add")
    (tail,) = by["slow_tail_5%"].scenario.regressions
    assert (tail.size, tail.slow_factor) == (0.05, 4.0)
    assert by["errors_x4"].scenario.regressions[0].size == 4.0
    assert by["compliance_x5"].scenario.regressions[0].size == 5.0
    assert by["gradual_quality"].scenario.regressions[0].shape.value == "gradual"
    assert by["from_first_minute"].onset_s == 0.0


# -- harness -------------------------------------------------------------------------------------------


def test_outcome_and_goal_bookkeeping() -> None:
    assert outcome(None, None, None) == "quiet" and outcome(None, 5.0, None) == "false_rollback"
    assert outcome(10.0, None, None) == "missed" and outcome(10.0, 5.0, None) == "pre_onset_alarm"
    assert outcome(10.0, 10.0, None) == "detected" and outcome(10.0, 11.0, "boom") == "error"
    rows = []
    for judge, delays, false in (
        ("watcher", (100.0, 200.0), 0),
        ("kayenta", (600.0, 900.0), 0),
        ("flagger", (50.0, None), 1),
    ):
        for seed, d in enumerate(delays):
            rows.append(
                {
                    "judge": judge,
                    "scenario": "r",
                    "seed": seed,
                    "kind": "regression",
                    "outcome": "missed" if d is None else "detected",
                    "delay_s": d,
                }
            )
        rows.append(
            {
                "judge": judge,
                "scenario": "n",
                "seed": 0,
                "kind": "null",
                "outcome": "false_rollback" if false else "quiet",
                "delay_s": None,
            }
        )
    summary = summarise(rows, ["watcher", "kayenta", "flagger"])
    g = goal(rows, summary, "watcher")
    assert g["best_clean_reference"] == "kayenta"  # flagger is faster but has a false rollback
    assert g["met"] and g["vs_clean_references"]["kayenta"]["ratio_of_medians"] == pytest.approx(150 / 750)
    assert paired_median(rows, "watcher", "flagger") == (100.0, 50.0, 1)
