"""Fault injection: receivers that fail, throttle, hang, go away, and an outbox that restarts.

The invariant everywhere: every item arrives, and each idempotency key is accepted exactly once
unless a response was lost (then the receiver saw the same key again, which is what the key is for).
Backoff is shrunk to milliseconds so the whole file runs in seconds.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.support.receivers import (
    Grafana,
    Receiver,
    Running,
    WebhookReceiver,
    eventually,
    make_decision,
    make_rollout,
    marker,
    pagerduty_respond,
    validate_pagerduty,
    validate_slack,
)
from watcher.backoff import Backoff
from watcher.kafka.embedded import free_port
from watcher.outbox import Outbox
from watcher.sinks import SinkSettings, build_sinks
from watcher.sinks.grafana import GrafanaSettings
from watcher.sinks.pagerduty import PagerDutySettings
from watcher.sinks.slack import SlackSettings
from watcher.sinks.webhook import WebhookSettings

FAST = Backoff(initial_s=0.02, factor=2.0, max_s=0.2, jitter=0.5)


def slack(rx: Receiver, **kw: object) -> SinkSettings:
    return SlackSettings(name=str(kw.pop("name", "slack")), url=rx.url + "/hook", **kw)  # type: ignore[arg-type]


def finished(outbox: Outbox) -> int:
    return sum(d["status"] != "pending" for d in outbox.deliveries(limit=1000))


async def test_500s_are_retried_until_accepted_exactly_once(tmp_path: Path) -> None:
    rx = await Receiver(validate_slack).start()
    rx.fail(3, status=500)
    registry = CollectorRegistry()
    outbox = Outbox(tmp_path / "o.sqlite", build_sinks([slack(rx)]), retry=FAST, registry=registry)
    outbox.enqueue_decisions([make_decision(i) for i in range(1, 4)])
    try:
        async with Running(outbox):
            await eventually(lambda: finished(outbox) == 3)
    finally:
        await rx.stop()
    assert rx.errors == []
    assert len(rx.accepted) == 3 and rx.accepted_once()
    assert len(rx.arrivals) == 6  # the first decision 4 times (3 x 500, then 200), the others once
    assert (
        registry.get_sample_value("watcher_outbox_deliveries_total", {"sink": "slack", "outcome": "retried"})
        == 3
    )
    assert [d["attempts"] for d in outbox.deliveries()] == [1, 1, 4]
    outbox.close()


async def test_429_retry_after_in_seconds_and_as_an_http_date_is_honoured(tmp_path: Path) -> None:
    rx = await Receiver(validate_pagerduty, pagerduty_respond).start()
    rx.fail(1, status=429, retry_after="1")
    rx.fail(1, status=429, retry_after=lambda: email.utils.formatdate(time.time() + 2, usegmt=True))
    s = PagerDutySettings(name="pd", url=rx.url, routing_key="k" * 32)
    outbox = Outbox(tmp_path / "o.sqlite", build_sinks([s]), retry=FAST)
    outbox.enqueue_decisions([make_decision(1)])
    try:
        async with Running(outbox):
            await eventually(lambda: finished(outbox) == 1, timeout=6)
    finally:
        await rx.stop()
    t = [a.t for a in rx.arrivals]
    assert len(t) == 3 and rx.accepted_once()
    assert t[1] - t[0] >= 0.95  # not the 20 ms backoff
    assert t[2] - t[1] >= 0.95  # the date was 2 s ahead, at one-second resolution: 1-2 s
    outbox.close()


@pytest.mark.parametrize("status", [400, 403, 404, 410])
async def test_slack_permanent_statuses_are_not_retried_and_are_reported(tmp_path: Path, status: int) -> None:
    rx = await Receiver(validate_slack).start()
    rx.fail(1, status=status, body="invalid_payload" if status == 400 else "no_service")
    registry = CollectorRegistry()
    outbox = Outbox(tmp_path / "o.sqlite", build_sinks([slack(rx)]), retry=FAST, registry=registry)
    first, second = make_decision(1), make_decision(2)
    outbox.enqueue_decisions([first, second])
    try:
        async with Running(outbox):
            await eventually(lambda: finished(outbox) == 2)
            await asyncio.sleep(0.1)  # room for a wrong retry to show up
    finally:
        await rx.stop()
    assert len(rx.arrivals) == 2  # one each: the rejected one was not retried
    (failed,) = outbox.deliveries(status="failed")
    assert failed["item_id"] == first.decision_id and failed["attempts"] == 1
    assert failed["last_error"].startswith(f"HTTP {status}")
    assert outbox.deliveries(status="delivered")[0]["item_id"] == second.decision_id
    labels = {"sink": "slack", "outcome": "failed_permanent"}
    assert registry.get_sample_value("watcher_outbox_deliveries_total", labels) == 1
    assert (
        registry.get_sample_value("watcher_outbox_deliveries_total", {"sink": "slack", "outcome": "retried"})
        == 0
    )
    outbox.close()


async def test_a_timeout_fires_and_the_retry_carries_the_same_key(tmp_path: Path) -> None:
    rx = await WebhookReceiver(b"k").start()
    rx.fail(1, status=200, delay=1.0)  # accepted, but the answer comes after the sink has given up
    s = WebhookSettings(name="hook", url=rx.url, hmac_secret="k", timeout_s=0.3)
    outbox = Outbox(tmp_path / "o.sqlite", build_sinks([s]), retry=FAST)
    outbox.enqueue_decisions([make_decision(1), make_decision(2)])
    started = time.monotonic()
    try:
        async with Running(outbox):
            await eventually(lambda: finished(outbox) == 2)
            elapsed = time.monotonic() - started
            await asyncio.sleep(0.8)  # let the slow handler finish
    finally:
        await rx.stop()
    assert elapsed < 0.9  # the 0.3 s timeout fired, not the receiver's 1 s
    first_key = rx.arrivals[0].key
    assert [a.key for a in rx.arrivals].count(first_key) == 2  # at-least-once: the response was lost
    assert len(rx.accepted) == 2  # ...but two items, two keys: a receiver deduplicating on the key acts twice
    assert outbox.deliveries()[-1]["attempts"] == 2
    outbox.close()


async def test_a_receiver_that_is_down_for_a_while_gets_everything_when_it_comes_back(tmp_path: Path) -> None:
    rx = await Receiver(validate_pagerduty, pagerduty_respond).start()
    await rx.down()
    s = PagerDutySettings(name="pd", url=rx.url, routing_key="k" * 32)
    registry = CollectorRegistry()
    outbox = Outbox(tmp_path / "o.sqlite", build_sinks([s]), retry=FAST, registry=registry)
    outbox.enqueue_rollout_change("started", make_rollout(), 1795767000.0, marker("started", 1795767000.0))
    outbox.enqueue_decisions([make_decision(1, action="pause"), make_decision(2, action="promote")])
    try:
        async with Running(outbox):
            await eventually(lambda: outbox.deliveries()[-1]["attempts"] >= 3)
            assert registry.get_sample_value("watcher_outbox_backlog", {"sink": "pd"}) == 3
            assert (
                registry.get_sample_value("watcher_outbox_oldest_pending_age_seconds", {"sink": "pd"}) or 0
            ) > 0
            assert "ClientConnectorError" in (outbox.deliveries()[-1]["last_error"] or "")
            await rx.up()
            await eventually(lambda: finished(outbox) == 3)
    finally:
        await rx.stop()
    assert rx.errors == [] and rx.accepted_once()
    # in order, despite the outage: change event, trigger, resolve (the promote settles the pause)
    assert [(a.path, (a.json or {}).get("event_action")) for a in rx.arrivals] == [
        ("/v2/change/enqueue", None),
        ("/v2/enqueue", "trigger"),
        ("/v2/enqueue", "resolve"),
    ]
    assert registry.get_sample_value("watcher_outbox_backlog", {"sink": "pd"}) == 0
    outbox.close()


async def test_restart_in_the_middle_delivers_the_rest_once(tmp_path: Path) -> None:
    slack_rx = await Receiver(validate_slack).start()
    grafana = Grafana("t")
    grafana_rx = await Receiver(grafana.validate, grafana.respond).start()
    settings = [slack(slack_rx), GrafanaSettings(name="grafana", url=grafana_rx.url, token="t")]
    db = tmp_path / "o.sqlite"
    decisions = [make_decision(i, action="pause") for i in range(1, 9)]
    try:
        first = Outbox(db, build_sinks(settings), retry=FAST)
        first.enqueue_rollout_change("started", make_rollout(), 1795767000.0, marker("started", 1795767000.0))
        first.enqueue_decisions(decisions)
        slack_rx.slow = 0.05  # the process stops half way through
        async with Running(first):
            await eventually(lambda: len(slack_rx.accepted) >= 3)
        first.close()
        assert 3 <= len(slack_rx.accepted) < 8
        await grafana_rx.down()  # and Grafana is away across the restart
        second = Outbox(db, build_sinks(settings), retry=FAST)
        second.enqueue_decisions(decisions)  # a replay after the restart re-emits the same decisions: no-op
        second.enqueue_rollout_change(
            "ended",
            make_rollout("promoted", ended=1795767600.0),
            1795767600.0,
            marker("promoted", 1795767600.0),
        )
        async with Running(second):
            await asyncio.sleep(0.2)
            await grafana_rx.up()
            await eventually(lambda: finished(second) == 18)
        assert [d["status"] for d in second.deliveries(limit=100)] == ["delivered"] * 18
        second.close()
    finally:
        await slack_rx.stop()
        await grafana_rx.stop()
    assert slack_rx.errors == [] and grafana_rx.errors == []
    assert len(slack_rx.accepted) == 8 and len(grafana_rx.accepted) == 10
    # a response may be lost when the first process stops mid-request; nothing else arrives twice
    assert sum(len(v) for v in slack_rx.accepted.values()) <= 9 and grafana_rx.accepted_once()
    assert (
        grafana.annotations[1]["timeEnd"] == 1795767600000
    )  # the region opened before the restart closed after


async def test_a_slow_sink_does_not_delay_another_sink(tmp_path: Path) -> None:
    slow_rx = await Receiver(validate_slack, slow=0.5).start()
    fast_rx = await WebhookReceiver(b"k").start()
    settings = [
        slack(slow_rx, name="slow", timeout_s=5.0),
        WebhookSettings(name="fast", url=fast_rx.url, hmac_secret="k"),
    ]
    outbox = Outbox(tmp_path / "o.sqlite", build_sinks(settings), retry=FAST)
    try:
        async with Running(outbox):
            await asyncio.sleep(0.05)
            t0 = time.monotonic()
            outbox.enqueue_decisions([make_decision(i) for i in range(1, 6)])
            await eventually(lambda: len(fast_rx.accepted) == 5)
            fast_done = max(a.t for a in fast_rx.arrivals) - t0
            slow_seen = len(slow_rx.arrivals)
    finally:
        await slow_rx.stop()
        await fast_rx.stop()
    assert fast_done < 0.45, f"fast sink took {fast_done:.2f}s"  # less than one slow answer
    assert slow_seen <= 1  # the slow one is still on its first message (0.5 s each)
    assert fast_rx.accepted_once()
    outbox.close()


async def test_enqueue_stays_fast_while_sinks_are_dead(tmp_path: Path) -> None:
    hanging = await Receiver(slow=30.0).start()
    settings = [
        WebhookSettings(name="hanging", url=hanging.url, hmac_secret="k", timeout_s=5.0),
        SlackSettings(name="refused", url=f"http://127.0.0.1:{free_port()}/hook"),
    ]
    outbox = Outbox(tmp_path / "o.sqlite", build_sinks(settings), retry=FAST)
    timings: list[float] = []
    try:
        async with Running(outbox):
            for i in range(1, 301):
                started = time.perf_counter()
                outbox.enqueue_decisions([make_decision(i)])
                timings.append(time.perf_counter() - started)
                if i % 20 == 0:
                    await asyncio.sleep(0)  # let the workers run (and fail) in between
            backlog = {d["sink"] for d in outbox.deliveries(status="pending", limit=1000)}
    finally:
        await hanging.stop()
    timings.sort()
    assert timings[150] < 0.005 and timings[-1] < 0.25, (
        f"median {timings[150] * 1e3:.2f} ms, max {timings[-1] * 1e3:.1f} ms"
    )
    assert backlog == {"hanging", "refused"}
    outbox.close()


async def test_every_item_arrives_once_through_intermittent_faults_on_all_sinks(tmp_path: Path) -> None:
    hook = await WebhookReceiver(b"k").start()
    sl = await Receiver(validate_slack).start()
    pd = await Receiver(validate_pagerduty, pagerduty_respond).start()
    grafana = Grafana("t")
    gr = await Receiver(grafana.validate, grafana.respond).start()
    hook.fail(2, status=503)
    sl.fail(1, status=429, retry_after="0.2")
    pd.fail(2, status=500)
    gr.fail(1, status=502)
    settings = [
        WebhookSettings(name="hook", url=hook.url, hmac_secret="k", kinds=("decision", "marker", "drift")),
        slack(sl, kinds=("decision", "marker")),
        PagerDutySettings(name="pd", url=pd.url, routing_key="k" * 32),
        GrafanaSettings(name="grafana", url=gr.url, token="t"),
    ]
    outbox = Outbox(tmp_path / "o.sqlite", build_sinks(settings), retry=FAST)
    rollouts = [f"ro-{i:04d}" for i in range(5)]
    try:
        async with Running(outbox):
            for i, rid in enumerate(rollouts):
                ts = 1795767000.0 + i
                outbox.enqueue_rollout_change(
                    "started", make_rollout(rollout_id=rid), ts, marker("started", ts, f"s{i}")
                )
                outbox.enqueue_decisions(
                    [
                        make_decision(1, action="pause", rollout_id=rid),
                        make_decision(2, action="rollback", rollout_id=rid),
                    ]
                )
                outbox.enqueue_rollout_change(
                    "ended",
                    make_rollout("rolled_back", rollout_id=rid, ended=ts + 60),
                    ts + 60,
                    marker("rolled_back", ts + 60, f"e{i}"),
                )
            await eventually(lambda: finished(outbox) == 5 * 4 * 4, timeout=15)
    finally:
        for rx in (hook, sl, pd, gr):
            await rx.stop()
    assert [d["status"] for d in outbox.deliveries(limit=1000)] == ["delivered"] * 80
    for rx, expected in ((hook, 20), (sl, 20), (gr, 20), (pd, 5 * 5)):  # pd: 2 changes, 2 triggers, 1 resolve
        assert rx.errors == [], rx.errors
        assert len(rx.accepted) == expected and rx.accepted_once()
    assert len(grafana.annotations) == 15 and all(
        "timeEnd" in a for a in list(grafana.annotations.values())[::3]
    )
    outbox.close()
