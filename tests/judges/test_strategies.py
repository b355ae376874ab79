"""The strategy registry: built-in strategies, markers checked against it, third-party entry points,
and the judge contract every registered strategy's judge keeps."""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.support.state import roundtrip
from watcher.config import load_settings
from watcher.contract import Deduplicator, Deployment, FlagSpec, RejectReason, decode_batch, decode_deployment
from watcher.engine import Engine
from watcher.errors import CheckpointError, ConfigError
from watcher.judges import STRATEGIES, Strategy, StrategyRegistry, load_policy
from watcher.judges.strategies import BUILT_IN
from watcher.sim.presets import PRESETS, STRATEGY_PRESETS
from watcher.sim.traffic import generate
from watcher.state import NullHistory, Rollout, RolloutState

POLICY = load_policy(None).default
T0 = 1_795_766_400.0


def marker(**kw: Any) -> Deployment:
    base: dict[str, Any] = {"event_id": "d1", "ts": T0, "agent_id": "bot", "action": "started"}
    return Deployment(**{**base, **kw})


def test_the_built_in_strategies_and_an_unknown_name() -> None:
    assert STRATEGIES.names() == ("blue_green", "canary", "flag", "shadow")
    assert {s.name for s in BUILT_IN} == set(STRATEGIES.names())
    with pytest.raises(ConfigError) as err:
        STRATEGIES.get("linear")
    assert err.value.field == "strategy"
    assert err.value.message == "unknown strategy 'linear' (known: blue_green, canary, flag, shadow)"
    registry = StrategyRegistry(BUILT_IN)
    with pytest.raises(ConfigError, match="registered twice"):
        registry.register(BUILT_IN[0])


def test_markers_are_checked_against_the_registry() -> None:
    check = STRATEGIES.check_marker
    assert check(marker(strategy="canary")) is None
    assert check(marker(action="paused")) is None  # no strategy named: nothing to check
    reason, detail = check(marker(strategy="linear"))  # type: ignore[misc]
    assert reason is RejectReason.INVALID_VALUE and detail.startswith("strategy: unknown strategy 'linear'")
    assert check(marker(action="paused", strategy="linear")) is not None  # named anywhere: known or not
    assert check(marker(strategy="flag")) == (
        RejectReason.MISSING_FIELD,
        "flag: required when strategy is 'flag' and action 'started'",
    )
    same = FlagSpec(name="new_prompt", control="on", treatment="on")
    assert check(marker(strategy="flag", flag=same)) == (
        RejectReason.INVALID_VALUE,
        "flag: control and treatment are the same variant 'on'",
    )
    assert check(marker(action="paused", strategy="flag")) is None  # the flag rules are a start's


def test_the_decoders_reject_what_the_registry_rejects() -> None:
    raw = json.dumps(
        {"schema": "watcher.deployment/v1", "event_id": "d9", "ts": T0, "agent_id": "bot",
         "action": "started", "strategy": "dark_launch", "canary_version": "v2"}
    ).encode()  # fmt: skip
    batch = decode_batch([raw], Deduplicator(), origins=["t/0@5"], check_marker=STRATEGIES.check_marker)
    (rejected,) = batch.rejected
    assert not batch.deployments and rejected.raw == raw and rejected.origin == "t/0@5"
    assert rejected.reason is RejectReason.INVALID_VALUE and "'dark_launch'" in rejected.detail
    dedup = Deduplicator()
    decode_batch([raw], dedup, check_marker=STRATEGIES.check_marker)
    assert not dedup.seen("\x00deployment\x00d9")  # a rejected marker does not take its id
    assert decode_deployment(raw, check=STRATEGIES.check_marker).reason is RejectReason.INVALID_VALUE  # type: ignore[union-attr]


def test_the_engine_dead_letters_a_marker_of_an_unknown_strategy() -> None:
    engine = Engine(load_settings(environ={}))
    raw = json.dumps(
        {"schema": "watcher.deployment/v1", "event_id": "d9", "ts": T0, "agent_id": "bot",
         "action": "started", "strategy": "dark_launch", "canary_version": "v2"}
    ).encode()  # fmt: skip
    result = engine.process([raw])
    assert [r.reason for r in result.rejected] == [RejectReason.INVALID_VALUE]
    assert engine.registry.active("bot", "prod") is None and not result.changes


def test_a_checkpoint_naming_a_strategy_no_longer_installed_is_refused_with_its_name() -> None:
    engine = Engine(load_settings(environ={}))
    raw = json.dumps(
        {"schema": "watcher.deployment/v1", "event_id": "d9", "ts": T0, "agent_id": "bot",
         "action": "started", "strategy": "shadow", "baseline_version": "v1", "canary_version": "v2"}
    ).encode()  # fmt: skip
    engine.process([raw])
    state = roundtrip(engine.to_state())
    state["engine"]["registry"]["active"][0]["strategy"] = "dark_launch"
    state = {part: value for part, value in state.items() if not part.startswith("judge/")}
    with pytest.raises(CheckpointError, match="unknown strategy 'dark_launch'"):
        Engine(load_settings(environ={})).load_state(state)


# -- third-party strategies through entry points -------------------------------------------------------
PLUGIN = """
from watcher.judges import Strategy, STRATEGIES

canary = STRATEGIES.get("canary")
STARTED = []


def judge(rollout, policy, history):
    STARTED.append(rollout.rollout_id)
    return canary.judge(rollout, policy, history)


DARK = Strategy("dark_launch", judge, canary.restore, treatment_arm="canary", start_weight=0.05)


def broken():
    raise RuntimeError("no licence")
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An installed distribution (a dist-info directory on sys.path) with entry points in the
    ``watcher.strategies`` group: what ``pip install`` of a plug-in leaves behind."""
    (tmp_path / "dark_plugin.py").write_text(PLUGIN)
    info = tmp_path / "dark_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dark-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [watcher.strategies]
            dark_launch = dark_plugin:DARK
            broken = dark_plugin:broken
            misnamed = dark_plugin:DARK
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("dark_plugin", None)


def test_a_third_party_strategy_is_loaded_when_named_and_judges_its_rollouts(plugin: Any) -> None:
    registry = StrategyRegistry(BUILT_IN)  # a fresh registry: the process-wide one stays as it was
    assert registry.names() == ("blue_green", "broken", "canary", "dark_launch", "flag", "misnamed", "shadow")
    engine = Engine(load_settings(environ={}), strategies=registry)
    scenario = dataclasses.replace(PRESETS["demo"], duration_s=300.0, conversations_per_s=4.0)
    lines = [
        line.replace(b'"strategy":"canary"', b'"strategy":"dark_launch"').replace(
            b',"canary_weight":0.2', b""
        )
        for line in generate(scenario)
    ]
    for i in range(0, len(lines), 1000):
        result = engine.process(lines[i : i + 1000])
        assert not result.rejected
    (rollout,) = engine.registry.active_rollouts()
    assert rollout.strategy == "dark_launch"
    assert sys.modules["dark_plugin"].STARTED == [rollout.rollout_id]
    assert engine.evidence[rollout.rollout_id].metrics  # judged


def test_a_broken_or_misnamed_plugin_is_an_error_naming_it(plugin: Any) -> None:
    registry = StrategyRegistry(BUILT_IN)
    with pytest.raises(ConfigError) as err:
        registry.get("broken")
    assert err.value.field == "strategy.broken" and "dark_plugin:broken" in err.value.message
    assert "no licence" in err.value.message
    with pytest.raises(ConfigError, match="is not a Strategy named 'misnamed'"):
        registry.get("misnamed")
    reason, detail = registry.check_marker(marker(strategy="broken"))  # type: ignore[misc]
    assert reason is RejectReason.INVALID_VALUE and "no licence" in detail


# -- the judge contract, over every registered strategy ------------------------------------------------
STREAMS = {
    "canary": PRESETS["demo"],
    "flag": STRATEGY_PRESETS["flag_errors_x4"],
    "shadow": STRATEGY_PRESETS["shadow_errors_x4"],
    "blue_green": STRATEGY_PRESETS["blue_green_errors_x4"],
}


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_every_strategys_judge_keeps_the_judge_contract(name: str) -> None:
    """Started from its rollout, fed by the engine, a judge's evidence survives ``to_state`` /
    ``restore`` and ``with_policy`` unchanged, and carries its rollout and policy."""
    assert set(STREAMS) == set(STRATEGIES.names())
    scenario = dataclasses.replace(STREAMS[name], duration_s=min(STREAMS[name].duration_s, 2400.0))
    engine = Engine(load_settings(environ={}))
    lines = list(generate(scenario))
    for i in range(0, len(lines), 2000):
        engine.process(lines[i : i + 2000])
    (rid, judge), *_ = engine.judges.items()
    assert judge.rollout.rollout_id == rid and judge.rollout.strategy == name
    assert judge.policy == engine.policies.default
    ts = engine.registry.get(rid).started_ts + 1200.0  # type: ignore[union-attr]
    ev = judge.evidence(ts)
    assert ev.metrics and ev.rollout_id == rid
    strategy = STRATEGIES.get(name)
    state = roundtrip(judge.to_state())  # as a checkpoint stores it
    restored = strategy.restore(state, POLICY)
    assert restored.evidence(ts) == ev and restored.to_state() == judge.to_state()
    assert judge.with_policy(POLICY).evidence(ts) == ev
    stricter = dataclasses.replace(POLICY, alpha=POLICY.alpha / 10)
    moved = judge.with_policy(stricter)
    assert moved.policy is stricter and type(moved) is type(judge)
    assert all(m.threshold > n.threshold for m, n in zip(moved.evidence(ts).metrics, ev.metrics))


def test_a_judge_is_started_from_its_rollout() -> None:
    rollout = Rollout("ro-1", "bot", "prod", "canary", "v1", "v2", 0.1, RolloutState.RUNNING, T0)
    for s in BUILT_IN:
        judge = s.judge(dataclasses.replace(rollout, strategy=s.name), POLICY, NullHistory())
        assert judge.rollout.strategy == s.name and judge.policy is POLICY
        assert isinstance(s, Strategy)
