"""The telemetry simulator: determinism, the event contract, and injected effects of the right size."""

from __future__ import annotations

import argparse
import json
import math
import re
from calendar import timegm
from dataclasses import replace
from functools import cache, lru_cache
from pathlib import Path
from time import strptime
from typing import Any

import numpy as np
import pytest

from watcher.errors import ConfigError
from watcher.judges import STRATEGIES as REGISTRY
from watcher.sim import simulate as sim

SMALL = sim.Scenario(seed=7, duration_s=120.0, conversations_per_s=20.0)
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
TURN_FIELDS = {
    "schema",
    "event_id",
    "ts",
    "agent_id",
    "environment",
    "version",
    "arm",
    "conversation_id",
    "turn",
    "segment",
    "latency_ms",
    "quality",
    "escalated",
    "error",
    "compliance_violation",
    "tokens_in",
    "tokens_out",
    "cost_usd",
}


def _events(s: sim.Scenario) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in sim.generate(s)]


@lru_cache(maxsize=16)
def _cached(s: sim.Scenario) -> list[dict[str, Any]]:
    return _events(s)


def _turns(s: sim.Scenario) -> list[dict[str, Any]]:
    return [e for e in _cached(s) if e["schema"] == "watcher.turn/v1"]


@cache
def _epoch(second: str) -> int:
    return timegm(strptime(second, "%Y-%m-%dT%H:%M:%S"))


def _t(s: sim.Scenario, e: dict[str, Any]) -> float:
    """Scenario seconds of an event from its RFC 3339 ts."""
    return _epoch(e["ts"][:19]) + int(e["ts"][20:23]) / 1000 - s.start_ts


def _check_turn(e: dict[str, Any]) -> None:
    assert set(e) == TURN_FIELDS
    for name in ("event_id", "agent_id", "version", "conversation_id"):
        assert isinstance(e[name], str) and 1 <= len(e[name]) <= 128
    assert TS_RE.match(e["ts"])
    assert e["arm"] in ("baseline", "canary", None)
    assert isinstance(e["turn"], int) and e["turn"] >= 0
    seg = e["segment"]
    assert isinstance(seg, dict) and len(seg) <= 16
    assert all(isinstance(k, str) and isinstance(v, str) and len(v) <= 64 for k, v in seg.items())
    assert isinstance(e["latency_ms"], float) and math.isfinite(e["latency_ms"]) and e["latency_ms"] >= 0
    assert e["quality"] is None or (isinstance(e["quality"], (int, float)) and 0 <= e["quality"] <= 1)
    for name in ("escalated", "error", "compliance_violation"):
        assert isinstance(e[name], bool)
    for name in ("tokens_in", "tokens_out"):
        assert isinstance(e[name], int) and e[name] >= 0
    assert isinstance(e["cost_usd"], float) and math.isfinite(e["cost_usd"]) and e["cost_usd"] >= 0


def _check_marker(e: dict[str, Any]) -> None:
    assert e["schema"] == "watcher.deployment/v1"
    assert isinstance(e["event_id"], str) and e["event_id"]
    assert TS_RE.match(e["ts"])
    assert e["action"] in ("started", "weight_changed")
    assert e["strategy"] == "canary"
    assert 0 <= e["canary_weight"] <= 1


# ---------------------------------------------------------------------------------------------------
# Determinism, order, contract


def test_the_simulated_strategies_are_registered_ones() -> None:
    assert set(sim.STRATEGIES) <= set(REGISTRY.names())


def test_same_seed_gives_byte_identical_output_and_another_seed_differs() -> None:
    a = b"\n".join(sim.generate(SMALL))
    assert a == b"\n".join(sim.generate(SMALL))
    assert a != b"\n".join(sim.generate(replace(SMALL, seed=8)))


def test_write_jsonl_writes_the_generated_events(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    n = sim.write_jsonl(SMALL, path)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) - 1 == n
    assert lines[:-1] == list(sim.generate(SMALL))


def test_events_are_valid_ordered_and_uniquely_identified() -> None:
    events = _cached(SMALL)
    assert len(events) > 5000
    for e in events:
        (_check_turn if e["schema"] == "watcher.turn/v1" else _check_marker)(e)
    ts = [e["ts"] for e in events]
    assert ts == sorted(ts)  # same-width ISO strings sort like time
    assert all(0 <= _t(SMALL, e) < SMALL.duration_s for e in events)
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == len(ids)
    turns = [e for e in events if e["schema"] == "watcher.turn/v1"]
    assert all(e["event_id"] == f"{e['conversation_id']}-{e['turn']}" for e in turns)
    # turns of one conversation are numbered 0..n-1 in time order; concurrent conversations interleave
    by_conv: dict[str, list[int]] = {}
    for e in turns:
        by_conv.setdefault(e["conversation_id"], []).append(e["turn"])
    assert all(v == list(range(len(v))) for v in by_conv.values())
    first_conv = [e["conversation_id"] for e in turns[:200]]
    assert first_conv != sorted(first_conv, key=first_conv.index)  # not grouped: interleaved


def test_conversation_ids_depend_on_the_seed() -> None:
    a = {e["conversation_id"] for e in _turns(SMALL)}
    b = {e["conversation_id"] for e in _turns(replace(SMALL, seed=8))}
    assert not a & b


def test_base_rates_are_realistic() -> None:
    turns = _turns(SMALL)
    quality = [e["quality"] for e in turns if e["quality"] is not None]
    assert 0.74 < float(np.mean(quality)) < 0.82
    for channel, median in (("voice", 600), ("chat", 350)):
        lat = [e["latency_ms"] for e in turns if e["segment"]["channel"] == channel]
        assert median * 0.85 < float(np.median(lat)) < median * 1.15
    convs: dict[str, bool] = {}
    for e in turns:
        convs[e["conversation_id"]] = convs.get(e["conversation_id"], False) or e["escalated"]
    assert 0.025 < np.mean(list(convs.values())) < 0.06
    assert 0.002 < np.mean([e["error"] for e in turns]) < 0.01
    # an error turn has no judged answer
    assert all(e["quality"] is None for e in turns if e["error"])


def test_escalation_ends_the_conversation_and_comes_late() -> None:
    turns = _turns(SMALL)
    last = {}
    for e in turns:
        last[e["conversation_id"]] = e["turn"]
    escalated = [e for e in turns if e["escalated"]]
    assert escalated and all(last[e["conversation_id"]] == e["turn"] for e in escalated)
    rate_first = np.mean([e["escalated"] for e in turns if e["turn"] == 0])
    rate_later = np.mean([e["escalated"] for e in turns if e["turn"] >= 3])
    assert rate_later > 2 * rate_first


def test_turns_of_one_conversation_are_correlated() -> None:
    pairs: dict[str, list[float]] = {}
    for e in _turns(SMALL):
        if e["turn"] < 2 and e["quality"] is not None:
            pairs.setdefault(e["conversation_id"], []).append(e["quality"])
    a, b = np.array([v for v in pairs.values() if len(v) == 2]).T
    with_latent = np.corrcoef(a, b)[0, 1]
    assert with_latent > 0.3
    independent = replace(SMALL, conversation_effect=0.0)
    pairs = {}
    for e in _events(independent):
        if e["schema"] == "watcher.turn/v1" and e["turn"] < 2 and e["quality"] is not None:
            pairs.setdefault(e["conversation_id"], []).append(e["quality"])
    a, b = np.array([v for v in pairs.values() if len(v) == 2]).T
    # what remains without the latent (~0.1) is the segment offset both turns share
    assert np.corrcoef(a, b)[0, 1] < with_latent - 0.15


# ---------------------------------------------------------------------------------------------------
# Arms, markers, traffic


def test_canary_share_matches_the_weight() -> None:
    s = replace(SMALL, canary_weight=0.3)
    first = [e for e in _turns(s) if e["turn"] == 0]
    share = np.mean([e["arm"] == "canary" for e in first])
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / len(first))
    assert {e["version"] for e in first if e["arm"] == "canary"} == {"v42"}
    assert {e["version"] for e in first if e["arm"] == "baseline"} == {"v41"}


def test_markers_and_weight_steps() -> None:
    s = replace(SMALL, weight_steps=((60.0, 0.5),))
    events = _cached(s)
    markers = [e for e in events if e["schema"] == "watcher.deployment/v1"]
    assert [m["action"] for m in markers] == ["started", "weight_changed"]
    assert events[0] is markers[0] and markers[0]["ts"] == "2026-11-27T08:00:00.000Z"
    assert markers[0]["baseline_version"] == "v41" and markers[0]["canary_version"] == "v42"
    assert markers[0]["canary_weight"] == 0.1 and markers[1]["canary_weight"] == 0.5
    assert markers[1]["ts"] == "2026-11-27T08:01:00.000Z"
    first = [e for e in events if e["schema"] == "watcher.turn/v1" and e["turn"] == 0]
    late = [e["arm"] == "canary" for e in first if _t(s, e) > 61]
    assert abs(np.mean(late) - 0.5) < 4 * math.sqrt(0.25 / len(late))
    assert not [e for e in _events(replace(s, emit_markers=False)) if e["schema"] != "watcher.turn/v1"]


def test_implicit_arms_are_null() -> None:
    turns = [json.loads(r) for r in sim.generate(replace(SMALL, explicit_arms=False, duration_s=20.0))]
    assert {e["arm"] for e in turns if e["schema"] == "watcher.turn/v1"} == {None}


def test_srm_drops_canary_conversations() -> None:
    s = replace(SMALL, canary_weight=0.5, srm_drop=0.4)
    first = [e for e in _turns(s) if e["turn"] == 0]
    expected = 0.5 * 0.6 / (0.5 * 0.6 + 0.5)
    assert abs(np.mean([e["arm"] == "canary" for e in first]) - expected) < 0.03
    assert sim.expected_outcome(s) == "srm"


def test_traffic_mix_change_moves_segment_shares() -> None:
    s = replace(SMALL, mix_change_s=60.0, mix_after={"channel": {"voice": 0.9, "chat": 0.1}})
    first = [e for e in _turns(s) if e["turn"] == 0]
    before = np.mean([e["segment"]["channel"] == "voice" for e in first if _t(s, e) < 55])
    after = np.mean([e["segment"]["channel"] == "voice" for e in first if _t(s, e) > 65])
    assert before < 0.45 and after > 0.8


# ---------------------------------------------------------------------------------------------------
# Injected regressions


REG_BASE = sim.Scenario(seed=11, duration_s=600.0, conversations_per_s=30.0, canary_weight=0.5)


def _by_arm(s: sim.Scenario, field: str, pred: Any) -> tuple[np.ndarray, np.ndarray]:
    out: dict[str, list[float]] = {"baseline": [], "canary": []}
    for e in _turns(s):
        if pred(e) and e[field] is not None:
            out[e["arm"]].append(float(e[field]))
    return np.array(out["baseline"]), np.array(out["canary"])


def test_quality_regression_has_its_size_in_its_segment_and_only_after_onset() -> None:
    s = replace(
        REG_BASE,
        regressions=(sim.Regression("quality", -0.15, start_s=300.0, segment={"intent": "billing"}),),
    )

    def billing(after: bool) -> Any:
        return lambda e: e["segment"]["intent"] == "billing" and (_t(s, e) >= 300) == after

    b, c = _by_arm(s, "quality", billing(True))
    assert c.mean() - b.mean() == pytest.approx(-0.15, abs=0.02)
    b, c = _by_arm(s, "quality", billing(False))
    assert abs(c.mean() - b.mean()) < 0.015
    b, c = _by_arm(s, "quality", lambda e: e["segment"]["intent"] != "billing")
    assert abs(c.mean() - b.mean()) < 0.01
    assert sim.expected_outcome(s) == "regression"


def test_a_regression_changes_nothing_else_common_random_numbers() -> None:
    reg = sim.Regression("quality", -0.15, start_s=300.0, segment={"intent": "billing"})
    plain = {e["event_id"]: e for e in _turns(REG_BASE)}
    regressed = {e["event_id"]: e for e in _turns(replace(REG_BASE, regressions=(reg,)))}
    assert plain.keys() == regressed.keys()
    changed = [k for k in plain if plain[k] != regressed[k]]
    assert changed
    for k in changed:
        a, b = plain[k], regressed[k]
        assert {f for f in a if a[f] != b[f]} == {"quality"}
        assert a["arm"] == "canary" and a["segment"]["intent"] == "billing" and _t(REG_BASE, a) >= 300


def test_gradual_regression_ramps_linearly() -> None:
    s = replace(
        REG_BASE, regressions=(sim.Regression("quality", -0.2, start_s=100.0, shape="gradual", ramp_s=400.0),)
    )
    b, c = _by_arm(s, "quality", lambda e: 280 <= _t(s, e) < 320)  # ramp at 45-55 %: ≈ -0.1
    assert c.mean() - b.mean() == pytest.approx(-0.1, abs=0.025)
    b, c = _by_arm(s, "quality", lambda e: _t(s, e) >= 520)
    assert c.mean() - b.mean() == pytest.approx(-0.2, abs=0.02)


def test_latency_regression_is_relative() -> None:
    s = replace(REG_BASE, regressions=(sim.Regression("latency", 0.25, start_s=300.0),))
    b, c = _by_arm(s, "latency_ms", lambda e: _t(s, e) >= 310)
    assert np.log(c).mean() - np.log(b).mean() == pytest.approx(math.log(1.25), abs=0.04)
    b, c = _by_arm(s, "latency_ms", lambda e: _t(s, e) < 290)
    assert abs(np.log(c).mean() - np.log(b).mean()) < 0.04


def test_latency_tail_slows_a_fraction_of_turns_by_the_factor() -> None:
    reg = sim.Regression("latency_tail", 0.05, start_s=300.0, slow_factor=4.0)
    plain = {e["event_id"]: e for e in _turns(REG_BASE)}
    slowed = [e for e in _turns(replace(REG_BASE, regressions=(reg,))) if e["arm"] == "canary"]
    ratios = np.array(
        [
            e["latency_ms"] / plain[e["event_id"]]["latency_ms"]
            for e in slowed
            if e["event_id"] in plain and _t(REG_BASE, plain[e["event_id"]]) >= 300
        ]
    )
    assert set(np.round(ratios, 1)) <= {1.0, 4.0}
    assert np.mean(ratios > 2) == pytest.approx(0.05, abs=0.01)


@pytest.mark.parametrize(
    ("metric", "field", "low", "high"),
    [
        ("error", "error", 3.4, 4.6),
        ("compliance", "compliance_violation", 3.4, 4.6),
        # per observed turn the escalation ratio is a little below the multiplier: an escalation ends
        # the conversation, so the canary loses more of its late (high-hazard) turns
        ("escalation", "escalated", 3.0, 4.4),
    ],
)
def test_rate_multipliers(metric: str, field: str, low: float, high: float) -> None:
    # 2 % base rates: ~650 baseline events, so the ratio is known to about ±10 %
    base = replace(REG_BASE, baseline=sim.ArmProfile(error_rate=0.02, compliance_rate=0.02))
    s = replace(base, regressions=(sim.Regression(metric, 4.0, start_s=0.0, mode="multiply"),))
    b, c = _by_arm(s, field, lambda e: True)
    assert low < c.mean() / b.mean() < high


def test_additive_escalation_and_both_arms_drift() -> None:
    reg = sim.Regression("escalation", 0.03, start_s=0.0, arms=("baseline", "canary"))
    s = replace(REG_BASE, regressions=(reg,))
    b0, c0 = _by_arm(REG_BASE, "escalated", lambda e: True)
    b, c = _by_arm(s, "escalated", lambda e: True)
    assert b.mean() - b0.mean() == pytest.approx(0.03, abs=0.006)
    assert abs(c.mean() - b.mean()) < 0.006
    assert sim.expected_outcome(s) == "null"


def test_daily_cycle_moves_both_arms_together() -> None:
    # the default start is a multiple of 600 s: the compressed cycle has troughs at 0 s and 600 s, a peak
    # at 300 s
    s = replace(REG_BASE, daily_cycle=True, cycle_period_s=600.0)
    peak = [e for e in _turns(s) if 250 <= _t(s, e) < 350]
    trough = [e for e in _turns(s) if _t(s, e) < 50 or _t(s, e) >= 550]
    for arm in ("baseline", "canary"):
        lat_peak = np.median([e["latency_ms"] for e in peak if e["arm"] == arm])
        lat_trough = np.median([e["latency_ms"] for e in trough if e["arm"] == arm])
        assert lat_peak > 1.1 * lat_trough
    assert len(peak) > 1.5 * len(trough)  # more traffic at the peak (same window length)


# ---------------------------------------------------------------------------------------------------
# Presets, validation, CLI


@pytest.mark.parametrize("name", sorted(sim.PRESETS))
def test_presets_generate_valid_events(name: str) -> None:
    s = replace(sim.PRESETS[name], duration_s=20.0)
    events = _events(s)
    assert events
    for e in events:
        (_check_turn if e["schema"] == "watcher.turn/v1" else _check_marker)(e)


def test_preset_expected_outcomes() -> None:
    outcome = {name: sim.expected_outcome(s) for name, s in sim.PRESETS.items()}
    assert {n for n, o in outcome.items() if o == "null"} == {
        "healthy",
        "a_a",
        "both_arms_drift",
        "low_traffic",
        "rare_events",
        "long_conversations",
    }
    assert outcome["srm"] == "srm" and outcome["demo"] == "regression"
    doc = (Path(__file__).resolve().parents[2] / "docs" / "simulator.md").read_text()
    assert all(f"`{name}`" in doc for name in sim.PRESETS)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"canary_weight": 1.5}, "scenario.canary_weight"),
        ({"duration_s": 0}, "scenario.duration_s"),
        ({"srm_drop": 1.0}, "scenario.srm_drop"),
        ({"regressions": (sim.Regression("quality", -0.1, segment={"intent": "x"}),)}, "regression.segment"),
    ],
)
def test_invalid_scenarios_name_the_field(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        sim.Scenario(**kw)
    assert err.value.field == field


def test_invalid_regressions() -> None:
    with pytest.raises(ConfigError):
        sim.Regression("speed", 1.0)
    with pytest.raises(ConfigError):
        sim.Regression("quality", 2.0, mode="multiply")
    with pytest.raises(ConfigError):
        sim.Regression("error", 2.0, arms=("shadow",))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="watcher simulate")
    sim.add_arguments(p)
    return p


def test_cli_builds_the_scenario() -> None:
    args = _parser().parse_args(
        [
            "--preset",
            "demo",
            "--seed",
            "5",
            "--duration",
            "60",
            "--canary-weight",
            "0.3",
            "--no-markers",
            "--start",
            "2026-01-01T00:00:00Z",
            "--regression",
            "metric=error,size=x4,start=30,segment=intent:sales+channel:voice",
            "--regression",
            "metric=latency_tail,size=0.1,slow=3,shape=gradual,ramp=60,arms=both",
        ]
    )
    s = sim.scenario_from_args(args)
    assert (s.seed, s.duration_s, s.canary_weight, s.emit_markers, s.name) == (5, 60.0, 0.3, False, "demo")
    assert s.start_ts == 1767225600.0
    demo, err, tail = s.regressions
    assert demo == sim.PRESETS["demo"].regressions[0]
    assert (err.metric, err.mode, err.size, err.start_s) == (sim.Metric.ERROR, sim.Mode.MULTIPLY, 4.0, 30.0)
    assert err.segment == {"intent": "sales", "channel": "voice"}
    assert (tail.slow_factor, tail.shape, tail.ramp_s, tail.arms) == (
        3.0,
        sim.Shape.GRADUAL,
        60.0,
        ("baseline", "canary"),
    )


def test_cli_shadow_share_mirrors_that_share_and_the_marker_says_it() -> None:
    args = _parser().parse_args(["--strategy", "shadow", "--shadow-share", "0.25", "--duration", "300"])
    s = sim.scenario_from_args(args)
    assert (s.strategy, s.shadow_share) == ("shadow", 0.25)
    events = [json.loads(r) for r in sim.generate(s)]
    (marker,) = [e for e in events if e["schema"] == "watcher.deployment/v1"]
    assert marker["strategy"] == "shadow" and marker["canary_weight"] == 0.25
    turns = [e for e in events if e["schema"] == "watcher.turn/v1"]
    convs = {e["conversation_id"] for e in turns}
    mirrored = {e["conversation_id"] for e in turns if e["arm"] == "shadow"}
    assert abs(len(mirrored) / len(convs) - 0.25) < 4 * math.sqrt(0.25 * 0.75 / len(convs))
    with pytest.raises(ConfigError) as err:
        sim.scenario_from_args(_parser().parse_args(["--strategy", "shadow", "--shadow-share", "0"]))
    assert err.value.field == "scenario.shadow_share"
    with pytest.raises(ConfigError) as err:
        sim.platform_from_args(_parser().parse_args(["--agents", "3", "--shadow-share", "0.5"]))
    assert err.value.field == "simulate.shadow_share"


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("metric=quality,size=-0.1,colour=red", "unknown key 'colour'"),
        ("metric=quality,size=abc", "bad number"),
        ("metric=quality", "needs metric= and size="),
        ("metric=quality,size=-0.1,segment=billing", "bad segment 'billing'"),
        ("metric=speed,size=1", "'speed' is not a valid Metric"),
        ("metric=quality,size=x2", "quality supports only mode=add"),
        ("metric=quality,size=-0.1,start", "bad part 'start'"),
    ],
)
def test_cli_regression_errors_name_the_bad_part(
    spec: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--out", "x", "--regression", spec])
    err = capsys.readouterr().err
    assert "--regression" in err and needle in err


def test_cli_unknown_preset_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--preset", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


async def test_run_writes_a_file_and_rejects_missing_output(tmp_path: Path) -> None:
    out = tmp_path / "sim.jsonl"
    args = _parser().parse_args(["--out", str(out), "--duration", "10", "--seed", "3"])
    assert await sim.run(args) == 0
    assert out.read_bytes() == b"".join(
        r + b"\n" for r in sim.generate(replace(sim.Scenario(), seed=3, duration_s=10.0))
    )
    with pytest.raises(ConfigError):
        await sim.run(_parser().parse_args(["--duration", "10"]))


async def test_paced_file_output_takes_the_expected_time(tmp_path: Path) -> None:
    s = replace(SMALL, duration_s=2.0, conversations_per_s=5.0)
    n = sum(1 for _ in sim.generate(s))

    class Clock:
        t = 0.0

        def now(self) -> float:
            return 0.0

        def monotonic(self) -> float:
            return self.t

    clock = Clock()
    slept: list[float] = []

    async def fake_sleep(d: float) -> None:
        slept.append(d)
        clock.t += d

    import asyncio

    mp = pytest.MonkeyPatch()
    mp.setattr(asyncio, "sleep", fake_sleep)
    try:
        lines = (([s.agent_id] * len(block), block, markers) for block, markers in sim.blocks(s))
        assert await sim.write_paced(lines, tmp_path / "p.jsonl", rate=n / 4, clock=clock) == n
    finally:
        mp.undo()
    assert sum(slept) == pytest.approx(4.0, rel=0.05)


async def test_produce_to_kafka(broker: Any, unique_topic: Any) -> None:
    from aiokafka import AIOKafkaConsumer

    from watcher.kafka.embedded import TopicSpec, create_topics

    telemetry, deployments = unique_topic("sim-telemetry"), unique_topic("sim-deployments")
    await create_topics(broker.bootstrap_servers, [TopicSpec(telemetry), TopicSpec(deployments)])
    s = replace(SMALL, duration_s=30.0, weight_steps=((10.0, 0.2),))
    n = await sim.produce(s, broker.bootstrap_servers, telemetry, deployments_topic=deployments)
    expected = list(sim.generate(s))
    assert n == len(expected)
    consumer = AIOKafkaConsumer(
        telemetry,
        deployments,
        bootstrap_servers=broker.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    got: dict[str, list[bytes]] = {telemetry: [], deployments: []}
    try:
        for _ in range(100):
            for tp, msgs in (await consumer.getmany(timeout_ms=200)).items():
                got[tp.topic] += [m.value for m in msgs if m.key == b"support-bot"]
            if sum(map(len, got.values())) >= n:
                break
    finally:
        await consumer.stop()
    assert len(got[deployments]) == 2
    assert got[telemetry] == [e for e in expected if b"watcher.turn/v1" in e]
