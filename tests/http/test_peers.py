"""Several instances: every member learns every partition's owner, and requests about an agent
another instance owns are answered by that instance (two in-process daemons, real broker, real HTTP)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import aiohttp

from tests.support.daemon import daemon_settings as _settings
from tests.support.daemon import until as _until
from watcher.engine.tasks import partition_for
from watcher.http.peers import FORWARDED_HEADER, advertising_assignor
from watcher.kafka.embedded import TopicSpec, create_topics
from watcher.service.compose import build_daemon
from watcher.service.daemon import Daemon
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate

PARTITIONS = 4


def test_the_leader_tells_every_member_every_partitions_owner() -> None:
    from aiokafka.cluster import ClusterMetadata
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

    class Cluster(ClusterMetadata):  # the two co-partitioned topics, four partitions each
        def partitions_for_topic(self, topic: str) -> set[int]:
            return set(range(PARTITIONS))

    learned: list[dict[int, str]] = []
    assignor = advertising_assignor(lambda: "http://a:8080", learned.append)
    meta = assignor.metadata(["telemetry", "deployments"])
    assert meta.user_data == b"http://a:8080"
    members = {
        "m-1": meta,
        "m-2": ConsumerProtocolMemberMetadata(0, ["telemetry", "deployments"], b"http://b:8080"),
    }
    out = assignor.assign(Cluster(), members)
    for member_id, assignment in out.items():
        mine = {p for _topic, parts in assignment.assignment for p in parts}
        assignor.on_assignment(assignment)
        owners = learned[-1]
        assert owners == {0: "http://a:8080", 1: "http://a:8080", 2: "http://b:8080", 3: "http://b:8080"}
        own_url = "http://a:8080" if member_id == "m-1" else "http://b:8080"
        assert mine == {p for p, url in owners.items() if url == own_url}
        assert dict(assignment.assignment)["telemetry"] == dict(assignment.assignment)["deployments"]

    assignment = out["m-1"]
    assignment.user_data = b"not json"
    assignor.on_assignment(assignment)
    assert learned[-1] == {}  # answered locally rather than crash the rebalance


def _agent_in(partitions: set[int]) -> str:
    return next(f"agent-{i}" for i in range(100) if partition_for(f"agent-{i}", PARTITIONS) in partitions)


async def test_a_request_about_another_instances_agent_is_answered_by_its_owner(
    broker, unique_topic, tmp_path: Path
) -> None:
    regressed, healthy = _agent_in({0, 1}), _agent_in({2, 3})  # one per member (range assignor)
    topics = {
        "telemetry": unique_topic("telemetry"),
        "deployments": unique_topic("deployments"),
        "deadletter": unique_topic("deadletter"),
    }
    await create_topics(
        broker.bootstrap_servers,
        [
            TopicSpec(topics["telemetry"], PARTITIONS),
            TopicSpec(topics["deployments"], PARTITIONS),
            TopicSpec(topics["deadletter"]),
        ],
    )
    targets = [
        {"namespace": "agents", "name": a, "agent_id": a, "environment": "prod"} for a in (regressed, healthy)
    ]
    daemons: list[Daemon] = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        settings = _settings(
            broker,
            tmp_path / name,
            topics,
            **{
                "checkpoint.scope": "partition",
                "checkpoint.path": str(tmp_path / "checkpoint.sqlite"),
                "checkpoint.interval_s": 1.0,
                "hooks.flagger": targets,
            },
        )
        daemons.append(build_daemon(settings))
    stop = asyncio.Event()
    runs = [asyncio.create_task(d.run(stop)) for d in daemons]

    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all", linger_ms=5)
    await producer.start()
    try:
        for agent, base in (
            (regressed, PRESETS["demo"]),
            (healthy, dataclasses.replace(PRESETS["demo"], regressions=())),
        ):
            scenario = dataclasses.replace(base, agent_id=agent, duration_s=420.0, conversations_per_s=8.0)
            for line in generate(scenario):
                await producer.send(topics["telemetry"], line, key=agent.encode())
        await producer.flush()
    finally:
        await producer.stop()

    def owner_of(agent: str) -> Daemon | None:
        held = [
            d
            for d in daemons
            if d.engine.registry.active(agent, "prod")
            or d.engine.registry.all()
            and any(r.agent_id == agent for r in d.engine.registry.all())
        ]
        return held[0] if len(held) == 1 else None

    try:
        await _until(lambda: all(d.readiness()[0] for d in daemons), 30)
        await _until(
            lambda: (
                owner_of(regressed) is not None
                and owner_of(healthy) is not None
                and any(a.value == "rollback" for d in daemons for a in d.engine.last_action.values())
            ),
            60,
        )
        owners = {agent: owner_of(agent) for agent in (regressed, healthy)}
        assert owners[regressed] is not owners[healthy], "each instance owns one of the agents"
        async with aiohttp.ClientSession() as http:
            for agent, owner in owners.items():
                other = next(d for d in daemons if d is not owner)
                url = f"/v1/verdict?agent={agent}&environment=prod"
                direct = await http.get(f"http://127.0.0.1:{owner.port}{url}")
                via = await http.get(f"http://127.0.0.1:{other.port}{url}")
                assert via.status == direct.status == 200
                assert (await via.json())["data"]["decision"] == (await direct.json())["data"]["decision"]
                assert via.headers["X-Watcher-Owner"] == owner.peers.address  # type: ignore[union-attr]
                assert "X-Watcher-Owner" not in direct.headers

                # a rollout id the other instance does not hold: it asks its peers
                rollout_id = next(r.rollout_id for r in owner.engine.registry.all() if r.agent_id == agent)
                got = await http.get(f"http://127.0.0.1:{other.port}/v1/rollouts/{rollout_id}")
                assert got.status == 200 and (await got.json())["rollout_id"] == rollout_id
                got = await http.get(f"http://127.0.0.1:{other.port}/v1/rollouts/{rollout_id}/verdict")
                direct = await http.get(f"http://127.0.0.1:{owner.port}/v1/rollouts/{rollout_id}/verdict")
                assert (await got.json()) == (await direct.json())
                assert got.headers["X-Watcher-Owner"] == owner.peers.address  # type: ignore[union-attr]

            # Flagger asks the wrong instance whether to roll back: the owner's answer comes back
            body = json.dumps(
                {
                    "name": regressed,
                    "namespace": "agents",
                    "phase": "Progressing",
                    "checksum": "c",
                    "metadata": {},
                }
            )
            wrong = next(d for d in daemons if d is not owners[regressed])
            resp = await http.post(
                f"http://127.0.0.1:{wrong.port}/v1/flagger/rollback",
                data=body,
                headers={"Content-Type": "application/json"},  # as Flagger sends it
            )
            answer = await resp.json()
            assert resp.status == 200 and answer["outcome"] == "rollback", answer
            assert resp.headers["X-Watcher-Owner"] == owners[regressed].peers.address  # type: ignore[union-attr]
            resp = await http.post(
                f"http://127.0.0.1:{wrong.port}/v1/flagger/rollback",
                data=json.dumps(
                    {
                        "name": healthy,
                        "namespace": "agents",
                        "phase": "Progressing",
                        "checksum": "c",
                        "metadata": {},
                    }
                ),
                headers={"Content-Type": "application/json"},
            )
            assert resp.status == 409 and "X-Watcher-Owner" not in resp.headers  # healthy is wrong's own

            # a forwarded request is answered where it lands, never forwarded again
            resp = await http.get(
                f"http://127.0.0.1:{wrong.port}/v1/verdict?agent={regressed}&environment=prod",
                headers={FORWARDED_HEADER: "test"},
            )
            assert "X-Watcher-Owner" not in resp.headers
    finally:
        stop.set()
        await asyncio.gather(*runs)
