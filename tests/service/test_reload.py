"""Configuration reload: the plan (what changed, what is rejected), the judges keep their statistics
under a new policy, the outbox keeps its pending deliveries under new sinks, and Daemon.reload ties
them together (rejected whole, or applied between batches)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from tests.support.outbox import FAST, FakeSink
from tests.support.receivers import Running, eventually, make_decision
from watcher.config import load_settings
from watcher.engine import Engine
from watcher.errors import ConfigError
from watcher.judges.policy import PolicyState, decide, load_policy, policy_from_doc, policy_to_doc
from watcher.kafka.deadletter import NullDeadLetters
from watcher.outbox import Outbox
from watcher.service.compose import build_daemon
from watcher.service.daemon import Daemon
from watcher.service.markers import NullMarkerPublisher
from watcher.service.reload import ConfigSource, plan_reload
from watcher.sim.presets import PRESETS, STRATEGY_PRESETS
from watcher.sim.traffic import generate
from watcher.storage.decisions import MemoryDecisionLog

LOOSE = "version: 1\ndefaults:\n  alpha: 1.0e-300\n"  # thresholds no e-value reaches: never a decision
TIGHT = "version: 1\ndefaults:\n  alpha: 0.01\n"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _config(tmp_path: Path, *, policy: Path, sinks: str = "", port: int = 0, extra: str = "") -> Path:
    text = (
        f"http:\n  port: {port}\njudge:\n  policy_file: {policy}\n"
        f"outbox:\n  path: {tmp_path / 'outbox.sqlite'}\n{extra}"
    )
    if sinks:
        text += "sinks:\n" + sinks
    return _write(tmp_path / "watcher.yaml", text)


HOOK = "  - {name: hook, type: webhook, url: 'http://127.0.0.1:9/a', hmac_secret: 'k1'}\n"
TEAM = "  - {name: team, type: slack, url: 'http://127.0.0.1:9/s'}\n"


# -- plan_reload --------------------------------------------------------------------------------------
def test_plan_reports_policy_sinks_and_fields_needing_a_restart(tmp_path: Path) -> None:
    policy = _write(tmp_path / "policy.yaml", LOOSE)
    config = _config(tmp_path, policy=policy, sinks=HOOK + TEAM, port=8080)
    old = load_settings(config, environ={})
    policies = load_policy(old.judge.policy_file)

    unchanged = plan_reload(old, config, {}, current_policies=policies)
    assert not unchanged.policy_changed and not unchanged.sinks_differ and unchanged.restart_needed == ()

    _write(policy, TIGHT)
    hook2 = "  - {name: hook, type: webhook, url: 'http://127.0.0.1:9/b', hmac_secret: 'k1'}\n"
    grafana = "  - {name: graf, type: grafana, url: 'http://127.0.0.1:9', token: 'tok-123'}\n"
    _config(
        tmp_path,
        policy=policy,
        sinks=hook2 + grafana,
        port=9090,
        extra="kafka:\n  sasl_plain_password: s3cret-value\n",
    )
    plan = plan_reload(old, config, {}, current_policies=policies)
    assert plan.policy_changed
    assert plan.policies.default.alpha == 0.01
    assert (plan.sinks_added, plan.sinks_changed, plan.sinks_removed) == (("graf",), ("hook",), ("team",))
    assert plan.restart_needed == ("kafka.sasl_plain_password", "http.port")
    # what is applied: policy and sinks; the rest stays as it runs until a restart
    assert plan.settings.http.port == 8080 and plan.settings.kafka == old.kafka
    assert [s["name"] for s in plan.settings.sinks] == ["hook", "graf"]
    assert "s3cret" not in plan.summary() and "kafka.sasl_plain_password" in plan.summary()


def test_plan_applies_the_same_environment_and_overrides_as_start_up(tmp_path: Path) -> None:
    policy = _write(tmp_path / "policy.yaml", LOOSE)
    other = _write(tmp_path / "other.yaml", TIGHT)
    config = _config(tmp_path, policy=policy)
    env = {"WATCHER_HTTP__PORT": "7070", "WATCHER_STATE__WINDOW_SECONDS": "60"}
    overrides = {"judge.policy_file": str(other)}  # `watcher run --policy other.yaml`
    old = load_settings(config, environ=env, overrides=overrides)
    plan = plan_reload(old, config, env, overrides=overrides, current_policies=load_policy(str(other)))
    assert plan.restart_needed == () and not plan.policy_changed
    assert plan.settings.judge.policy_file == str(other)  # the override is not lost on reload


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("http:\n  port: [unclosed\n", "config"),  # not YAML
        ("http:\n  port: 70000\n", "http.port"),  # out of range
        ("http:\n  prot: 8080\n", "http.prot"),  # unknown setting
        ("sinks:\n  - {name: x, type: carrier-pigeon}\n", "sinks[x].type"),
    ],
)
def test_plan_rejects_an_invalid_configuration_naming_the_field(
    tmp_path: Path, text: str, field: str
) -> None:
    config = _write(tmp_path / "watcher.yaml", "http:\n  port: 0\n")
    old = load_settings(config, environ={})
    _write(config, text)
    with pytest.raises(ConfigError) as info:
        plan_reload(old, config, {})
    assert info.value.field == field


def test_plan_rejects_an_invalid_policy_naming_its_field_and_file(tmp_path: Path) -> None:
    policy = _write(tmp_path / "policy.yaml", LOOSE)
    config = _config(tmp_path, policy=policy)
    old = load_settings(config, environ={})
    _write(policy, "version: 1\ndefaults:\n  alpha: 7\n")
    with pytest.raises(ConfigError) as info:
        plan_reload(old, config, {})
    assert info.value.field == "defaults.alpha" and str(policy) in str(info.value)
    _write(policy, "version: 1\ndefaults: {alpha: 0.01\n")  # broken YAML
    with pytest.raises(ConfigError, match="not valid YAML at line 3"):
        plan_reload(old, config, {})


# -- Engine.replace_policies ------------------------------------------------------------------------
def _lines() -> list[bytes]:
    # quality -0.2 for intent=billing on the canary from minute 2 (a rollback under the bundled policy)
    return list(generate(dataclasses.replace(PRESETS["demo"], duration_s=600.0, conversations_per_s=8.0)))


def _feed(engine: Engine, lines: list[bytes], batch: int = 500) -> list[Any]:
    decisions = []
    for i in range(0, len(lines), batch):
        decisions.extend(engine.process(lines[i : i + batch]).decisions)
    return decisions


def _stats(evidence: Any) -> list[tuple[str, str, float, float]]:
    return [(m.metric, m.slice, m.statistic, m.threshold) for m in evidence.metrics]


def test_a_new_policy_keeps_the_judges_statistics_and_applies_its_thresholds(tmp_path: Path) -> None:
    lines = _lines()
    head, tail = lines[:-1000], lines[-1000:]  # the tail spans ~30 s of event time: a few looks
    engine = Engine(load_settings(environ={}), policies=load_policy(_write(tmp_path / "loose.yaml", LOOSE)))
    assert _feed(engine, head) == []  # nothing reaches the loose thresholds
    (rid,) = engine.judges
    before = engine.judges[rid].to_state()
    now = engine.state.watermark
    evidence_before = engine.judges[rid].evidence(now)

    tight = load_policy(_write(tmp_path / "tight.yaml", TIGHT))
    assert engine.replace_policies(tight) == {}  # thresholds only: every judge takes the new policy
    judge = engine.judges[rid]
    assert judge.policy == tight.default
    assert judge.to_state() == before  # counts, sums, conversations, epochs: identical
    evidence_after = judge.evidence(now)
    stats_before, stats_after = _stats(evidence_before), _stats(evidence_after)
    assert [s[:3] for s in stats_after] == [s[:3] for s in stats_before]  # the same e-values...
    assert all(a[3] < b[3] for a, b in zip(stats_after, stats_before))  # ...against lower thresholds
    assert engine.evidence[rid].metrics[0].threshold == stats_after[0][3]  # what the API shows: recomputed
    # on the same data the tighter policy decides where the loose one did not
    ref = engine.registry.get(rid).ref()
    assert (
        decide(PolicyState(), evidence_before, load_policy(tmp_path / "loose.yaml").default, ref)[0] is None
    )
    decision, _ = decide(PolicyState(), evidence_after, tight.default, ref)
    assert decision is not None and decision.action.value == "rollback"

    # and the engine makes that decision at its next look
    control = Engine(load_settings(environ={}), policies=load_policy(tmp_path / "loose.yaml"))
    _feed(control, head)
    assert _feed(control, tail) == []
    made = _feed(engine, tail)
    assert [d.action.value for d in made] == ["rollback"]
    assert "intent=billing" in made[0].reason


def test_a_policy_that_measures_differently_leaves_running_judges_on_theirs(tmp_path: Path) -> None:
    lines = _lines()[:6000]
    loose = load_policy(_write(tmp_path / "loose.yaml", LOOSE))
    engine = Engine(load_settings(environ={}), policies=loose)
    _feed(engine, lines)
    (rid,) = engine.judges
    before = engine.judges[rid].to_state()
    fewer = load_policy(_write(tmp_path / "fewer.yaml", TIGHT + "  metrics:\n    error: {enabled: false}\n"))
    kept = engine.replace_policies(fewer)
    assert list(kept) == [rid] and "enabled metrics" in kept[rid] and "error" in kept[rid]
    assert engine.judges[rid].policy == loose.default and engine.judges[rid].to_state() == before
    assert engine.policies is fewer  # new rollouts start with it

    # a restart with that policy file keeps the running judge on the policy it started with, too
    restarted = Engine(load_settings(environ={}), policies=fewer)
    restarted.load_state(engine.to_state())
    assert restarted.judges[rid].policy == loose.default
    assert restarted.judges[rid].to_state() == before


def test_policy_documents_round_trip() -> None:
    for policy in (load_policy(None).default, *load_policy(None).overrides.values()):
        assert policy_from_doc(policy_to_doc(policy)) == policy
    custom = load_policy(None).default
    custom = dataclasses.replace(
        custom, alpha=0.002, segments=msgspec.structs.replace(custom.segments, keys=("intent",))
    )
    assert policy_from_doc(policy_to_doc(custom)) == custom


# -- Outbox.replace_sinks ---------------------------------------------------------------------------
async def test_replace_sinks_keeps_pending_deliveries(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    a, b, c = FakeSink("a"), FakeSink("b"), FakeSink("c")
    outbox = Outbox(tmp_path / "outbox.sqlite", [a, b, c], retry=FAST, registry=registry)
    first = [make_decision(i) for i in (1, 2)]
    outbox.enqueue_decisions(first)  # pending for a, b and c: nothing is running yet
    a2, d = FakeSink("a"), FakeSink("d")  # a: new settings; b: unchanged; c: removed; d: new
    swap = await outbox.replace_sinks([a2, b, d])
    assert (swap.added, swap.replaced, swap.kept, swap.removed) == (("d",), ("a",), ("b",), {"c": 2})
    assert registry.get_sample_value("watcher_outbox_orphaned_deliveries") == 2
    assert registry.get_sample_value("watcher_outbox_backlog", {"sink": "c"}) is None
    async with Running(outbox):
        await eventually(lambda: len(a2.sent) == 2 and len(b.sent) == 2)
        later = make_decision(3)
        outbox.enqueue_decisions([later])
        await eventually(lambda: len(a2.sent) == 3 and len(b.sent) == 3 and len(d.sent) == 1)
        # while running: a sink swapped again picks up at once, its old worker stops
        a3 = FakeSink("a")
        await outbox.replace_sinks([a3, b, d])
        outbox.enqueue_decisions([make_decision(4)])
        await eventually(lambda: len(a3.sent) == 1 and len(d.sent) == 2)
        await asyncio.sleep(0.05)
    assert [r.body["id"] for r in a2.sent] == [x.decision_id for x in (*first, later)]
    assert [r.body["id"] for r in d.sent] == [
        later.decision_id,
        make_decision(4).decision_id,
    ]  # only new ones
    assert len(a2.sent) == 3 and c.sent == []  # the replaced worker stopped; the removed sink got nothing
    pending_c = outbox.deliveries(sink="c", status="pending")
    assert [p["item_id"] for p in pending_c] == [x.decision_id for x in reversed(first)]  # kept, unsent

    # bringing "c" back delivers what it missed while it was away (and only that)
    c2 = FakeSink("c")
    swap = await outbox.replace_sinks([a3, b, d, c2])
    assert swap.added == ("c",) and registry.get_sample_value("watcher_outbox_orphaned_deliveries") == 0
    async with Running(outbox):
        await eventually(lambda: len(c2.sent) == 2)
    outbox.close()


# -- Daemon.reload ----------------------------------------------------------------------------------
def _daemon(tmp_path: Path, config: Path, registry: CollectorRegistry) -> Daemon:
    settings = load_settings(config, environ={})
    return build_daemon(
        settings,
        registry=registry,
        source=_IdleSource(),
        dead_letters=NullDeadLetters(),
        decision_log=MemoryDecisionLog(),
        marker_publisher=NullMarkerPublisher(),
        config_source=ConfigSource(config, {}, environ={}),
    )


class _IdleSource:
    ready = True

    async def start(self, listener: Any = None) -> None: ...
    async def stop(self) -> None: ...
    def lag(self) -> dict[tuple[str, int], int]:
        return {}


async def test_daemon_reload_applies_or_rejects_whole(tmp_path: Path) -> None:
    policy = _write(tmp_path / "policy.yaml", LOOSE)
    config = _config(tmp_path, policy=policy, sinks=HOOK)
    registry = CollectorRegistry()
    daemon = _daemon(tmp_path, config, registry)
    started = registry.get_sample_value("watcher_config_last_reload_success_timestamp_seconds")
    assert started and math.isfinite(started)
    hook = daemon.outbox.sinks[0]

    _write(policy, TIGHT)
    _config(tmp_path, policy=policy, sinks=HOOK + TEAM, port=1234)
    result = await daemon.reload()
    assert result.applied and result.plan is not None and result.plan.restart_needed == ("http.port",)
    assert daemon.engine.policies.default.alpha == 0.01
    assert [s.name for s in daemon.outbox.sinks] == ["hook", "team"] and daemon.outbox.sinks[0] is hook
    assert daemon.settings.http.port == 0 and [s["name"] for s in daemon.settings.sinks] == ["hook", "team"]
    assert registry.get_sample_value("watcher_config_reloads_total", {"result": "applied"}) == 1

    for broken in ("version: 1\ndefaults:\n  alpha: 7\n",):
        _write(policy, broken)
        _config(tmp_path, policy=policy, sinks=HOOK)  # a sink change in the same reload is not applied either
        result = await daemon.reload()
        assert not result.applied and result.field == "defaults.alpha"
    _write(policy, TIGHT)
    _config(tmp_path, policy=policy, sinks=HOOK, port=99999)
    result = await daemon.reload()
    assert not result.applied and result.field == "http.port"
    assert registry.get_sample_value("watcher_config_reloads_total", {"result": "rejected"}) == 2
    assert daemon.engine.policies.default.alpha == 0.01 and [s.name for s in daemon.outbox.sinks] == [
        "hook",
        "team",
    ]
    daemon.outbox.close()


async def test_a_changed_file_is_reloaded_once_when_watched(tmp_path: Path) -> None:
    policy = _write(tmp_path / "policy.yaml", LOOSE)
    config = _config(tmp_path, policy=policy, extra="config_watch_s: 0.05\n")
    registry = CollectorRegistry()
    daemon = _daemon(tmp_path, config, registry)

    def reloads(result: str) -> float:
        return registry.get_sample_value("watcher_config_reloads_total", {"result": result}) or 0.0

    watching = asyncio.create_task(daemon.reloader.watch())
    try:
        await asyncio.sleep(0.2)
        assert reloads("applied") == reloads("rejected") == 0  # nothing changed, nothing reloaded
        _write(policy, TIGHT)  # what a ConfigMap update does, without a SIGHUP
        await eventually(lambda: reloads("applied") == 1)
        assert daemon.engine.policies.default.alpha == 0.01
        _write(policy, "version: 1\ndefaults:\n  alpha: 7\n")
        await eventually(lambda: reloads("rejected") == 1)
        await asyncio.sleep(0.3)
        assert reloads("rejected") == 1  # a broken file is not retried until it changes again
        assert daemon.engine.policies.default.alpha == 0.01  # the policy in force stays
    finally:
        watching.cancel()
        daemon.outbox.close()


async def test_a_daemon_built_in_code_has_nothing_to_reload(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    settings = load_settings(environ={}, overrides={"outbox.path": str(tmp_path / "o.sqlite")})
    daemon = build_daemon(
        settings,
        registry=registry,
        source=_IdleSource(),
        dead_letters=NullDeadLetters(),
        decision_log=MemoryDecisionLog(),
        marker_publisher=NullMarkerPublisher(),
    )
    result = await daemon.reload()
    assert not result.applied and "not loaded from a configuration" in (result.error or "")
    daemon.outbox.close()


# -- a real `watcher run` process, SIGHUP -----------------------------------------------------------
def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _state_series(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> dict[Any, float]:
    """Every per-series count watcher exposes (turns, conversations, escalations...)."""
    counts = (
        "watcher_turns_total",
        "watcher_conversations_total",
        "watcher_segment_turns_total",
        "watcher_segment_conversations_total",
        "watcher_turn_escalations_total",
    )
    return {k: v for k, v in samples.items() if k[0] in counts}


async def test_sighup_reloads_the_policy_of_a_running_process(
    broker, unique_topic, produce, tmp_path
) -> None:
    import os
    import re
    import signal
    import sys
    import time

    import aiohttp

    from watcher.kafka.embedded import TopicSpec, create_topics

    lines = _lines()
    head, tail = lines[: len(lines) * 2 // 3], lines[len(lines) * 2 // 3 :]
    expected = Engine(load_settings(environ={}))
    _feed(expected, head)
    head_turns = sum(expected.state.snapshot(k).turns for k in expected.state.keys() if not k[4])

    topic = unique_topic("reload")
    await create_topics(
        broker.bootstrap_servers, [TopicSpec(topic, 1), TopicSpec(topic + "-d"), TopicSpec(topic + "-dl")]
    )
    policy = _write(tmp_path / "policy.yaml", LOOSE)
    config = _config(tmp_path, policy=policy)
    env = {
        **os.environ,
        "WATCHER_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "WATCHER_KAFKA__TELEMETRY_TOPICS": topic,
        "WATCHER_KAFKA__DEPLOYMENTS_TOPICS": topic + "-d",
        "WATCHER_KAFKA__DEAD_LETTER_TOPIC": topic + "-dl",
        "WATCHER_KAFKA__GROUP_ID": topic,
        "WATCHER_KAFKA__SESSION_TIMEOUT_MS": "2000",
        "WATCHER_KAFKA__HEARTBEAT_INTERVAL_MS": "200",
        "WATCHER_KAFKA__REQUEST_TIMEOUT_MS": "3000",
        "WATCHER_JUDGE__DECISION_LOG": str(tmp_path / "decisions.sqlite"),
        "WATCHER_CHECKPOINT__PATH": str(tmp_path / "checkpoint.sqlite"),
    }
    log_path = tmp_path / "watcher.log"
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "watcher",
            "--config",
            str(config),
            "run",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )

    async def until(check: Any, what: str, timeout: float = 40.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            got = await check()
            if got:
                return got
            assert proc.returncode is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, (
                f"timed out waiting for {what}:\n{log_path.read_text()[-3000:]}"
            )
            await asyncio.sleep(0.1)

    async def port() -> int | None:
        m = re.search(r"HTTP API on http://[\d.]+:(\d+)", log_path.read_text(errors="replace"))
        return int(m.group(1)) if m else None

    try:
        base = f"http://127.0.0.1:{await until(port, 'the HTTP port')}"
        async with aiohttp.ClientSession() as http:

            async def get(path: str) -> Any:
                async with http.get(base + path) as r:
                    return await (r.text() if path == "/metrics" else r.json())

            async def metrics() -> dict[Any, float]:
                return _samples(await get("/metrics"))

            async def consumed(n: int) -> Any:
                s = await metrics()
                return s if sum(v for (k, _), v in s.items() if k == "watcher_turns_total") >= n else None

            await produce(topic, head, key=b"support-bot")
            before = await until(lambda: consumed(head_turns), "the first part")
            (rollout,) = (await get("/v1/rollouts"))["rollouts"]
            rid = rollout["rollout_id"]
            loose = {
                (m["metric"], m["slice"]): m["threshold"]
                for m in (await get(f"/v1/rollouts/{rid}"))["evidence"]
            }
            assert loose and (await get("/v1/decisions"))["decisions"] == []

            # a tighter policy and a new sink, then SIGHUP
            _write(policy, TIGHT)
            _config(tmp_path, policy=policy, sinks=HOOK)
            proc.send_signal(signal.SIGHUP)
            applied = ("watcher_config_reloads_total", frozenset({("result", "applied")}))
            after = await until(lambda: _metric_at_least(metrics, applied, 1), "the reload")
            assert _state_series(after) == _state_series(before)  # nothing counted again, nothing lost
            assert ("watcher_outbox_backlog", frozenset({("sink", "hook")})) in after  # the new sink runs
            tight = {
                (m["metric"], m["slice"]): m["threshold"]
                for m in (await get(f"/v1/rollouts/{rid}"))["evidence"]
            }
            assert tight.keys() == loose.keys() and all(tight[k] < loose[k] / 1e100 for k in tight)
            reloaded_at = after[("watcher_config_last_reload_success_timestamp_seconds", frozenset())]

            # the running rollout is now judged by the new policy: the rest of the stream rolls it back
            await produce(topic, tail, key=b"support-bot")

            async def rolled_back() -> Any:
                return [d["action"] for d in (await get("/v1/decisions"))["decisions"]] == ["rollback"]

            await until(rolled_back, "the rollback under the new policy")

            # an invalid policy: rejected, named, and the one in force stays
            _write(policy, "version: 1\ndefaults:\n  alpha: 7\n")
            proc.send_signal(signal.SIGHUP)
            rejected = ("watcher_config_reloads_total", frozenset({("result", "rejected")}))
            final = await until(lambda: _metric_at_least(metrics, rejected, 1), "the rejection")
            assert final[applied] == 1
            assert final[("watcher_config_last_reload_success_timestamp_seconds", frozenset())] == reloaded_at
            text = log_path.read_text()
            assert "configuration reload rejected" in text and "defaults.alpha" in text
            now = {
                (m["metric"], m["slice"]): m["threshold"]
                for m in (await get(f"/v1/rollouts/{rid}"))["evidence"]
            }
            assert tight.keys() <= now.keys() and all(
                now[k] == tight[k] for k in tight
            )  # still the tight ones
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _metric_at_least(metrics: Any, key: Any, value: float) -> Any:
    s = await metrics()
    return s if s.get(key, 0) >= value else None


def test_every_strategy_keeps_its_judge_state_under_a_new_policy(tmp_path: Path) -> None:
    tight = load_policy(_write(tmp_path / "tight.yaml", TIGHT))
    for preset in ("shadow_quality_down", "blue_green_regression", "flag_errors_x4"):
        scenario = dataclasses.replace(
            STRATEGY_PRESETS[preset], duration_s=900.0 if "shadow" in preset else 2400.0
        )
        engine = Engine(
            load_settings(environ={}), policies=load_policy(_write(tmp_path / "loose.yaml", LOOSE))
        )
        _feed(engine, list(generate(scenario)), batch=700)
        assert engine.judges, preset
        for rid, judge in list(engine.judges.items()):
            before = judge.to_state()
            pending = dict(getattr(judge, "pending", {}))
            assert bool(pending) == ("shadow" in preset)  # live turns still waiting for their shadow
            assert engine.replace_policies(tight) == {}
            assert engine.judges[rid].policy == tight.default and engine.judges[rid].to_state() == before, (
                preset
            )
            assert dict(getattr(engine.judges[rid], "pending", {})) == pending  # shadow: pairs still waiting
