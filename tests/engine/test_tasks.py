"""Per-partition tasks: the partitioner, ownership, and the read view across tasks."""

from __future__ import annotations

import dataclasses

import pytest
from aiokafka.partitioner import DefaultPartitioner

from watcher.config import load_settings
from watcher.contract.decode import decode_deployment
from watcher.engine import Engine
from watcher.engine.tasks import Tasks, partition_for, scope_of
from watcher.service.replay import replay
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate


def test_partition_for_is_the_kafka_default_partitioner() -> None:
    partitioner = DefaultPartitioner()
    for n in (1, 3, 4, 12):
        for agent in ("support-bot", "billing-bot", "agent-7", "ünïcode"):
            expected = partitioner(agent.encode(), list(range(n)), list(range(n)))
            assert partition_for(agent, n) == expected
    assert scope_of(3) == "partition-3"


def _scenario(agent: str, seed: int, **kw: object) -> list[bytes]:
    return list(
        generate(
            dataclasses.replace(
                PRESETS["demo"], agent_id=agent, seed=seed, duration_s=400.0, conversations_per_s=4.0, **kw
            )
        )
    )


def test_the_view_answers_like_one_engine_over_the_tasks(tmp_path) -> None:
    settings = load_settings(environ={})
    tasks = Tasks(lambda: Engine(settings))
    tasks.partition_count = 8
    agents = ["agent-1", "agent-3"]
    parts = [partition_for(a, 8) for a in agents]
    assert parts[0] != parts[1]
    streams = {a: _scenario(a, seed) for a, seed in zip(agents, (1, 2))}
    for agent, p in zip(agents, parts):
        tasks.create(p).process(streams[agent])

    # the same lines through one engine (one instance, one state): the view must show the same
    path = tmp_path / "all.jsonl"
    path.write_bytes(b"\n".join(streams[agents[0]] + streams[agents[1]]) + b"\n")
    _, single = replay(path)

    assert sorted(tasks.state.keys()) == sorted(single.state.keys())
    for key in single.state.keys():  # batched differently: sums agree to rounding
        got, want = tasks.state.snapshot(key, "cumulative"), single.state.snapshot(key, "cumulative")
        assert (got.turns, got.conversations, got.events) == (want.turns, want.conversations, want.events)
        assert got.quality_mean == pytest.approx(want.quality_mean, rel=1e-9)
    assert {r.rollout_id for r in tasks.registry.all()} == {r.rollout_id for r in single.registry.all()}
    for r in single.registry.all():
        assert tasks.registry.get(r.rollout_id).agent_id == r.agent_id
        assert tasks.last_action.get(r.rollout_id) == single.last_action.get(r.rollout_id)
        assert (r.rollout_id in tasks.judges) == (r.rollout_id in single.judges)
        assert tasks.owner_of_rollout(r.rollout_id) is tasks.get(partition_for(r.agent_id, 8))
    assert tasks.state.watermark == single.state.watermark
    assert tasks.state.traffic_share("agent-3", "prod") == single.state.traffic_share("agent-3", "prod")
    assert len(tasks.state.summary_frame()) == len(single.state.summary_frame())
    assert tasks.registry.marker_times == single.registry.marker_times


def test_a_marker_goes_to_its_agents_task_or_is_forwarded() -> None:
    settings = load_settings(environ={})
    tasks = Tasks(lambda: Engine(settings))
    tasks.partition_count = 8
    mine = tasks.create(partition_for("agent-1", 8))
    other = partition_for("agent-3", 8)
    assert other != partition_for("agent-1", 8) and tasks.get(other) is None

    def marker(agent: str, event_id: str) -> object:
        return decode_deployment(
            b'{"schema":"watcher.deployment/v1","event_id":"%s","ts":1700000000,"agent_id":"%s",'
            b'"environment":"prod","action":"started","strategy":"canary","baseline_version":"v1",'
            b'"canary_version":"v2","canary_weight":0.2}' % (event_id.encode(), agent.encode())
        )

    change = tasks.apply_marker(marker("agent-1", "m-1"))
    assert change is not None and change.kind == "started"
    assert mine.registry.active("agent-1", "prod") is not None
    assert tasks.apply_marker(marker("agent-1", "m-1")) is None  # a duplicate, as for one engine
    forwarded = tasks.apply_marker(marker("agent-3", "m-2"))
    assert forwarded is not None and forwarded.kind == "forwarded" and forwarded.rollout is None
    assert tasks.registry.active("agent-3", "prod") is None  # the owner applies it from the topic


def test_hand_over_skips_what_the_state_holds_and_restores_on_the_next_owner() -> None:
    from prometheus_client import CollectorRegistry

    from watcher.kafka import Message
    from watcher.service.handover import Handover, HandoverMetrics
    from watcher.storage.checkpoint import MemoryCheckpointStore

    settings = load_settings(environ={})
    lines = _scenario("agent-1", 1)
    store = MemoryCheckpointStore()

    registry = CollectorRegistry()
    metrics = HandoverMetrics(registry)

    def owner() -> Handover:
        return Handover(
            Tasks(lambda: Engine(settings)), store, owner="group", interval_s=0.0, handover_metrics=metrics
        )

    def count(kind: str) -> float:
        return registry.get_sample_value("watcher_partition_handovers_total", {"kind": kind}) or 0.0

    first = owner()
    first.take_over([0])
    batch = [Message(v, "telemetry", 0, i) for i, v in enumerate(lines[:600])]
    batch += [Message(v, "telemetry", 1, i) for i, v in enumerate(lines[:50])]  # partition 1 is not ours
    result, covered = first.process(batch)
    assert covered == {0: {("telemetry", 0): 600}}
    turns = result.turns
    assert turns > 0
    first.advance(covered)
    again, covered = first.process(batch[:600])  # re-delivered after a hand-over: already in the state
    assert again.turns == 0 and covered == {}

    # revocation: checkpoint, release; the next owner restores and resumes where the state ends
    for cp in first.leaving([0, 1]):
        cp.save()
    assert first.release([0, 1]) == [0] and first.tasks.get(0) is None
    assert registry.get_sample_value("watcher_partitions_owned") == 0
    second = owner()
    second.take_over([0])
    assert (count("taken_over_fresh"), count("released"), count("taken_over")) == (1, 1, 1)
    assert registry.get_sample_value("watcher_partitions_owned") == 1
    assert second.resume_offset("telemetry", 0) == 600
    key = next(k for k in second.tasks.get(0).state.keys() if not k[4])
    assert second.tasks.state.snapshot(key).turns > 0
    rest, covered = second.process(
        [Message(v, "telemetry", 0, 600 + i) for i, v in enumerate(lines[600:900])]
    )
    assert covered == {0: {("telemetry", 0): 900}} and rest.turns > 0


def test_a_reloaded_policy_reaches_every_task_and_the_tasks_to_come(tmp_path) -> None:
    from watcher.judges.policy import load_policy

    loose = tmp_path / "loose.yaml"
    loose.write_text("version: 1\ndefaults:\n  alpha: 0.0001\n")
    tight = tmp_path / "tight.yaml"
    tight.write_text("version: 1\ndefaults:\n  alpha: 0.05\n")
    settings = load_settings(environ={})
    tasks = Tasks(lambda: Engine(settings, policies=tasks.policies), load_policy(loose))
    tasks.partition_count = 8
    engine = tasks.create(partition_for("agent-1", 8))
    engine.process(_scenario("agent-1", 1))
    (rid,) = engine.judges
    before = engine.judges[rid].to_state()
    new = load_policy(tight)
    assert tasks.replace_policies(new) == {}
    assert engine.judges[rid].policy == new.default and engine.judges[rid].to_state() == before
    assert tasks.policies is new and tasks.create(3).policies is new
