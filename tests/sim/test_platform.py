"""The platform simulator (``watcher simulate --agents N``): Zipf traffic, rollouts of every strategy,
churn with promotions and rollbacks, reproducible, keyed per agent in Kafka."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import replace
from functools import cache
from typing import Any

import numpy as np
import pytest

from watcher.contract import Deduplicator, decode_batch
from watcher.errors import ConfigError
from watcher.sim import simulate as sim
from watcher.sim.platform import Platform, events, plan

SMALL = Platform(agents=60, duration_s=3 * 3600, conversations_per_s=6.0, rollout_share=0.3, rollout_s=1200)


@cache
def _stream(p: Platform) -> tuple[list[str], list[str], list[bool]]:
    keys: list[str] = []
    lines: list[str] = []
    marks: list[bool] = []
    for k, ls, ms in events(p):
        marks.extend(i in ms for i in range(len(ls)))
        keys.extend(k)
        lines.extend(ls)
    return keys, lines, marks


def _docs(p: Platform) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _stream(p)[1]]


def test_seeded_and_reproducible() -> None:
    assert _stream(SMALL) == _stream(replace(SMALL))
    assert _stream(replace(SMALL, seed=2))[1] != _stream(SMALL)[1]


def test_events_are_valid_ordered_unique_and_keyed_by_their_agent() -> None:
    keys, lines, marks = _stream(SMALL)
    docs = _docs(SMALL)
    batch = decode_batch([line.encode() for line in lines], Deduplicator(10**7))
    assert not batch.rejected and not batch.duplicates  # the contract, and event ids unique platform-wide
    assert len(batch.turns) + len(batch.deployments) == len(lines)
    ts = [d["ts"] for d in docs]
    assert ts == sorted(ts)
    assert all(d["agent_id"] == k for d, k in zip(docs, keys))
    assert marks == [d["schema"] == "watcher.deployment/v1" for d in docs]
    # a conversation belongs to one agent and one period: ids never collide across them
    owner: dict[str, str] = {}
    for d in docs:
        if "conversation_id" in d:
            assert owner.setdefault(d["conversation_id"], d["agent_id"]) == d["agent_id"]


def test_traffic_follows_zipf() -> None:
    p = Platform(agents=200, duration_s=1800, conversations_per_s=20.0, rollout_share=0.0)
    counts = Counter(d["conversation_id"].split("-")[1] for d in _docs(p) if d.get("turn") == 0)
    total = sum(counts.values())
    share = p.rates() / p.conversations_per_s
    # the busiest agent: ~17 % of the conversations (1 / H_200); the top ten ~50 %
    first = counts[f"{1:03d}"] / total
    assert first == pytest.approx(share[0], rel=0.1)
    top10 = sum(counts[f"{i:03d}"] for i in range(1, 11)) / total
    assert top10 == pytest.approx(share[:10].sum(), rel=0.05)
    assert counts["200"] < counts["001"] / 100  # a long quiet tail


def test_rollouts_of_every_strategy_churn_and_end_promoted_or_rolled_back() -> None:
    p = Platform(agents=300, duration_s=4 * 3600, conversations_per_s=5.0, rollout_share=0.2, rollout_s=1800)
    periods = plan(p)
    rollouts = [q for q in periods if q.rollout]
    assert {q.scenario.strategy for q in rollouts} == {"canary", "flag", "shadow", "blue_green"}
    mix = Counter(q.scenario.strategy for q in rollouts)
    assert mix["canary"] / len(rollouts) == pytest.approx(0.55, abs=0.08)
    regressed = [q for q in rollouts if q.scenario.regressions]
    assert len(regressed) / len(rollouts) == pytest.approx(0.2, abs=0.06)
    assert all(q.end_marker == "rolled_back" for q in regressed if q.end_marker)
    assert all(q.end_marker in ("promoted", None) for q in rollouts if not q.scenario.regressions)
    # about rollout_share of the agents are in a rollout at any time, the first hour on
    for t in np.arange(0, p.duration_s, 900.0):
        running = sum(q.start_s <= t < q.start_s + q.scenario.duration_s for q in rollouts)
        assert running / p.agents == pytest.approx(p.rollout_share, abs=0.07), t
    # a promoted version becomes the agent's live version; the next rollout ships a new one
    by_agent: dict[int, list[Any]] = {}
    for q in periods:
        by_agent.setdefault(q.agent, []).append(q)
    promoted = 0
    for qs in by_agent.values():
        for a, b in zip(qs, qs[1:]):
            if a.rollout and a.end_marker == "promoted" and a.scenario.strategy != "flag":
                assert b.scenario.baseline_version == a.scenario.canary_version
                promoted += 1
            if a.rollout and a.end_marker == "rolled_back":
                assert b.scenario.baseline_version == a.scenario.baseline_version
    assert promoted > 20


def test_markers_start_and_end_each_rollout() -> None:
    docs = _docs(SMALL)
    markers = [d for d in docs if d["schema"] == "watcher.deployment/v1"]
    started = Counter((m["agent_id"], m["strategy"]) for m in markers if m["action"] == "started")
    ended = [m for m in markers if m["action"] in ("promoted", "rolled_back")]
    rollouts = [q for q in plan(SMALL) if q.rollout]
    assert sum(started.values()) == len(rollouts)
    assert len(ended) == sum(q.end_marker is not None for q in rollouts)
    for m in ended:  # an end marker names its rollout as the start marker did
        assert (m["agent_id"], m["strategy"]) in started
    live = [d for d in docs if d.get("arm") is None and "turn" in d]
    assert live  # agents outside rollouts send arm null


def test_command_line_options_compose_and_bad_ones_name_the_option() -> None:
    parser = argparse.ArgumentParser()
    sim.add_arguments(parser)
    args = parser.parse_args(
        "--agents 50 --seed 4 --duration 600 --conversations-per-second 9 --zipf 1.2 --rollout-share 0.2 "
        "--rollout-minutes 10 --strategy canary --regression metric=error,size=x4 --canary-weight 0.3 "
        "--out x.jsonl".split()
    )
    p = sim.platform_from_args(args)
    assert (p.agents, p.seed, p.duration_s, p.conversations_per_s, p.zipf) == (50, 4, 600.0, 9.0, 1.2)
    assert (p.rollout_share, p.rollout_s, dict(p.strategies), p.canary_weight) == (
        0.2,
        600.0,
        {"canary": 1.0},
        0.3,
    )
    assert [r.metric.value for r in p.regressions] == ["error"]
    for bad, field in (
        ("--agents 5 --preset demo", "simulate.preset"),
        ("--agents 5 --strategy canary --strategy-mix flag=1", "simulate.strategy"),
    ):
        with pytest.raises(ConfigError) as err:
            sim.platform_from_args(parser.parse_args([*bad.split(), "--out", "x"]))
        assert err.value.field == field
    # a value the platform model refuses is reported under the option typed, not the model's field
    for bad, field, message in (
        ("--agents 5 --zipf -1", "simulate.zipf", "--zipf must be >= 0"),
        ("--agents 0", "simulate.agents", "--agents must be >= 1"),
        ("--agents 5 --rollout-minutes 0", "simulate.rollout_minutes", "--rollout-minutes must be > 0"),
        ("--agents 5 --conversations-per-second 0", "simulate.conversations_per_second", "--conv"),
    ):
        with pytest.raises(ConfigError) as err:
            sim.platform_from_args(parser.parse_args([*bad.split(), "--out", "x"]))
        assert (err.value.field, err.value.message[: len(message)]) == (field, message)
    with pytest.raises(SystemExit):
        parser.parse_args(["--strategy-mix", "canary=1,rolling=2"])


async def test_single_agent_options_refuse_platform_ones(tmp_path: Any) -> None:
    parser = argparse.ArgumentParser()
    sim.add_arguments(parser)
    with pytest.raises(ConfigError) as err:
        await sim.run(parser.parse_args(["--zipf", "2", "--out", str(tmp_path / "x")]))
    assert err.value.field == "simulate.zipf"


async def test_produce_platform_keys_every_event_by_its_agent(broker: Any, unique_topic: Any) -> None:
    from aiokafka import AIOKafkaConsumer

    from watcher.kafka.embedded import TopicSpec, create_topics

    telemetry, deployments = unique_topic("plat-telemetry"), unique_topic("plat-deployments")
    await create_topics(
        broker.bootstrap_servers, [TopicSpec(telemetry, partitions=4), TopicSpec(deployments, partitions=4)]
    )
    p = replace(SMALL, duration_s=900.0)
    n = await sim.produce_platform(p, broker.bootstrap_servers, telemetry, deployments_topic=deployments)
    keys, lines, marks = _stream(p)
    assert n == len(lines)
    consumer = AIOKafkaConsumer(
        telemetry,
        deployments,
        bootstrap_servers=broker.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    got: list[Any] = []
    try:
        for _ in range(200):
            for msgs in (await consumer.getmany(timeout_ms=200)).values():
                got += msgs
            if len(got) >= n:
                break
    finally:
        await consumer.stop()
    assert len(got) == n
    partition_of: dict[tuple[str, bytes], int] = {}
    for m in got:  # one agent, one partition (per topic)
        assert partition_of.setdefault((m.topic, m.key), m.partition) == m.partition
        assert json.loads(m.value)["agent_id"].encode() == m.key
    assert len({p for (_, _), p in partition_of.items()}) > 1
    assert sum(m.topic == deployments for m in got) == sum(marks)
