"""Dashboards, the compose stack and its mounted configs: what can be checked without Docker.

The helpers at the top (scenario, query extraction, template substitution, tool lookup) are shared
with tests/test_alerts.py and tests/test_prometheus_e2e.py, which run the same queries against a real
Prometheus. A missing promtool/amtool/prometheus skips locally and fails when ``CI`` is set.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from tests.support.ops import (
    BUILTINS,
    DASHBOARDS,
    ROOT,
    RULE_FILES,
    VAR_RE,
    dashboard_queries,
    dashboards,
    e2e_scenarios,
    ended_rollout_markers,
    label_values_query,
    panels,
    require_tool,
    rules,
    substitute,
    variables,
)
from watcher.contract import CATALOGUE, SERIES_FAMILIES, Family, metric_def

WATCHER_METRIC_RE = re.compile(r"\bwatcher_[a-z0-9_]+\b")
# Grafana's built-in interval variables, as the tests substitute them (scrape_interval 1 s there).


# --- shared helpers -----------------------------------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    return set(WATCHER_METRIC_RE.findall(expr))


def all_watcher_metric_names() -> dict[str, set[str]]:
    """metric name -> where it is used, over dashboards (queries and variables) and alert rules."""
    used: dict[str, set[str]] = {}
    for name, board in dashboards().items():
        texts = [e for _, e, _ in dashboard_queries(board)] + [
            v.get("query", "") for v in variables(board) if v["type"] == "query"
        ]
        for text in texts:
            for m in metric_names(text):
                used.setdefault(m, set()).add(name)
    for rule in rules():
        for m in metric_names(rule["expr"]):
            used.setdefault(m, set()).add(f"alert {rule['alert']}")
    return used


def documented(name: str, doc: str) -> bool:
    """Whether docs/metrics.md documents ``name`` (histogram series and watcher_segment_* families
    included)."""
    base = re.sub(r"_(bucket|count|sum)$", "", name)
    if re.search(rf"`{re.escape(base)}(`|\{{)", doc):
        return True
    if base.startswith("watcher_segment_"):  # "the same families with the prefix watcher_segment_"
        return documented("watcher_" + base[len("watcher_segment_") :], doc) and "watcher_segment_" in doc
    return False


def exposition_names(text: str) -> set[str]:
    """Every series name a Prometheus exposition can contain, from its # TYPE lines."""
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        if kind == "counter" and not name.endswith("_total"):
            names.add(f"{name}_total")
    return names


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("dashboards_generate", ROOT / "dashboards" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- dashboards ------------------------------------------------------------------------------------------


def test_committed_dashboards_are_what_the_generator_makes() -> None:
    rendered = load_generator().render()
    assert sorted(rendered) == [p.name for p in DASHBOARDS]
    for name, text in rendered.items():
        assert (ROOT / "dashboards" / name).read_text(encoding="utf-8") == text, (
            f"dashboards/{name} differs from dashboards/generate.py: run `python dashboards/generate.py`"
        )


def test_dashboards_are_grafana_json_with_a_prometheus_datasource_variable() -> None:
    boards = dashboards()
    assert set(boards) == {"watcher-rollouts.json", "watcher-canary.json", "watcher-health.json"}
    uids = [b["uid"] for b in boards.values()]
    assert len(set(uids)) == len(uids)
    for name, board in boards.items():
        assert board["schemaVersion"] >= 36, name
        names = [v["name"] for v in variables(board)]
        ds = variables(board)[0]
        assert (ds["name"], ds["type"], ds["query"]) == ("datasource", "datasource", "prometheus"), name
        assert {"agent", "environment"} <= set(names), name
        if name != "watcher-health.json":
            assert "rollout_id" in names, name
        ids = [p["id"] for p in panels(board)]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"
        for v in variables(board):
            if v["type"] == "query":
                assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (name, v["name"])
                label_values_query(v["query"])
        for p in panels(board):
            if p["type"] == "row":
                continue
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (name, p["title"])
            assert p["targets"], (name, p["title"])
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "${datasource}", (name, p["title"])
            assert p.get("description"), f"{name}: panel {p['title']!r} has no description"
            grid = p["gridPos"]
            assert grid["x"] + grid["w"] <= 24, (name, p["title"])
        for a in board["annotations"]["list"]:
            if "expr" in a:
                assert a["datasource"]["uid"] == "${datasource}", (name, a["name"])


def test_every_variable_a_query_uses_is_defined() -> None:
    for name, board in dashboards().items():
        defined = {v["name"] for v in variables(board)}
        texts = [e for _, e, _ in dashboard_queries(board)]
        texts += [v["query"] for v in variables(board) if v["type"] == "query"]
        texts += [p["title"] for p in panels(board)]
        for text in texts:
            for m in VAR_RE.finditer(text):
                var = m.group(1) or m.group(2)
                assert var in defined or var in BUILTINS, f"{name}: ${var} in {text!r} is not defined"
        for p in panels(board):
            if "repeat" in p:
                assert p["repeat"] in defined, (name, p["title"])


def test_rollout_dashboards_cover_the_required_views() -> None:
    boards = dashboards()
    rollouts = " ".join(e for _, e, _ in dashboard_queries(boards["watcher-rollouts.json"]))
    for metric in (
        "watcher_rollout_info",
        "watcher_rollout_verdict",
        "watcher_quality_mean",
        "watcher_latency_seconds",
        "watcher_escalation_ratio",
        "watcher_error_ratio",
        "watcher_compliance_violation_ratio",
        "watcher_traffic_share_ratio",
    ):
        assert metric in rollouts, metric
    for q in ("0.5", "0.95", "0.99"):
        assert f'quantile="{q}"' in rollouts
    window = next(v for v in variables(boards["watcher-rollouts.json"]) if v["name"] == "window")
    assert set(window["query"].split(",")) == {"recent", "cumulative"}
    annotations = {a["name"]: a for a in boards["watcher-rollouts.json"]["annotations"]["list"]}
    assert annotations["Rollout started"]["useValueForTime"]
    assert "watcher_rollout_started_timestamp_seconds" in annotations["Rollout started"]["expr"]
    assert "* 1000" in annotations["Deployment markers"]["expr"]  # Grafana wants milliseconds
    canary = " ".join(e for _, e, _ in dashboard_queries(boards["watcher-canary.json"]))
    for metric in (
        "watcher_metric_effect",
        "watcher_metric_effect_lower",
        "watcher_metric_effect_upper",
        "watcher_metric_evalue",
        "watcher_metric_evalue_threshold",
        "watcher_metric_verdict",
        "watcher_segment_quality_mean",
        "watcher_segment_latency_seconds",
    ):
        assert re.search(rf"\b{metric}\b", canary), metric
    health = " ".join(e for _, e, _ in dashboard_queries(boards["watcher-health.json"]))
    for metric in (
        "watcher_events_consumed_total",
        "watcher_consumer_lag_messages",
        "watcher_events_rejected_total",
        "watcher_batch_duration_seconds_bucket",
        "watcher_ready",
        "watcher_decisions_total",
        "watcher_drift_signals_total",
        "watcher_checkpoint_last_timestamp_seconds",
        "watcher_checkpoint_duration_seconds_bucket",
        "watcher_checkpoint_bytes",
        "watcher_checkpoint_failures_total",
        "watcher_outbox_backlog",
        "watcher_outbox_oldest_pending_age_seconds",
        "watcher_outbox_deliveries_total",
        "watcher_outbox_delivery_latency_seconds_bucket",
    ):
        assert re.search(rf"\b{metric}\b", health), metric
    # delivery outcomes and latency quantiles are per sink
    assert re.search(r"sum by \(sink, outcome\) \(rate\(watcher_outbox_deliveries_total", health)
    for q in ("0.5", "0.95", "0.99"):
        quantile = f"histogram_quantile({q}, sum by (sink, le) (rate(watcher_outbox_delivery_latency_seconds_"
        assert quantile + "bucket" in health, q


def test_every_metric_used_is_documented_in_metrics_md() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    used = all_watcher_metric_names()
    assert len(used) > 30
    missing = {m: sorted(w) for m, w in used.items() if not documented(m, doc)}
    assert not missing, f"used in dashboards/alerts but not in docs/metrics.md: {missing}"


def test_every_metric_of_the_catalogue_is_on_a_dashboard() -> None:
    """Each metric of the catalogue has one of its per-series families drawn (per version or per
    segment; a tail, its mean metric's); a metric added to the catalogue without a panel fails here."""
    used = set(all_watcher_metric_names())

    def drawn(f: Family) -> bool:
        names = {p + f.name for p in ("watcher_", "watcher_segment_")}
        return bool((names | {n + "_total" for n in names}) & used)

    for m in CATALOGUE:
        families = m.families or metric_def(m.tail_of or m.name).families
        assert any(map(drawn, families)), f"no dashboard draws the catalogue's {m.name}"
    assert all(drawn(f) for f, m in SERIES_FAMILIES if m is None)  # turns, conversations, share


def test_every_metric_used_is_exposed_by_watcher(tmp_path: Path) -> None:
    """Without Prometheus: the same scenario as the e2e test through the engine, exposed by watcher's own
    collectors — the daemon's, the checkpoint's and the outbox's (the e2e test checks the same against a
    real scrape, with series)."""
    from prometheus_client import CollectorRegistry

    from watcher.config import load_settings
    from watcher.engine import Engine
    from watcher.outbox import Outbox
    from watcher.service.handover import HandoverMetrics
    from watcher.service.series_text import render_metrics
    from watcher.service.telemetry import StateCollector, WatcherMetrics
    from watcher.sim.traffic import generate
    from watcher.sinks.base import NullSink
    from watcher.storage import SpoolCollector, SqliteSpool
    from watcher.storage.checkpointer import CheckpointMetrics

    engine = Engine(load_settings(environ={}, overrides={}))
    registry = CollectorRegistry()
    WatcherMetrics(registry)
    registry.register(StateCollector(engine))
    CheckpointMetrics(registry)
    HandoverMetrics(registry)  # the scale-out panels (checkpoint.scope: partition)
    outbox = Outbox(tmp_path / "outbox.sqlite", [NullSink("deployer")], registry=registry)
    registry.register(
        SpoolCollector(SqliteSpool(tmp_path / "spool.sqlite"), {"deadletter": 1 << 28}, time.time)
    )
    lines = [raw for s in e2e_scenarios() for raw in generate(s)]
    lines += ended_rollout_markers(e2e_scenarios()[0].start_ts)
    for i in range(0, len(lines), 2000):
        engine.process(lines[i : i + 2000])
    try:
        exposed = exposition_names(render_metrics(registry).decode())
    finally:
        outbox.close()
    missing = {m: sorted(w) for m, w in all_watcher_metric_names().items() if m not in exposed}
    assert not missing, f"used in dashboards/alerts but not exposed by watcher: {missing}"


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """promtool parses each query (variables substituted) as a recording rule's expression."""
    promtool = require_tool("promtool")
    group = []
    for board in dashboards().values():
        values = {v["name"]: "x" for v in variables(board)}
        for i, (where, expr, _) in enumerate(dashboard_queries(board)):
            group.append(
                {
                    "record": f"check:{board['uid'].replace('-', '_')}:{i}",
                    "expr": substitute(expr, values),
                    "labels": {"where": where},
                }
            )
        for v in variables(board):
            if v["type"] == "query":
                selector, _ = label_values_query(v["query"])
                group.append(
                    {
                        "record": f"check:var:{board['uid'].replace('-', '_')}:{v['name']}",
                        "expr": substitute(selector, values),
                    }
                )
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": group}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(group)} rules found" in result.stdout


# --- docker-compose.yml and what it mounts ------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services_builds_and_mounts_exist() -> None:
    services = compose()["services"]
    assert {"kafka", "topics", "watcher", "simulator", "prometheus", "alertmanager", "grafana"} <= set(
        services
    )
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            context = ROOT / build["context"]
            assert context.is_dir(), name
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
        for dep in svc.get("depends_on", []):
            assert dep in services, (name, dep)
    dockerfile = ROOT / services["watcher"]["build"]["context"] / services["watcher"]["build"]["dockerfile"]
    text = dockerfile.read_text()
    # built where a compiler is, installed into a slim image that must carry the C scanner
    assert "pip wheel" in text and "import watcher.contract._turnscan" in text and "python:3.11" in text


def test_compose_watcher_environment_is_a_valid_configuration() -> None:
    from watcher.config import load_settings

    services = compose()["services"]
    env = {k: str(v) for k, v in services["watcher"]["environment"].items()}
    assert all(k.startswith("WATCHER_") for k in env)
    settings = load_settings(environ=env)  # raises ConfigError naming an unknown or bad setting
    assert settings.http.host == "0.0.0.0"
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    topics_job = "\n".join(services["topics"]["command"])
    for topic in [
        *settings.kafka.telemetry_topics,
        *settings.kafka.deployments_topics,
        settings.kafka.dead_letter_topic,
    ]:
        assert f"{topic}:" in topics_job, f"the topic-init job does not create {topic}"
    # Prometheus scrapes the port watcher listens on
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "watcher")
    assert job["static_configs"][0]["targets"] == [f"watcher:{settings.http.port}"]


def test_compose_simulator_command_is_a_valid_watcher_simulate_invocation() -> None:
    from watcher.sim.scenario import expected_outcome
    from watcher.sim.simulate import add_arguments, scenario_from_args

    services = compose()["services"]
    command = services["simulator"]["command"]
    assert command[0] == "simulate"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(command[1:])
    scenario = scenario_from_args(args)
    assert expected_outcome(scenario) == "regression"
    env = services["watcher"]["environment"]
    assert args.bootstrap_servers == env["WATCHER_KAFKA__BOOTSTRAP_SERVERS"]
    assert args.topic == env["WATCHER_KAFKA__TELEMETRY_TOPICS"]
    assert args.deployments_topic == env["WATCHER_KAFKA__DEPLOYMENTS_TOPICS"]
    assert args.rate and args.start == "now"


def test_prometheus_and_grafana_provisioning_match_the_compose_mounts() -> None:
    services = compose()["services"]
    mounts = {
        v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"] if v.startswith(".")
    }
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    for pattern in prom["rule_files"]:
        directory, _, glob = pattern.rpartition("/")
        assert directory in mounts, pattern
        local = sorted((ROOT / mounts[directory]).glob(glob))
        assert [p.name for p in local] == [p.name for p in RULE_FILES]
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    gmounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"] if v.startswith(".")}
    provisioning = ROOT / gmounts["/etc/grafana/provisioning"]
    providers = yaml.safe_load((provisioning / "dashboards" / "watcher.yml").read_text())["providers"]
    assert gmounts[providers[0]["options"]["path"]] == "./dashboards"
    datasources = yaml.safe_load((provisioning / "datasources" / "watcher.yml").read_text())["datasources"]
    assert {d["type"] for d in datasources} == {"prometheus", "alertmanager"}
    assert next(d for d in datasources if d["type"] == "prometheus")["url"] == "http://prometheus:9090"
    am = {v.split(":")[1]: v.split(":")[0] for v in services["alertmanager"]["volumes"]}
    assert (ROOT / am["/etc/alertmanager/alertmanager.yml"]).is_file()


def test_prometheus_config_is_valid() -> None:
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(ROOT / "deploy" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_documented_dashboard_links_use_the_dashboards_variables() -> None:
    """A `dashboard_url` example that sets `var-env` on a dashboard whose variable is `environment`
    opens the dashboard unfiltered: every `var-X` in the docs must be a variable of that dashboard."""
    variables_of = {d["uid"]: {v["name"] for v in d["templating"]["list"]} for d in dashboards().values()}
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    links = [
        (path.name, m.group(1), m.group(2))
        for path in docs
        for m in re.finditer(r"/d/([\w-]+)\?([^\s\"'`)]+)", path.read_text())
    ]
    assert links, "no dashboard link in the docs"
    for name, uid, query in links:
        assert uid in variables_of, (name, uid)
        for var in re.findall(r"var-([\w]+)=", query):
            assert var in variables_of[uid], f"{name}: var-{var} is not a variable of {uid}"
