"""A regressing canary, end to end: Kafka in, every signal out, and the deployers' hooks answering.

Real broker, real daemon, real HTTP: the receivers validate each payload against the provider's
documented format (tests/receivers.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import aiohttp

from tests.support.daemon import consume_all as _consume_all
from tests.support.daemon import daemon_settings as _settings
from tests.support.daemon import daemon_topics as _topics
from tests.support.daemon import until as _until
from tests.support.receivers import (
    Grafana,
    Receiver,
    WebhookReceiver,
    pagerduty_respond,
    validate_pagerduty,
    validate_slack,
)
from watcher.kafka.embedded import TopicSpec, create_topics
from watcher.service.compose import build_daemon
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate


async def test_rollback_reaches_every_sink_and_hook(broker, unique_topic, produce, tmp_path) -> None:
    topics = await _topics(broker, unique_topic)
    decisions_topic, changes_topic = unique_topic("decisions"), unique_topic("changes")
    await create_topics(broker.bootstrap_servers, [TopicSpec(decisions_topic), TopicSpec(changes_topic)])
    webhook = await WebhookReceiver(b"hook-secret").start()
    slack = await Receiver(validate_slack).start()
    pagerduty = await Receiver(validate_pagerduty, pagerduty_respond).start()
    grafana_store = Grafana("glsa_test")
    grafana = await Receiver(grafana_store.validate, grafana_store.respond).start()
    sinks = [
        {
            "name": "deployer",
            "type": "webhook",
            "url": webhook.url + "/rollback",
            "hmac_secret": "hook-secret",
        },
        {"name": "slack", "type": "slack", "url": slack.url + "/services/T/B/X"},
        {"name": "pd", "type": "pagerduty", "url": pagerduty.url, "routing_key": "R" * 32},
        {"name": "grafana", "type": "grafana", "url": grafana.url, "token": "glsa_test"},
        {"name": "kafka", "type": "kafka", "topic": decisions_topic, "markers_topic": changes_topic},
    ]
    settings = _settings(
        broker,
        tmp_path,
        topics,
        sinks=sinks,
        **{
            "hooks.flagger": [{"namespace": "bots", "name": "support", "agent_id": "support-bot"}],
        },
    )
    lines = list(generate(dataclasses.replace(PRESETS["demo"], duration_s=600.0)))  # rollback at ~330 s
    # one agent, one key, one partition: the marker is read before the telemetry it announces
    await produce(topics["telemetry"], lines, partitions=1, key=b"support-bot")
    daemon = build_daemon(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await _until(lambda: daemon.events_consumed >= len(lines))
        await _until(lambda: bool(daemon.decision_log.list()), timeout=10)
        decided = time.monotonic()
        decision = daemon.decision_log.list()[0]
        assert decision["action"] == "rollback"
        # within seconds of the decision: the webhook, Slack, PagerDuty and Grafana have it
        await _until(
            lambda: (
                webhook.accepted
                and slack.accepted
                and pagerduty.accepted
                and len(grafana_store.annotations) >= 2
            ),
            timeout=10,
        )
        assert time.monotonic() - decided < 10
        assert webhook.bodies()[0]["decision_id"] == decision["decision_id"]
        assert webhook.unsigned == 0 and not webhook.errors
        assert not slack.errors and "intent=billing" in json.dumps(slack.bodies()[0])
        triggers = [b for b in pagerduty.bodies("/v2/enqueue") if b["event_action"] == "trigger"]
        assert len(triggers) == 1 and triggers[0]["payload"]["severity"] == "critical"
        regions = [
            a
            for a in grafana_store.annotations.values()
            if "rollout:" + decision["rollout"]["rollout_id"] in a.get("tags", [])
        ]
        assert regions, grafana_store.annotations

        base = f"http://127.0.0.1:{daemon.port}"
        rollout_id = decision["rollout"]["rollout_id"]
        flagger = {
            "name": "support",
            "namespace": "bots",
            "phase": "Progressing",
            "checksum": "abc",
            "metadata": {},
        }
        async with aiohttp.ClientSession() as http:
            verdict = await (await http.get(f"{base}/v1/rollouts/{rollout_id}/verdict")).json()
            assert verdict["data"]["verdict"] == "fail"
            assert (await http.post(f"{base}/v1/flagger/rollback", json=flagger)).status == 200
            assert (await http.post(f"{base}/v1/flagger/confirm-promotion", json=flagger)).status == 409
            deliveries = await (await http.get(f"{base}/v1/deliveries")).json()
            assert {d["sink"] for d in deliveries["deliveries"]} >= {
                "deployer",
                "slack",
                "pd",
                "grafana",
                "kafka",
            }
            # the deployer rolls back and says so: PagerDuty resolves, the Grafana region closes
            marker = {
                "schema": "watcher.deployment/v1",
                "event_id": "rb-1",
                "ts": decision["ts_unix"] + 30,
                "agent_id": "support-bot",
                "action": "rolled_back",
                "canary_version": "v42",
            }
            assert (await http.post(f"{base}/v1/deployments", json=marker)).status == 202
        await _until(
            lambda: any(b["event_action"] == "resolve" for b in pagerduty.bodies("/v2/enqueue")), timeout=10
        )
        resolve = [b for b in pagerduty.bodies("/v2/enqueue") if b["event_action"] == "resolve"][0]
        assert resolve["dedup_key"] == triggers[0]["dedup_key"]
        await _until(
            lambda: any(
                "timeEnd" in a and "rollout:" + rollout_id in a.get("tags", [])
                for a in grafana_store.annotations.values()
            ),
            timeout=10,
        )
        for rx in (webhook, slack, pagerduty, grafana):
            assert rx.accepted_once(), "a delivery arrived twice with one idempotency key"
            assert not rx.errors, rx.errors
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0
        for rx in (webhook, slack, pagerduty, grafana):
            await rx.stop()
    records = [json.loads(v) for v in await _consume_all(broker.bootstrap_servers, decisions_topic, 1)]
    assert records and records[0]["schema"] == "watcher.decision/v1" and records[0]["action"] == "rollback"
    changes = [json.loads(v) for v in await _consume_all(broker.bootstrap_servers, changes_topic, 2)]
    assert len(changes) >= 2  # the start and the end of the rollout
