"""Dashboards and alerts against a real Prometheus scraping a real watcher.

The embedded broker carries 300 s of event time of three agents (a rollback, a pause, a drift; see
``test_dashboards.e2e_scenarios``), a rollout that ends, and two malformed messages. A watcher
``Daemon`` consumes it in-process, checkpointing (1 s interval) and pushing its decisions to two
webhook sinks on a local receiver: ``deployer`` (delivered, signature verified) and ``misconfigured``
(a wrong HMAC secret: refused with 401, a permanent failure), so every outbox series exists. A real
``prometheus`` process (1 s scrape and rule evaluation, ``alerts/*.yml`` loaded) scrapes it. Then
every dashboard query — template variables resolved from Prometheus as Grafana does — must return
series, and every alert expression must be valid, with
the alerts this traffic should raise firing and the metrics under the quiet ones present with the
labels the rules use. A metric renamed in watcher fails here.

No prometheus binary: skipped locally, a failure when ``CI`` is set.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.daemon import daemon_topics
from tests.support.ops import (
    METRIC_RE,
    RULE_FILES,
    argo_prometheus_query,
    dashboard_queries,
    dashboards,
    e2e_scenarios,
    ended_rollout_markers,
    flagger_metric_query,
    label_values_query,
    require_tool,
    rules,
    substitute,
    unjudged_rollout_events,
    variables,
)
from tests.support.receivers import WebhookReceiver
from watcher.config import load_settings
from watcher.service.compose import build_daemon
from watcher.sim.simulate import produce as simulate_produce

# Single-value variables take these values when Prometheus offers them (the rollback rollout).
PREFERRED = {
    "agent": "support-bot",
    "environment": "prod",
    "slice": "all",
    "metric": "quality",
    "segment_key": "intent",
}
# The traffic raises these alerts; the others are quiet by design (a healthy watcher).
EXPECTED_FIRING = {
    "WatcherRolloutRollback",
    "WatcherRolloutPaused",
    "WatcherDriftSignal",
    "WatcherDeadLetters",
    "WatcherDeliveriesFailing",
    "WatcherRollbackUndelivered",  # the misconfigured sink refuses the rollback too
}
# The traffic holds two malformed messages: whether their share of a few seconds of rate() crosses
# 1 % depends on when Prometheus scraped, so this one may or may not hold (checked for validity only).
MAY_FIRE = {"WatcherEventsRejected"}
# solo-bot's blue-green switch has no history of the old version: its condition holds from the
# start, and the alert waits its 10 minutes (pending) before it fires
EXPECTED_PENDING = {"WatcherRolloutUnjudged"}
HOOK_SECRET = "e2e-hook-secret"
BAD_MESSAGES = [b"not json", b'{"schema":"watcher.turn/v1","event_id":"bad-1"}']


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prom:
    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, **params: Any) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:  # 400 with a JSON error body for a bad query
            return json.loads(exc.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
        return answer["data"]["result"]

    def series(self, selector: str) -> list[dict[str, str]]:
        answer = self.get("/api/v1/series", **{"match[]": selector, "start": time.time() - 600})
        assert answer["status"] == "success", f"{selector}: {answer.get('error')}"
        return answer["data"]


async def _until(what: str, predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.25)


def _resolve_variables(prom: Prom, board: dict[str, Any]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Variable values as Grafana would substitute them: 'All' (allValue) for multi-value variables,
    the preferred (else first) value for single ones; repeat variables keep their option list."""
    values: dict[str, str] = {}
    options: dict[str, list[str]] = {}
    for v in variables(board):
        if v["type"] == "datasource":
            continue
        if v["type"] == "custom":
            found = v["query"].split(",")
        else:
            selector, label = label_values_query(v["query"])
            found = sorted({s[label] for s in prom.series(substitute(selector, values)) if label in s})
            assert found, f"{board['uid']}: variable ${v['name']} ({v['query']}) has no values"
        options[v["name"]] = found
        if v.get("multi"):
            values[v["name"]] = v.get("allValue") or "(" + "|".join(map(re.escape, found)) + ")"
        else:
            values[v["name"]] = PREFERRED[v["name"]] if PREFERRED.get(v["name"]) in found else found[0]
    return values, options


def _labels_used(rule: dict[str, Any]) -> set[str]:
    text = " ".join(rule["annotations"].values())
    used = set(re.findall(r"\$labels\.(\w+)", text))
    for clause in re.findall(r"\b(?:by|on|group_left|group_right)\s*\(([^)]*)\)", rule["expr"]):
        used |= {x.strip() for x in clause.split(",") if x.strip()}
    return used


@pytest.fixture
def prometheus_binary() -> str:
    return require_tool("prometheus")


async def test_dashboards_and_alerts_against_a_real_prometheus(
    prometheus_binary: str, broker: Any, unique_topic: Any, tmp_path: Path
) -> None:
    topics = await daemon_topics(broker, unique_topic)
    receiver = await WebhookReceiver(HOOK_SECRET.encode()).start()
    settings = load_settings(
        environ={},
        overrides={
            "kafka.bootstrap_servers": broker.bootstrap_servers,
            "kafka.telemetry_topics": [topics["telemetry"]],
            "kafka.deployments_topics": [topics["deployments"]],
            "kafka.dead_letter_topic": topics["deadletter"],
            "kafka.group_id": topics["telemetry"] + "-group",
            "kafka.session_timeout_ms": 2000,
            "kafka.heartbeat_interval_ms": 200,
            "kafka.request_timeout_ms": 3000,
            "http.port": 0,
            "judge.decision_log": str(tmp_path / "decisions.sqlite"),
            "log_level": "WARNING",
            "outbox.path": str(tmp_path / "outbox.sqlite"),
            "spool.path": str(tmp_path / "spool.sqlite"),
            "checkpoint.path": str(tmp_path / "checkpoint.sqlite"),
            "checkpoint.interval_s": 1.0,
            "sinks": [
                {
                    "name": "deployer",
                    "type": "webhook",
                    "url": receiver.url + "/deploy",
                    "hmac_secret": HOOK_SECRET,
                },
                {
                    "name": "misconfigured",
                    "type": "webhook",
                    "url": receiver.url + "/deploy",
                    "hmac_secret": "not-the-secret",
                },
            ],
        },
    )
    daemon = build_daemon(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    prom_proc: subprocess.Popen[bytes] | None = None
    try:
        await _until("the daemon to be ready", lambda: daemon.port is not None and daemon.readiness()[0], 30)
        port = _free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(f) for f in RULE_FILES],
            "scrape_configs": [
                {"job_name": "watcher", "static_configs": [{"targets": [f"127.0.0.1:{daemon.port}"]}]}
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = (tmp_path / "prometheus.log").open("wb")
        prom_proc = subprocess.Popen(
            [
                prometheus_binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.console.templates=/nonexistent",
                "--web.console.libraries=/nonexistent",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        prom = Prom(f"http://127.0.0.1:{port}")

        def scraped(expr: str) -> bool:
            try:
                return bool(prom.query(expr))
            except (OSError, AssertionError):
                return False

        # a first scrape before the traffic: counters start at 0 in Prometheus, as in production
        await _until("the first scrape", lambda: scraped('up{job="watcher"} == 1'), 30)

        scenarios = e2e_scenarios()
        from aiokafka import AIOKafkaProducer

        unjudged = unjudged_rollout_events(scenarios[0].start_ts)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
        await producer.start()
        try:
            for raw in ended_rollout_markers(scenarios[0].start_ts):
                await producer.send_and_wait(topics["telemetry"], raw, key=b"promo-bot")
            for raw in unjudged:
                await producer.send(topics["telemetry"], raw, key=b"solo-bot")
            await producer.flush()
            for raw in BAD_MESSAGES:
                await producer.send_and_wait(topics["telemetry"], raw, key=b"bad-producer")
        finally:
            await producer.stop()
        counts = await asyncio.gather(
            *(simulate_produce(s, broker.bootstrap_servers, topics["telemetry"]) for s in scenarios)
        )
        expected = sum(counts) + len(ended_rollout_markers(0.0)) + len(BAD_MESSAGES) + len(unjudged)
        await _until(f"{expected} events consumed", lambda: daemon.events_consumed >= expected, 60)
        assert daemon.events_consumed == expected
        actions = {
            r.agent_id: daemon.engine.last_action.get(r.rollout_id) for r in daemon.engine.registry.all()
        }
        assert actions["support-bot"].value == "rollback" and actions["sales-bot"].value == "pause", actions

        await _until(
            "the consumed total in Prometheus",
            lambda: scraped(f"sum(watcher_events_consumed_total) == {expected}"),
            20,
        )
        # checkpoints and deliveries happen after the batches: wait until Prometheus has seen them
        await _until(
            "a checkpoint in Prometheus", lambda: scraped("watcher_checkpoint_last_timestamp_seconds > 0"), 20
        )
        await _until(
            "deliveries in Prometheus",
            lambda: (
                scraped('watcher_outbox_delivery_latency_seconds_count{sink="deployer"} > 0')
                and scraped(
                    'watcher_outbox_deliveries_total{sink="misconfigured", outcome="failed_permanent"} > 0'
                )
            ),
            20,
        )
        await _until(
            "the alerts to fire (and the unjudged rollout's to wait)",
            lambda: (
                {(a["labels"]["alertname"], a["state"]) for a in prom.get("/api/v1/alerts")["data"]["alerts"]}
                >= {(n, "firing") for n in EXPECTED_FIRING} | {(n, "pending") for n in EXPECTED_PENDING}
            ),
            20,
        )
        # a rate() needs two samples of a series in its window: the whole traffic can be consumed,
        # checkpointed and delivered between two scrapes (1 s), so wait for a second sample of each
        await _until(
            "two scrapes of the traffic's series",
            lambda: all(
                scraped(f"min(count_over_time({m}[1m])) >= 2")
                for m in (
                    "watcher_events_consumed_total",
                    "watcher_turns_total",
                    "watcher_conversations_total",
                    "watcher_outbox_delivery_latency_seconds_bucket",
                )
            ),
            20,
        )

        # --- every dashboard query returns series ---
        failures: list[str] = []
        checked = 0
        for board in dashboards().values():
            values, options = _resolve_variables(prom, board)
            for where, expr, panel in dashboard_queries(board):
                local = dict(values)
                if panel is not None and panel.get("repeat"):
                    name = panel["repeat"]
                    local[name] = PREFERRED.get(name, options[name][0])
                    assert local[name] in options[name], (where, options[name])
                final = substitute(expr, local)
                assert "$" not in final, final
                checked += 1
                if not prom.query(final):
                    failures.append(f"{where}: {final}")
        assert not failures, "dashboard queries without data:\n" + "\n".join(failures)
        assert checked > 60

        # the edge case the segment view exists for: the canary fails in intent=billing
        billing = prom.query(
            'watcher_metric_verdict{metric="quality", slice="intent=billing", verdict="fail"} == 1'
        )
        assert {s["metric"]["agent"] for s in billing} == {"support-bot"}

        # --- every alert expression is valid; the expected ones fire; the quiet ones have their inputs ---
        by_name: dict[str, list[dict[str, str]]] = {}
        for s in prom.query("ALERTS"):
            by_name.setdefault(s["metric"]["alertname"], []).append(s["metric"])
        for rule in rules():
            name = rule["alert"]
            result = prom.query(rule["expr"])
            if name in EXPECTED_FIRING | EXPECTED_PENDING:
                state = "firing" if name in EXPECTED_FIRING else "pending"
                assert result, f"{name} should hold for this traffic: {rule['expr']}"
                assert any(a["alertstate"] == state for a in by_name.get(name, [])), f"{name} is not {state}"
                for label in re.findall(r"\$labels\.(\w+)", " ".join(rule["annotations"].values())):
                    assert all(label in a for a in by_name[name]), (name, label, by_name[name])
                continue
            if name not in MAY_FIRE:
                assert not result, f"{name} fires on a healthy watcher: {result}"
            selectors = {
                m.group(0)
                for m in re.finditer(r"\b(?:watcher_[a-z0-9_]+|up)\b(\{[^}]*\})?(?!\s*\()", rule["expr"])
            }
            assert selectors and all(METRIC_RE.match(s) for s in selectors), name
            labels: set[str] = set()
            for selector in selectors:
                found = prom.query(selector)
                assert found, f"{name}: {selector} has no series"
                for s in found:
                    labels |= set(s["metric"])
            missing = _labels_used(rule) - labels
            assert not missing, f"{name} uses labels its inputs do not have: {missing}"

        rollback = by_name["WatcherRolloutRollback"]
        assert [
            (a["agent"], a["canary_version"], a["baseline_version"], a["severity"]) for a in rollback
        ] == [("support-bot", "v42", "v41", "critical")]
        assert [a["agent"] for a in by_name["WatcherRolloutPaused"]] == ["sales-bot"]

        # the deployers' Prometheus checks (deploy/argo, deploy/flagger) on the same series: Argo's
        # query is -1 after a rollback (its failureCondition), 0 while undecided, never empty;
        # Flagger's is 1 after a rollback (above thresholdRange.max 0), else 0
        def value(query: str) -> float:
            found = prom.query(query)
            assert len(found) == 1, (query, found)
            return float(found[0]["value"][1])

        argo = {"agent": "support-bot", "environment": "prod", "canary_version": "v42"}
        assert value(argo_prometheus_query(**argo)) == -1
        assert value(argo_prometheus_query(**{**argo, "agent": "sales-bot", "canary_version": "v8"})) == 0
        assert value(argo_prometheus_query(**{**argo, "canary_version": "v999"})) == 0
        assert value(flagger_metric_query(**argo)) == 1
        assert value(flagger_metric_query(agent="sales-bot", environment="prod", canary_version="v8")) == 0
        assert {(a["agent"], a["metric"]) for a in by_name["WatcherDriftSignal"]} >= {("faq-bot", "quality")}
        assert [a["sink"] for a in by_name["WatcherDeliveriesFailing"]] == ["misconfigured"]

        # the deliveries behind the outbox series: the deployer got the decisions, signed; the
        # misconfigured sink's requests were refused and not retried
        # the two sinks' workers are independent: wait until both have handled every decision
        await _until("both sinks done", lambda: receiver.unsigned == len(receiver.bodies("/deploy")), 10)
        await _until("an empty backlog", lambda: not scraped("watcher_outbox_backlog > 0"), 10)
        delivered = receiver.bodies("/deploy")
        actions_delivered = {(d["rollout"]["agent_id"], d["action"]) for d in delivered}
        assert {("support-bot", "rollback"), ("sales-bot", "pause")} <= actions_delivered, actions_delivered
        assert receiver.accepted_once()
        assert receiver.unsigned == len(delivered)
        assert receiver.errors == ["signature did not verify"] * receiver.unsigned
        assert not prom.query('watcher_outbox_deliveries_total{outcome="retried"} > 0')
        empty = {s["metric"]["sink"] for s in prom.query("watcher_outbox_backlog == 0")}
        assert empty == {"deployer", "misconfigured"}
    finally:
        stop.set()
        await receiver.stop()
        if prom_proc is not None:
            prom_proc.terminate()
            try:
                prom_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                prom_proc.kill()
                prom_proc.wait()
        assert await asyncio.wait_for(task, 20) == 0
