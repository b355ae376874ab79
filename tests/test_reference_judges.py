from __future__ import annotations

import json

import numpy as np
import pytest

from bench.detection.reference_judges import FlaggerJudge, KayentaJudge, load_stream, parse_ts, per_window

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
        marker = {"schema": "watcher.deployment/v1", "event_id": "d", "ts": "2026-11-27T08:00:00Z",
                  "agent_id": "a", "action": "started", "strategy": "canary",
                  "baseline_version": "v1", "canary_version": "v2"}
        out.append(json.dumps(marker).encode())
    for i in range(minutes * per_min):
        t = T0 + 0.5 + i * 60.0 / per_min
        canary = r.random() < canary_share
        minute = i // per_min
        p_err = p_err_canary if (canary and p_err_canary is not None and minute >= err_from_min) else 0.002
        ev = {
            "event_id": f"e{i}", "ts": t, "agent_id": "a", "version": "v2" if canary else "v1",
            "arm": "canary" if canary else "baseline", "conversation_id": f"c{i}",
            "latency_ms": float(np.exp(r.normal(6.0, 0.3)) * (lat_factor if canary else 1.0)),
            "quality": float(np.clip(r.normal(0.8, 0.05) + (q_shift if canary else 0.0), 0, 1)),
            "escalated": bool(r.random() < 0.005), "error": bool(r.random() < p_err),
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
