"""The sinks' wire formats, checked by receivers that validate against the providers' documented
formats (tests/receivers.py), the settings, and the Kafka and OpenTelemetry sinks."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.receivers import (
    Grafana,
    Receiver,
    Running,
    WebhookReceiver,
    documented_verifier,
    eventually,
    make_decision,
    make_rollout,
    marker,
    pagerduty_respond,
    validate_pagerduty,
    validate_slack,
)
from watcher.backoff import Backoff
from watcher.config import MASK, load_settings
from watcher.errors import ConfigError
from watcher.outbox import Outbox
from watcher.outbox.delivery import idempotency_key
from watcher.sinks import SinkSettings, build_sinks, sink_settings
from watcher.sinks.grafana import GrafanaSettings
from watcher.sinks.kafka import KafkaSinkSettings
from watcher.sinks.otel import OtelSettings
from watcher.sinks.pagerduty import PagerDutySettings
from watcher.sinks.slack import SlackSettings
from watcher.sinks.webhook import WebhookSettings

FAST = Backoff(initial_s=0.01, max_s=0.05, jitter=0.0)
T_START, T_END = 1795767000.0, 1795767600.0


async def deliver(tmp_path: Path, settings: list[SinkSettings], feed: Any, expect: int, **kw: Any) -> Outbox:
    """Enqueue with ``feed(outbox)``, run until ``expect`` deliveries are finished; returns the outbox."""
    outbox = Outbox(tmp_path / "o.sqlite", build_sinks(settings, **kw), retry=FAST)
    feed(outbox)
    async with Running(outbox):
        await eventually(
            lambda: sum(d["status"] != "pending" for d in outbox.deliveries(limit=1000)) >= expect
        )
    return outbox


# --- webhook ----------------------------------------------------------------------------------------


async def test_webhook_is_signed_and_verifies_with_the_documented_snippet(tmp_path: Path) -> None:
    rx = await WebhookReceiver(b"s3cret").start()
    try:
        s = WebhookSettings(name="deployer", url=rx.url + "/hook", hmac_secret="s3cret")
        d = make_decision(1)
        outbox = await deliver(tmp_path, [s], lambda o: o.enqueue_decisions([d]), 1)
    finally:
        await rx.stop()
    assert rx.errors == [] and len(rx.arrivals) == 1
    a = rx.arrivals[0]
    assert a.json["decision_id"] == d.decision_id and a.json["schema"] == "watcher.decision/v1"
    assert a.headers["X-Watcher-Event"] == "decision"
    assert a.key == idempotency_key(d.decision_id, "deployer", "decision")
    assert a.headers["X-Watcher-Signature"].startswith("v1=")
    assert abs(int(a.headers["X-Watcher-Timestamp"]) - time.time()) < 5
    verify = documented_verifier()
    assert verify(b"s3cret", a.headers, a.body)
    assert not verify(b"wrong", a.headers, a.body)
    assert not verify(b"s3cret", a.headers, a.body.replace(b"rollback", b"promote"))  # tampered body
    assert not verify(b"s3cret", a.headers, a.body, now=time.time() + 3600)  # replayed an hour later
    # the same MAC computed independently
    ts = a.headers["X-Watcher-Timestamp"]
    expected = hmac.new(b"s3cret", f"{ts}.".encode() + a.body, hashlib.sha256).hexdigest()
    assert a.headers["X-Watcher-Signature"] == f"v1={expected}"
    outbox.close()


async def test_webhook_with_a_wrong_secret_fails_permanently(tmp_path: Path) -> None:
    rx = await WebhookReceiver(b"s3cret").start()
    try:
        s = WebhookSettings(name="deployer", url=rx.url, hmac_secret="not-the-secret")
        outbox = await deliver(tmp_path, [s], lambda o: o.enqueue_decisions([make_decision(1)]), 1)
    finally:
        await rx.stop()
    assert rx.unsigned == 1  # 401: not retried
    (row,) = outbox.deliveries()
    assert row["status"] == "failed" and row["last_error"].startswith("HTTP 401")
    outbox.close()


# --- Slack ------------------------------------------------------------------------------------------


async def test_slack_one_valid_message_per_decision_within_limits(tmp_path: Path) -> None:
    rx = await Receiver(validate_slack).start()
    long_agent = "agent-" + "x" * 300
    decisions = [
        make_decision(1, action="pause"),
        make_decision(
            2, rows=400, fail_at=399
        ),  # long evidence list: cut, the failing row (last) shown first
        make_decision(3, agent=long_agent, rollout_id="ro-long"),
        make_decision(4, action="promote", rows=0),
    ]
    try:
        s = SlackSettings(
            name="slack",
            url=rx.url + "/services/T/B/X",
            api_url="https://watcher.example",
            dashboard_url="https://grafana.example/d/w?var-agent={agent_id}&env={environment}",
        )
        outbox = await deliver(tmp_path, [s], lambda o: o.enqueue_decisions(decisions), 4)
    finally:
        await rx.stop()
    assert rx.errors == []
    assert [d["status"] for d in outbox.deliveries()] == ["delivered"] * 4
    messages = rx.bodies()
    assert len(messages) == 4  # one per decision, never batched
    # one rollout's decisions in order; the other rollout's rollback (critical) went first
    long_one, pause, big, promote = messages
    assert pause["blocks"][0]["text"]["text"].endswith("Pause: support-bot/prod v42")
    assert "pause: quality in all fell 0.095" in pause["text"]
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in pause["blocks"][2]["fields"]}
    assert fields["*Metric*"] == "quality" and fields["*Segment*"] == "`all`"
    assert fields["*Effect*"] == "-0.095, interval -0.1487 .. -0.0413"
    assert (
        fields["*Canary*"] == "n=203, estimate 0.6351" and fields["*Baseline*"] == "n=1985, estimate 0.7301"
    )
    # the trigger's worst canary conversations, linked to their traces when a trace link is configured
    (examples,) = [
        b["text"]["text"] for b in pause["blocks"] if "Worst canary" in b.get("text", {}).get("text", "")
    ]
    assert examples.split("\n") == [
        "*Worst canary conversations* on quality:",
        "• <https://tempo.example/4bf92f35|`conv-17`> (0.125, trace `4bf92f3577b34da6a3ce929d0e0e4736`)",
        "• `conv-4` (0.25)",
    ]
    assert not any("Worst canary" in b.get("text", {}).get("text", "") for b in promote["blocks"])
    links = pause["blocks"][-1]["elements"][0]["text"]
    assert "<https://watcher.example/v1/rollouts/ro-0123456789abcdef|Rollout in watcher>" in links
    assert "https://grafana.example/d/w?var-agent=support-bot&env=prod" in links
    evidence = next(
        b["text"]["text"]
        for b in big["blocks"]
        if b["type"] == "section" and b.get("text", {}).get("text", "").startswith("*Evidence*")
    )
    lines = evidence.split("\n")
    assert lines[0] == "*Evidence* (1 failing of 400 rows)"
    assert lines[1].startswith(":x: *quality* in `all`")  # the failing row first
    assert len(lines) == 1 + 8 + 1 and lines[-1] == "_… and 392 more rows in the decision record_"
    assert len(json.dumps(big)) < 8000
    assert len(long_one["blocks"][0]["text"]["text"]) == 150
    assert promote["blocks"][0]["text"]["text"].startswith(":white_check_mark: Promote")
    outbox.close()


# --- PagerDuty --------------------------------------------------------------------------------------


async def test_pagerduty_trigger_update_resolve_and_change_events(tmp_path: Path) -> None:
    rx = await Receiver(validate_pagerduty, pagerduty_respond).start()

    def feed(o: Outbox) -> None:
        o.enqueue_rollout_change("started", make_rollout(), T_START, marker("started", T_START))
        o.enqueue_decisions([make_decision(1, action="pause"), make_decision(2, action="rollback")])
        o.enqueue_rollout_change(
            "ended", make_rollout("rolled_back", ended=T_END), T_END, marker("rolled_back", T_END)
        )
        # a second rollout that only ever got promoted: no alert, so nothing to resolve
        o.enqueue_decisions([make_decision(1, action="promote", rollout_id="ro-quiet")])

    try:
        s = PagerDutySettings(
            name="oncall",
            url=rx.url,
            routing_key="R" * 32,
            pause_severity="error",
            api_url="https://watcher.example",
        )
        outbox = await deliver(tmp_path, [s], feed, 5)
    finally:
        await rx.stop()
    assert rx.errors == []
    sent = [(a.path, (a.json or {}).get("event_action"), a.json) for a in rx.arrivals]
    assert [(p, act) for p, act, _ in sent] == [
        ("/v2/change/enqueue", None),
        ("/v2/enqueue", "trigger"),
        ("/v2/enqueue", "trigger"),
        ("/v2/change/enqueue", None),
        ("/v2/enqueue", "resolve"),
    ]
    pause, rollback, resolve = sent[1][2], sent[2][2], sent[4][2]
    assert (
        pause["dedup_key"] == rollback["dedup_key"] == resolve["dedup_key"] == "watcher/ro-0123456789abcdef"
    )
    assert pause["payload"]["severity"] == "error" and rollback["payload"]["severity"] == "critical"
    p = rollback["payload"]
    assert p["component"] == "support-bot" and p["group"] == "prod" and p["class"] == "quality"
    assert p["timestamp"].endswith("Z") and p["source"] == "watcher/support-bot/prod"
    assert (
        p["custom_details"]["failing_total"] == 1
        and p["custom_details"]["decision_id"] == make_decision(2).decision_id
    )
    assert {
        "href": "https://watcher.example/v1/rollouts/ro-0123456789abcdef",
        "text": "Rollout in watcher",
    } in rollback["links"]
    assert "rolled_back" in sent[3][2]["payload"]["summary"]
    assert all(d["status"] == "delivered" for d in outbox.deliveries())
    outbox.close()


async def test_pagerduty_keeps_the_alert_open_when_watcher_ended_the_rollout_itself(tmp_path: Path) -> None:
    rx = await Receiver(validate_pagerduty, pagerduty_respond).start()

    def feed(o: Outbox) -> None:
        o.enqueue_decisions([make_decision(1, action="rollback")])
        o.enqueue_rollout_change("ended", make_rollout("rolled_back", ended=T_END), T_END, None)
        o.enqueue_decisions([make_decision(2, action="resume", rollout_id="ro-other")])

    try:
        s = PagerDutySettings(name="oncall", url=rx.url, routing_key="R" * 32)
        outbox = await deliver(tmp_path, [s], feed, 3)
    finally:
        await rx.stop()
    assert [a.json.get("event_action") for a in rx.arrivals] == ["trigger"]  # no resolve, no change event
    outbox.close()


def test_pagerduty_summary_is_cut_to_1024() -> None:
    from watcher.outbox.outbox import decision_item

    (sink,) = build_sinks([PagerDutySettings(name="pd", routing_key="k")])
    d = make_decision(1)
    item = decision_item(d)
    item.record["reason"] = "x" * 5000
    (req,) = sink.render(item)
    assert len(req.body["payload"]["summary"]) == 1024
    assert validate_pagerduty("POST", "/v2/enqueue", {}, req.body) == []
    assert req.url == "https://events.pagerduty.com/v2/enqueue"


# --- Grafana ----------------------------------------------------------------------------------------


async def test_grafana_region_opened_then_closed_after_a_restart(tmp_path: Path) -> None:
    grafana = Grafana("glsa_token")
    rx = await Receiver(grafana.validate, grafana.respond).start()
    s = GrafanaSettings(name="grafana", url=rx.url, token="glsa_token", tags=("team-a",))
    try:
        first = await deliver(
            tmp_path,
            [s],
            lambda o: (
                o.enqueue_rollout_change("started", make_rollout(), T_START, marker("started", T_START)),
                o.enqueue_decisions([make_decision(1, action="pause")]),
            ),
            2,
        )
        first.close()
        second = await deliver(
            tmp_path,
            [s],
            lambda o: o.enqueue_rollout_change(
                "ended", make_rollout("promoted", ended=T_END), T_END, marker("promoted", T_END)
            ),
            3,
        )
        second.close()
    finally:
        await rx.stop()
    assert grafana_errors(rx) == []
    assert [(a.method, a.path) for a in rx.arrivals] == [
        ("POST", "/api/annotations"),
        ("POST", "/api/annotations"),
        ("PATCH", "/api/annotations/1"),
    ]
    region, point = grafana.annotations[1], grafana.annotations[2]
    assert region["time"] == int(T_START * 1000) and region["timeEnd"] == int(T_END * 1000)
    assert {
        "watcher",
        "agent:support-bot",
        "env:prod",
        "version:v42",
        "rollout:ro-0123456789abcdef",
        "outcome:promoted",
        "team-a",
    } <= set(region["tags"])
    assert region["text"].endswith(": promoted")
    assert point["text"] == make_decision(1, action="pause").reason and "decision:pause" in point["tags"]
    assert rx.arrivals[0].headers["Authorization"] == "Bearer glsa_token"


async def test_grafana_tags_fit_for_the_longest_ids(tmp_path: Path) -> None:
    from watcher.sinks.grafana import fit_tag

    grafana = Grafana("t")
    rx = await Receiver(grafana.validate, grafana.respond).start()
    s = GrafanaSettings(name="grafana", url=rx.url, token="t")
    long_a, long_b = "a" * 127 + "1", "a" * 127 + "2"  # agent ids may have 128 characters
    try:
        outbox = await deliver(
            tmp_path,
            [s],
            lambda o: o.enqueue_decisions(
                [
                    make_decision(1, agent=long_a, rollout_id="ro-1"),
                    make_decision(2, agent=long_b, rollout_id="ro-2"),
                ]
            ),
            2,
        )
        outbox.close()
    finally:
        await rx.stop()
    assert grafana_errors(rx) == []
    agents = [next(t for t in a["tags"] if t.startswith("agent:")) for a in grafana.annotations.values()]
    assert len(set(agents)) == 2 and all(len(t) == 100 for t in agents)  # cut, and still apart
    assert fit_tag("agent:support-bot") == "agent:support-bot"
    with pytest.raises(ConfigError, match=r"sinks\[grafana\]\.tags\[0\]: must have at most 100 characters"):
        sink_settings(
            [{"name": "grafana", "type": "grafana", "url": rx.url, "token": "t", "tags": ["x" * 101]}]
        )


def grafana_errors(rx: Receiver) -> list[str]:
    return rx.errors


async def test_grafana_posts_the_whole_region_when_the_start_was_never_annotated(tmp_path: Path) -> None:
    grafana = Grafana("t")
    rx = await Receiver(grafana.validate, grafana.respond).start()
    try:
        s = GrafanaSettings(name="grafana", url=rx.url, token="t", dashboard_uid="abc", panel_id=4)
        outbox = await deliver(
            tmp_path,
            [s],
            lambda o: o.enqueue_rollout_change(
                "ended", make_rollout("rolled_back", ended=T_END), T_END, marker("rolled_back", T_END)
            ),
            1,
        )
        outbox.close()
    finally:
        await rx.stop()
    assert rx.errors == []
    (only,) = grafana.annotations.values()
    assert only["time"] == int(T_START * 1000) and only["timeEnd"] == int(T_END * 1000)
    assert only["dashboardUID"] == "abc" and only["panelId"] == 4


async def test_grafana_wrong_token_is_a_permanent_failure(tmp_path: Path) -> None:
    grafana = Grafana("right")
    rx = await Receiver(grafana.validate, grafana.respond).start()
    try:
        s = GrafanaSettings(name="grafana", url=rx.url, token="wrong")
        outbox = await deliver(tmp_path, [s], lambda o: o.enqueue_decisions([make_decision(1)]), 1)
    finally:
        await rx.stop()
    assert len(rx.arrivals) == 1 and outbox.deliveries()[0]["status"] == "failed"
    outbox.close()


# --- OpenTelemetry ----------------------------------------------------------------------------------


async def test_otel_sink_records_each_decision_as_a_span_with_an_event(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    s = OtelSettings(name="traces")
    d = make_decision(1, action="pause")
    outbox = await deliver(
        tmp_path,
        [s],
        lambda o: (
            o.enqueue_decisions([d]),
            o.enqueue_rollout_change("started", make_rollout(), T_START, marker("started", T_START)),
        ),
        2,
        tracer_provider=provider,
    )
    spans = exporter.get_finished_spans()
    assert [sp.name for sp in spans] == ["watcher.decision", "watcher.rollout_change"]
    attrs = dict(spans[0].attributes or {})
    assert attrs["watcher.decision.decision_id"] == d.decision_id
    assert attrs["watcher.decision.action"] == "pause" and attrs["watcher.decision.reason"] == d.reason
    assert attrs["watcher.decision.rollout.rollout_id"] == "ro-0123456789abcdef"
    assert attrs["watcher.decision.trigger.metric"] == "quality"
    assert attrs["deployment.environment.name"] == "prod"
    assert list(attrs["watcher.decision.evidence.failing"]) == [d.evidence[0].reason]  # type: ignore[arg-type]
    assert spans[0].parent is None
    (event,) = spans[0].events
    assert event.name == "watcher.decision" and event.timestamp == int(d.ts * 1e9)
    assert dict(spans[1].attributes or {})["watcher.marker.marker.action"] == "started"
    outbox.close()


# --- Kafka (real broker) ----------------------------------------------------------------------------


async def test_kafka_sink_writes_decisions_and_rollout_changes(
    tmp_path: Path, broker: Any, unique_topic: Any, kafka_options: dict[str, Any]
) -> None:
    from aiokafka import AIOKafkaConsumer

    from watcher.kafka.embedded import TopicSpec, create_topics

    decisions_topic, markers_topic = unique_topic("decisions"), unique_topic("markers")
    await create_topics(broker.bootstrap_servers, [TopicSpec(decisions_topic), TopicSpec(markers_topic)])
    s = KafkaSinkSettings(
        name="bus",
        bootstrap_servers=broker.bootstrap_servers,
        topic=decisions_topic,
        markers_topic=markers_topic,
        timeout_s=5.0,
    )
    d1, d2 = make_decision(1, action="pause"), make_decision(2, agent="other-bot", rollout_id="ro-2")
    outbox = await deliver(
        tmp_path,
        [s],
        lambda o: (
            o.enqueue_decisions([d1, d2]),
            o.enqueue_rollout_change("started", make_rollout(), T_START, marker("started", T_START)),
        ),
        3,
    )
    assert [d["status"] for d in outbox.deliveries()] == ["delivered"] * 3
    outbox.close()

    consumer = AIOKafkaConsumer(
        decisions_topic,
        markers_topic,
        bootstrap_servers=broker.bootstrap_servers,
        auto_offset_reset="earliest",
        request_timeout_ms=3000,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(10):
            while len(records) < 3:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
    finally:
        await consumer.stop()
    by_topic: dict[str, list[Any]] = {}
    for r in records:
        by_topic.setdefault(r.topic, []).append(r)
    decisions = sorted(by_topic[decisions_topic], key=lambda r: r.offset)
    # two rollouts: the rollback (d2) goes before the pause (d1) enqueued before it
    assert [json.loads(r.value)["decision_id"] for r in decisions] == [d2.decision_id, d1.decision_id]
    assert [r.key for r in decisions] == [b"other-bot", b"support-bot"]
    assert json.loads(decisions[1].value)["schema"] == "watcher.decision/v1"
    assert (
        dict(decisions[1].headers)["idempotency-key"]
        == idempotency_key(d1.decision_id, "bus", "record").encode()
    )
    (change,) = by_topic[markers_topic]
    body = json.loads(change.value)
    assert body["schema"] == "watcher.rollout_change/v1" and body["kind"] == "started"
    assert body["marker"]["action"] == "started" and change.key == b"support-bot"


async def test_kafka_sink_retries_while_the_broker_is_unreachable(tmp_path: Path) -> None:
    from watcher.kafka.embedded import free_port

    s = KafkaSinkSettings(name="bus", bootstrap_servers=f"127.0.0.1:{free_port()}", timeout_s=1.0)
    (sink,) = build_sinks([s])
    outbox = Outbox(tmp_path / "o.sqlite", [sink], retry=FAST)
    outbox.enqueue_decisions([make_decision(1)])
    async with Running(outbox):
        await eventually(lambda: outbox.deliveries()[0]["attempts"] >= 2, timeout=10)
    (row,) = outbox.deliveries()
    assert row["status"] == "pending" and row["last_error"]
    outbox.close()


# --- settings ---------------------------------------------------------------------------------------

SAMPLE_YAML = """
- name: decisions-topic
  type: kafka
- name: deployer
  type: webhook
  url: https://deployer.internal/hooks/watcher
  hmac_secret: change-me
  environments: [prod]
  min_severity: warning
- name: team-slack
  type: slack
  url: https://hooks.slack.com/services/T000/B000/XXXX
  kinds: [decision, drift]
  timeout_s: 5
- name: oncall
  type: pagerduty
  routing_key: R0UT1NG
- name: grafana
  type: grafana
  url: https://grafana.internal
  token: glsa_x
  panel_id: 3
- name: traces
  type: otel
"""


def load_sinks(text: str) -> tuple[SinkSettings, ...]:
    """The ``sinks:`` entries as the configuration loader keeps them, validated as start-up does."""
    import yaml

    settings = load_settings(environ={}, overrides={"sinks": yaml.safe_load(text)})
    return sink_settings(settings.sinks)


def test_settings_load_from_yaml_through_the_config_loader() -> None:
    sinks = load_sinks(SAMPLE_YAML)
    assert [s.type for s in sinks] == ["kafka", "webhook", "slack", "pagerduty", "grafana", "otel"]
    assert sinks[1].environments == ("prod",) and sinks[2].timeout_s == 5.0
    assert isinstance(sinks[4], GrafanaSettings) and sinks[4].panel_id == 3
    masked = load_settings(environ={}, overrides={"sinks": []}).masked(sinks)["sinks"]
    assert masked[1]["hmac_secret"] == MASK and masked[3]["routing_key"] == MASK
    assert masked[4]["token"] == MASK and masked[2]["url"] == MASK  # a Slack webhook URL is a credential
    assert "hmac_secret" not in masked[0] and masked[0]["type"] == "kafka"  # each type has its own options
    assert len(build_sinks(sinks)) == 6


def test_the_sample_in_the_docs_is_valid() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "integrations.md").read_text()
    block = text.split("```yaml\nsinks:\n", 1)[1].split("```", 1)[0]
    import textwrap

    sinks = load_sinks(textwrap.dedent(block))
    assert len(sinks) == 6


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"name": "x", "type": "sms"}, "sinks[x].type"),
        ({"type": "slack", "url": "https://h"}, "sinks[0].name"),
        ({"name": "has space", "type": "otel"}, "sinks[0].name"),
        ({"name": "s", "type": "slack"}, "sinks[s].url"),
        ({"name": "s", "type": "slack", "url": "ftp://h"}, "sinks[s].url"),
        ({"name": "w", "type": "webhook", "url": "https://h"}, "sinks[w].hmac_secret"),
        ({"name": "p", "type": "pagerduty"}, "sinks[p].routing_key"),
        ({"name": "g", "type": "grafana", "url": "https://g"}, "sinks[g].token"),
        ({"name": "o", "type": "otel", "min_severity": "fatal"}, "sinks[o].min_severity"),
        ({"name": "o", "type": "otel", "kinds": ["decision", "alert"]}, "sinks[o].kinds[1]"),
        ({"name": "o", "type": "otel", "timeout_s": 0}, "sinks[o].timeout_s"),
        ({"name": "o", "type": "otel", "max_attempts": 0}, "sinks[o].max_attempts"),
        ({"name": "o", "type": "otel", "max_attempts": 20}, "sinks[o].max_attempts"),  # replaced: named
        ({"name": "o", "type": "otel", "retry_for_s": 0}, "sinks[o].retry_for_s"),
        ({"name": "b", "type": "kafka", "topic": "decisions for all"}, "sinks[b].topic"),
        (
            {"name": "p", "type": "pagerduty", "routing_key": "k", "pause_severity": "info"},
            "sinks[p].pause_severity",
        ),
        ({"name": "o", "type": "otel", "colour": "red"}, "sinks[o].colour"),
        ({"name": "o", "type": "otel", "url": "https://h"}, "sinks[o].url"),  # another type's option
        ({"name": "k", "type": "kafka", "topic": ""}, "sinks[k].topic"),
    ],
)
def test_invalid_settings_name_the_field(entry: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        sink_settings([entry])
    assert err.value.field == field


def test_an_unknown_type_lists_the_known_ones_and_a_secret_is_never_shown() -> None:
    with pytest.raises(ConfigError) as err:
        sink_settings([{"name": "x", "type": "sms"}])
    assert "kafka, webhook, slack, pagerduty, grafana, otel" in str(err.value)
    with pytest.raises(ConfigError) as err:
        sink_settings([{"name": "w", "type": "webhook", "url": "https://h", "hmac_secret": 12345678}])
    assert err.value.field == "sinks[w].hmac_secret" and "12345678" not in str(err.value)


def test_duplicate_sink_names_are_an_error() -> None:
    with pytest.raises(ConfigError) as err:
        load_sinks("- {name: a, type: otel}\n- {name: a, type: otel}\n")
    assert err.value.field == "sinks[1].name"


def test_filters_by_agent_environment_severity_and_kind() -> None:
    from watcher.outbox.outbox import change_item, decision_item

    (sink,) = build_sinks(
        [
            SlackSettings(
                name="s",
                url="https://h",
                agents=("support-bot",),
                environments=("prod",),
                min_severity="warning",
            )
        ]
    )
    assert sink.accepts(decision_item(make_decision(1, action="pause")))
    assert not sink.accepts(decision_item(make_decision(1, action="promote")))  # info < warning
    assert not sink.accepts(decision_item(make_decision(1, agent="other")))
    assert not sink.accepts(decision_item(make_decision(1, environment="staging")))
    assert not sink.accepts(
        change_item("ended", make_rollout("rolled_back", ended=T_END), T_END)
    )  # not a kind it takes
