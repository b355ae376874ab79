"""Helpers shared by tests (moved from test_dashboards.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))


RULE_FILES = sorted((ROOT / "alerts").glob("*.yml"))


METRIC_RE = re.compile(r"\b(?:watcher_[a-z0-9_]+|up)\b(?!\s*\()")


VAR_RE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}


def require_tool(
    name: str, install: str = "Debian: apt-get install prometheus prometheus-alertmanager"
) -> str:
    """The binary's path; skip when missing, but fail under CI (CI must install it: see .ci/run)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed ({install})"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must install it")
        pytest.skip(message)
    return path


def e2e_scenarios() -> list[Any]:
    """The traffic of the end-to-end test: a rollback, a pause and a drift, 300 s of event time each.

    support-bot: canary v42 loses 0.3 quality for intent=billing from the start → rollback;
    sales-bot: canary v8 is 60 % slower → pause (latency's policy action);
    faq-bot: one version, no rollout (live arm), quality −0.25 from 120 s → a drift signal.
    """
    from watcher.sim.presets import PRESETS
    from watcher.sim.scenario import Regression, Scenario

    duration = 300.0
    support = dataclasses.replace(
        PRESETS["demo"],
        duration_s=duration,
        conversations_per_s=20.0,
        canary_weight=0.3,
        regressions=(Regression("quality", -0.3, segment={"intent": "billing"}),),
    )
    sales = Scenario(
        seed=2,
        agent_id="sales-bot",
        baseline_version="v7",
        canary_version="v8",
        canary_weight=0.3,
        duration_s=duration,
        conversations_per_s=10.0,
        regressions=(Regression("latency", 0.6),),
    )
    faq = Scenario(
        seed=3,
        agent_id="faq-bot",
        baseline_version="v3",
        canary_version="v3-unused",
        canary_weight=0.0,
        duration_s=duration,
        conversations_per_s=15.0,
        emit_markers=False,
        explicit_arms=False,
        regressions=(Regression("quality", -0.25, start_s=120.0, arms=("baseline",)),),
    )
    return [support, sales, faq]


def ended_rollout_markers(start_ts: float) -> list[bytes]:
    """promo-bot: a rollout that starts and is promoted (it exposes
    watcher_rollout_ended_timestamp_seconds)."""

    def marker(i: int, action: str, dt: float) -> bytes:
        return json.dumps(
            {
                "schema": "watcher.deployment/v1",
                "event_id": f"promo-{i}",
                "ts": start_ts + dt,
                "agent_id": "promo-bot",
                "environment": "prod",
                "action": action,
                "strategy": "canary",
                "baseline_version": "v1",
                "canary_version": "v2",
                "canary_weight": 0.1,
            }
        ).encode()

    return [marker(0, "started", 0.0), marker(1, "promoted", 60.0)]


def unjudged_rollout_events(start_ts: float, turns: int = 220) -> list[bytes]:
    """solo-bot: a blue-green switch to v2 with no turn of v1 before it, so there is no reference to
    compare with (it exposes watcher_rollout_unjudged_info{reason="no_reference"}; a canary without
    control turns would be paused for its sample ratio instead)."""
    started = {
        "schema": "watcher.deployment/v1",
        "event_id": "solo-start",
        "ts": start_ts,
        "agent_id": "solo-bot",
        "environment": "prod",
        "action": "started",
        "strategy": "blue_green",
        "baseline_version": "v1",
        "canary_version": "v2",
    }
    events = [started] + [
        {
            "schema": "watcher.turn/v1",
            "event_id": f"solo-{i}",
            "ts": start_ts + 1 + i,
            "agent_id": "solo-bot",
            "environment": "prod",
            "conversation_id": f"solo-c{i // 2}",
            "turn": i % 2,
            "version": "v2",
            "arm": "live",
            "latency_ms": 300.0,
            "quality": 0.8,
            "escalated": False,
            "error": False,
            "compliance_violation": False,
        }
        for i in range(turns)
    ]
    return [json.dumps(e).encode() for e in events]


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in DASHBOARDS}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in board["panels"]:
        yield p
        yield from p.get("panels", [])


def dashboard_queries(board: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any] | None]]:
    """(where, expr, panel or None) for every panel target and annotation query."""
    for p in panels(board):
        for t in p.get("targets", []):
            yield f"{board['uid']} / {p['title']} / {t['refId']}", t["expr"], p
    for a in board["annotations"]["list"]:
        if "expr" in a:
            yield f"{board['uid']} / annotation {a['name']}", a["expr"], None


def variables(board: dict[str, Any]) -> list[dict[str, Any]]:
    return board["templating"]["list"]


def rules() -> list[dict[str, Any]]:
    return [r for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]


def substitute(expr: str, values: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name in values:
            return values[name]
        if name in BUILTINS:
            return BUILTINS[name]
        raise KeyError(f"undefined variable ${name} in {expr!r}")

    return VAR_RE.sub(one, expr)


def label_values_query(query: str) -> tuple[str, str]:
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip(), re.S)
    assert m, f"not a label_values(selector, label) query: {query}"
    return m.group(1), m.group(2)


def deploy_docs(*parts: str) -> list[dict[str, Any]]:
    """The objects of a YAML file under deploy/."""
    return [d for d in yaml.safe_load_all((ROOT / "deploy" / Path(*parts)).read_text()) if d]


def argo_prometheus_query(**args: str) -> str:
    """The query of deploy/argo/analysistemplate-prometheus.yaml with Argo's ``{{args.x}}`` filled in."""
    template = deploy_docs("argo", "analysistemplate-prometheus.yaml")[0]
    defaults = {a["name"]: a.get("value") for a in template["spec"]["args"]}
    values = {**defaults, **{k.replace("_", "-"): v for k, v in args.items()}}
    query = template["spec"]["metrics"][0]["provider"]["prometheus"]["query"]
    return re.sub(r"\{\{args\.([\w-]+)\}\}", lambda m: str(values[m.group(1)]), query)


def flagger_metric_query(**variables: str) -> str:
    """The query of deploy/flagger/metrictemplate.yaml with Flagger's ``{{ variables.x }}`` filled in."""
    query = deploy_docs("flagger", "metrictemplate.yaml")[0]["spec"]["query"]
    return re.sub(r"\{\{\s*variables\.(\w+)\s*\}\}", lambda m: variables[m.group(1)], query)
