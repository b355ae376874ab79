# ruff: noqa: E501  (dashboard definitions read best one query per line)
"""Generates watcher's Grafana dashboards: ``python dashboards/generate.py`` rewrites the JSON files.

The JSON files next to this script are what Grafana loads (provisioning or import); this script is
their source, so that ~60 panels share one datasource reference, one set of template variables and
one style. tests/test_dashboards.py checks that the committed JSON equals what this script makes.
Standard library and watcher's own metric catalogue (no grafanalib): the output is plain dashboard
JSON, schemaVersion 39.

Every query uses the ``${datasource}`` variable; every metric name is documented in docs/metrics.md
(tests/test_dashboards.py checks both, tests/test_prometheus_e2e.py runs every query against a
real Prometheus scraping a real watcher). The per-arm panels of the rate metrics come from watcher's
metric catalogue (``watcher.contract.catalogue``): a rate metric added there gets its panel here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from watcher.contract import RATE_METRICS

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}

# Filters shared by the queries (Grafana expands multi-value variables into regex alternations).
AE = 'agent=~"$agent", environment=~"$environment"'
RO = f'{AE}, rollout_id=~"$rollout_id"'
WIN = 'window=~"$window"'

VERDICT_COLORS = {"fail": "red", "pass": "green", "inconclusive": "yellow", "nodata": "text"}
DECISION_COLORS = {
    "rollback": "red",
    "pause": "orange",
    "promote": "green",
    "resume": "blue",
    "continue": "text",
}
STATE_COLORS = {
    "running": "blue",
    "paused": "orange",
    "promoted": "green",
    "rolled_back": "red",
    "aborted": "purple",
}


# --- building blocks ------------------------------------------------------------------------------


def target(
    expr: str, legend: str = "", *, ref: str = "A", instant: bool = False, table: bool = False
) -> dict[str, Any]:
    t: dict[str, Any] = {
        "datasource": DS,
        "refId": ref,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "editorMode": "code",
    }
    if table:
        t["format"] = "table"
    return t


def targets(*pairs: tuple[str, str], instant: bool = False, table: bool = False) -> list[dict[str, Any]]:
    return [
        target(e, leg, ref=chr(ord("A") + i), instant=instant, table=table)
        for i, (e, leg) in enumerate(pairs)
    ]


def value_mappings(colors: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {
            "type": "value",
            "options": {
                k: {"color": c, "index": i, "text": k.upper() if c == "red" else k}
                for i, (k, c) in enumerate(colors.items())
            },
        }
    ]


def panel(
    kind: str,
    title: str,
    description: str,
    tgts: list[dict[str, Any]],
    *,
    w: int = 12,
    h: int = 8,
    unit: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    if unit:
        defaults["unit"] = unit
    p: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": tgts,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {},
        "gridPos": {"w": w, "h": h},
    }
    for key, value in extra.items():
        if key == "defaults":
            defaults.update(value)
        elif key == "overrides":
            p["fieldConfig"]["overrides"] = value
        else:
            p[key] = value
    return p


def timeseries(
    title: str, description: str, tgts: list[dict[str, Any]], *, log: bool = False, **extra: Any
) -> dict[str, Any]:
    custom: dict[str, Any] = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 0,
        "showPoints": "never",
        "spanNulls": False,
    }
    if log:
        custom["scaleDistribution"] = {"type": "log", "log": 10}
    p = panel("timeseries", title, description, tgts, **extra)
    p["fieldConfig"]["defaults"].setdefault("custom", {}).update(custom)
    p["options"] = {
        "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull"]},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return p


def stat(
    title: str, description: str, tgts: list[dict[str, Any]], *, text_mode: str = "auto", **extra: Any
) -> dict[str, Any]:
    p = panel("stat", title, description, tgts, w=extra.pop("w", 6), h=extra.pop("h", 4), **extra)
    p["options"] = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "textMode": text_mode,
        "colorMode": "background",
        "graphMode": "none",
        "justifyMode": "auto",
    }
    return p


def table(
    title: str,
    description: str,
    tgts: list[dict[str, Any]],
    transformations: list[dict[str, Any]],
    **extra: Any,
) -> dict[str, Any]:
    p = panel("table", title, description, tgts, **extra)
    p["transformations"] = transformations
    p["options"] = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
    return p


def bargauge(title: str, description: str, tgts: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    p = panel("bargauge", title, description, tgts, **extra)
    p["options"] = {
        "orientation": "horizontal",
        "displayMode": "basic",
        "showUnfilled": True,
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
    }
    return p


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24, "h": 1}}


def thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


def layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assigns ids and flows the panels left to right, top to bottom, on Grafana's 24-column grid."""
    x = y = line_h = 0
    for i, p in enumerate(panels, start=1):
        p["id"] = i
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if p["type"] == "row" or x + w > 24:
            x, y, line_h = 0, y + line_h, 0
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        x, line_h = x + w, max(line_h, h)
        if p["type"] == "row":
            x, y, line_h = 0, y + h, 0
    return panels


# --- template variables and annotations -------------------------------------------------------------


def datasource_var() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
    }


def query_var(name: str, query: str, *, label: str, multi: bool = True, hide: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": query,
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": multi,
        "allValue": ".*" if multi else None,
        "current": {},
        "options": [],
        "hide": hide,
        "regex": "",
        "skipUrlSync": False,
    }


def custom_var(name: str, values: list[str], *, label: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "custom",
        "query": ",".join(values),
        "multi": True,
        "includeAll": False,
        "hide": 0,
        "skipUrlSync": False,
        "current": {"selected": True, "text": values, "value": values},
        "options": [{"selected": True, "text": v, "value": v} for v in values],
    }


def builtin_annotation() -> dict[str, Any]:
    return {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }


def annotation(
    name: str,
    expr: str,
    title: str,
    text: str,
    color: str,
    *,
    value_is_time: bool,
    tags: str = "agent,environment,rollout_id",
) -> dict[str, Any]:
    # With "series value as timestamp" Grafana puts the marker at the series' value (ms), i.e. at
    # the event time watcher recorded, not at the scrape that first saw it; a constant value gives
    # one marker. Without it, consecutive non-zero points become one region (start = first scrape).
    return {
        "name": name,
        "datasource": DS,
        "enable": True,
        "hide": False,
        "iconColor": color,
        "expr": expr,
        "step": "1m",
        "titleFormat": title,
        "textFormat": text,
        "tagKeys": tags,
        "useValueForTime": value_is_time,
    }


def rollout_annotations(flt: str, *, ended: bool = True) -> list[dict[str, Any]]:
    found = [
        annotation(
            "Rollout started",
            f"watcher_rollout_started_timestamp_seconds{{{flt}}} * 1000",
            "rollout started: {{agent}}/{{environment}} {{baseline_version}} → {{canary_version}}",
            "{{strategy}} rollout {{rollout_id}}",
            "blue",
            value_is_time=True,
        ),
        annotation(
            "Deployment markers",
            'watcher_deployment_marker_timestamp_seconds{agent=~"$agent", environment=~"$environment"} * 1000',
            "marker {{action}} {{version}}",
            "{{agent}}/{{environment}}",
            "purple",
            value_is_time=True,
            tags="agent,environment,action",
        ),
        annotation(
            "Decisions",
            f'watcher_rollout_verdict{{{flt}, decision=~"pause|rollback|promote|resume"}} == 1',
            "decision: {{decision}} {{canary_version}}",
            "rollout {{rollout_id}} ({{agent}}/{{environment}})",
            "red",
            value_is_time=False,
        ),
    ]
    if ended:
        found.insert(
            1,
            annotation(
                "Rollout ended",
                f"watcher_rollout_ended_timestamp_seconds{{{flt}}} * 1000",
                "rollout ended ({{outcome}}): {{agent}}/{{environment}} {{canary_version}}",
                "rollout {{rollout_id}}",
                "green",
                value_is_time=True,
            ),
        )
    return found


def dashboard(
    uid: str,
    title: str,
    description: str,
    variables: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    panels: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["watcher"],
        "editable": True,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "graphTooltip": 1,
        "timezone": "",
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [
            {
                "title": "watcher dashboards",
                "type": "dashboards",
                "tags": ["watcher"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": {"list": [datasource_var(), *variables]},
        "annotations": {"list": [builtin_annotation(), *annotations]},
        "panels": layout(panels),
    }


# --- the three dashboards -----------------------------------------------------------------------------


def arm_panel(title: str, metric: str, description: str, unit: str, **extra: Any) -> dict[str, Any]:
    return timeseries(
        title,
        description,
        targets(
            (
                f"{metric}{{{AE}, {WIN}{extra.pop('match', '')}}}",
                "{{agent}} {{version}} ({{arm}}, {{window}})",
            )
        ),
        unit=unit,
        w=extra.pop("w", 8),
        **extra,
    )


def rollouts() -> dict[str, Any]:
    info_cols = {
        "Time": True,
        "__name__": True,
        "job": True,
        "instance": True,
        "Value #A": True,
        "Value #B": True,
    }
    panels = [
        row("Rollouts"),
        stat(
            "Active rollouts",
            "Rollouts running or paused (watcher_rollout_info).",
            targets(
                (f'count(watcher_rollout_info{{{RO}, state=~"running|paused"}} == 1) or vector(0)', "active")
            ),
            defaults={"thresholds": thresholds((None, "blue"))},
        ),
        stat(
            "Rollbacks standing",
            "Rollouts whose current decision is rollback (watcher_rollout_verdict).",
            targets(
                (f'count(watcher_rollout_verdict{{{RO}, decision="rollback"}} == 1) or vector(0)', "rollback")
            ),
            defaults={"thresholds": thresholds((None, "green"), (1, "red"))},
        ),
        stat(
            "Pauses standing",
            "Rollouts whose current decision is pause: a human must acknowledge or decide.",
            targets((f'count(watcher_rollout_verdict{{{RO}, decision="pause"}} == 1) or vector(0)', "pause")),
            defaults={"thresholds": thresholds((None, "green"), (1, "orange"))},
        ),
        stat(
            "Promotions",
            "Rollouts whose current decision is promote (every guardrail non-inferior).",
            targets(
                (f'count(watcher_rollout_verdict{{{RO}, decision="promote"}} == 1) or vector(0)', "promote")
            ),
            defaults={"thresholds": thresholds((None, "text"), (1, "green"))},
        ),
        stat(
            "Rollouts not judged",
            "Active rollouts whose judge cannot judge the traffic they get, by reason "
            "(watcher_rollouts_unjudged): no_treatment, no_control, no_reference (blue-green without the "
            "old version's history), unused_turns. GET /v1/rollouts/{id} says which and why.",
            targets(("sum by (reason) (watcher_rollouts_unjudged) > 0 or vector(0)", "{{reason}}")),
            defaults={"thresholds": thresholds((None, "green"), (1, "orange"))},
            w=24,
        ),
        table(
            "Rollouts: state and decision",
            "Every rollout watcher knows (active first): its state from the markers, the judge's current "
            "decision, the expected canary weight and the event time it started. Ended rollouts stay until "
            "watcher forgets them.",
            [
                target(f"watcher_rollout_info{{{RO}}} == 1", ref="A", instant=True, table=True),
                target(f"watcher_rollout_verdict{{{RO}}} == 1", ref="B", instant=True, table=True),
                target(f"watcher_rollout_canary_weight_ratio{{{RO}}}", ref="C", instant=True, table=True),
                target(
                    f"watcher_rollout_started_timestamp_seconds{{{RO}}} * 1000",
                    ref="D",
                    instant=True,
                    table=True,
                ),
            ],
            [
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": info_cols,
                        "renameByName": {
                            "Value #C": "canary weight",
                            "Value #D": "started",
                            "decision": "decision",
                            "state": "state",
                        },
                    },
                },
            ],
            w=24,
            h=8,
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "state"},
                    "properties": [
                        {"id": "mappings", "value": value_mappings(STATE_COLORS)},
                        {"id": "custom.cellOptions", "value": {"type": "color-text"}},
                    ],
                },
                {
                    "matcher": {"id": "byName", "options": "decision"},
                    "properties": [
                        {"id": "mappings", "value": value_mappings(DECISION_COLORS)},
                        {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                    ],
                },
                {
                    "matcher": {"id": "byName", "options": "canary weight"},
                    "properties": [{"id": "unit", "value": "percentunit"}],
                },
                {
                    "matcher": {"id": "byName", "options": "started"},
                    "properties": [{"id": "unit", "value": "dateTimeAsIso"}],
                },
            ],
        ),
        panel(
            "state-timeline",
            "Decisions over time",
            "The judge's current decision per rollout (continue, pause, rollback, promote, resume).",
            targets(
                (
                    f"max by (rollout_id, decision) (watcher_rollout_verdict{{{RO}}} == 1)",
                    "{{rollout_id}} {{decision}}",
                )
            ),
            w=24,
            h=6,
            defaults={"mappings": [], "color": {"mode": "fixed", "fixedColor": "blue"}},
            options={"showValue": "never", "mergeValues": True, "rowHeight": 0.8},
        ),
        row("Treatment (canary) vs control (baseline) — per version and arm"),
        arm_panel(
            "Quality (mean LLM-judge score)",
            "watcher_quality_mean",
            "Mean quality per version and arm; the recent window is the last state.window_seconds of "
            "event time, cumulative is since the rollout started.",
            "none",
        ),
        arm_panel(
            "Latency p50",
            "watcher_latency_seconds",
            "Median turn latency (sketch, ~1 % accuracy).",
            "s",
            match=', quantile="0.5"',
        ),
        arm_panel(
            "Latency p95",
            "watcher_latency_seconds",
            "95th percentile turn latency.",
            "s",
            match=', quantile="0.95"',
        ),
        arm_panel(
            "Latency p99",
            "watcher_latency_seconds",
            "99th percentile turn latency.",
            "s",
            match=', quantile="0.99"',
        ),
        *(
            arm_panel(
                f.name.removesuffix("_ratio").replace("_", " ").capitalize() + " rate",
                f"watcher_{f.name}",
                f.doc[:1].upper() + f.doc[1:] + ".",
                "percentunit",
            )
            for m in RATE_METRICS
            for f in m.families
            if f.stat == "rate"
        ),
        timeseries(
            "Traffic share vs expected canary weight",
            "Each version/arm's share of the agent's turns; the dashed line is the canary weight the "
            "deployer announced. A persistent gap is a sample-ratio mismatch (the judge pauses on it).",
            targets(
                (
                    f"watcher_traffic_share_ratio{{{AE}, {WIN}}}",
                    "{{agent}} {{version}} ({{arm}}, {{window}})",
                ),
                (f"watcher_rollout_canary_weight_ratio{{{RO}}}", "expected canary weight {{rollout_id}}"),
            ),
            unit="percentunit",
            w=8,
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": "expected canary weight.*"},
                    "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}],
                }
            ],
        ),
        timeseries(
            "Turns per second",
            "Turn throughput per version and arm (rate of watcher_turns_total).",
            targets(
                (
                    f"sum by (agent, environment, version, arm) (rate(watcher_turns_total{{{AE}}}[$__rate_interval]))",
                    "{{agent}} {{version}} ({{arm}})",
                )
            ),
            unit="reqps",
            w=12,
        ),
        timeseries(
            "Conversations per second",
            "New conversations per version and arm.",
            targets(
                (
                    f"sum by (agent, environment, version, arm) (rate(watcher_conversations_total{{{AE}}}[$__rate_interval]))",
                    "{{agent}} {{version}} ({{arm}})",
                )
            ),
            unit="reqps",
            w=12,
        ),
    ]
    variables = [
        query_var("agent", "label_values(watcher_rollout_info, agent)", label="Agent"),
        query_var(
            "environment",
            'label_values(watcher_rollout_info{agent=~"$agent"}, environment)',
            label="Environment",
        ),
        query_var(
            "rollout_id",
            'label_values(watcher_rollout_info{agent=~"$agent", environment=~"$environment"}, rollout_id)',
            label="Rollout",
        ),
        custom_var("window", ["recent", "cumulative"], label="Window"),
    ]
    return dashboard(
        "watcher-rollouts",
        "watcher / Rollouts",
        "Every rollout with its state and decision; treatment vs control per metric.",
        variables,
        rollout_annotations(RO),
        panels,
    )


def canary() -> dict[str, Any]:
    R = 'rollout_id="$rollout_id"'
    M = f'{R}, metric=~"$metric", slice="$slice"'
    seg = (
        'agent="$agent", environment="$environment", version=~"$baseline_version|$canary_version", '
        'window="recent", segment_key=~"$segment_key"'
    )
    canary_seg = seg.replace(
        'version=~"$baseline_version|$canary_version"', 'version="$canary_version", arm="canary"'
    )
    base_seg = seg.replace(
        'version=~"$baseline_version|$canary_version"', 'version="$baseline_version", arm="baseline"'
    )

    def seg_compare(
        title: str,
        description: str,
        metric: str,
        op: str,
        unit: str,
        steps: tuple[tuple[float | None, str], ...],
        match: str = "",
    ) -> dict[str, Any]:
        expr = f"{metric}{{{canary_seg}{match}}} {op} ignoring (version, arm) {metric}{{{base_seg}{match}}}"
        return bargauge(
            title,
            description,
            targets((expr, "{{segment_key}}={{segment_value}}")),
            unit=unit,
            w=6,
            h=12,
            defaults={"thresholds": thresholds(*steps), "color": {"mode": "thresholds"}},
        )

    verdict_matrix_tx = [
        {
            "id": "groupingToMatrix",
            "options": {
                "columnField": "metric",
                "rowField": "slice",
                "valueField": "verdict",
                "emptyValue": "empty",
            },
        },
        {"id": "organize", "options": {"renameByName": {"slice\\metric": "slice \\ metric"}}},
    ]
    panels = [
        row("Verdict"),
        stat(
            "Decision",
            "The judge's current decision for this rollout.",
            targets((f"watcher_rollout_verdict{{{R}}} == 1", "{{decision}}")),
            text_mode="name",
            defaults={"thresholds": thresholds((None, "blue"))},
        ),
        stat(
            "State",
            "The rollout's state from the deployment markers.",
            targets((f"watcher_rollout_info{{{R}}} == 1", "{{state}}")),
            text_mode="name",
            defaults={"thresholds": thresholds((None, "text"))},
        ),
        stat(
            "Canary weight",
            "The expected treatment share (while the rollout is active).",
            targets((f"watcher_rollout_canary_weight_ratio{{{R}}}", "weight")),
            unit="percentunit",
            defaults={"thresholds": thresholds((None, "blue"))},
        ),
        stat(
            "Failing metric × slice",
            "How many metric × slice pairs fail now (the interval excludes the "
            "tolerance and the e-value crossed its threshold).",
            targets((f'count(watcher_metric_verdict{{{R}, verdict="fail"}} == 1) or vector(0)', "failing")),
            defaults={"thresholds": thresholds((None, "green"), (1, "red"))},
        ),
        table(
            "Verdict per metric × slice",
            "One row per slice (all traffic, then each segment value the judge tracks), one column per metric. "
            "A red FAIL in one segment row while the 'all' row passes is an edge-case regression: the average "
            "hides it, the slice does not.",
            [target(f"watcher_metric_verdict{{{R}}} == 1", instant=True, table=True)],
            verdict_matrix_tx,
            w=24,
            h=10,
            defaults={
                "mappings": value_mappings(VERDICT_COLORS),
                "custom": {"cellOptions": {"type": "color-background"}, "align": "center"},
            },
        ),
        row("Effect with its anytime-valid interval ($slice)"),
        timeseries(
            "Effect: $metric",
            "Treatment vs control (watcher_metric_effect) with its anytime-valid confidence sequence "
            "(_lower, _upper): valid at every look, so it may be watched continuously. Quality is a "
            "difference of means; latency and rates are ratios (1 = no change). The verdict fails when the "
            "whole interval lies beyond the metric's tolerance (docs/statistics.md).",
            targets(
                (f'watcher_metric_effect{{{R}, metric="$metric", slice="$slice"}}', "effect"),
                (f'watcher_metric_effect_lower{{{R}, metric="$metric", slice="$slice"}}', "lower"),
                (f'watcher_metric_effect_upper{{{R}, metric="$metric", slice="$slice"}}', "upper"),
            ),
            w=8,
            repeat="metric",
            repeatDirection="h",
            maxPerRow=3,
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "upper"},
                    "properties": [
                        {"id": "custom.fillBelowTo", "value": "lower"},
                        {"id": "custom.fillOpacity", "value": 20},
                        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [4, 4]}},
                    ],
                },
                {
                    "matcher": {"id": "byName", "options": "lower"},
                    "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [4, 4]}}],
                },
            ],
        ),
        row("E-values ($slice)"),
        timeseries(
            "E-value / threshold",
            "Each metric's e-value against 'no harm beyond tolerance' divided by the value that rejects "
            "(watcher_metric_evalue / watcher_metric_evalue_threshold). At ≥ 1 (the red line) the test "
            "rejects and the metric fails; log scale.",
            targets((f"watcher_metric_evalue{{{M}}} / watcher_metric_evalue_threshold{{{M}}}", "{{metric}}")),
            log=True,
            w=12,
            defaults={
                "thresholds": thresholds((None, "transparent"), (1, "red")),
                "custom": {"thresholdsStyle": {"mode": "line"}},
            },
        ),
        timeseries(
            "E-value and threshold",
            "The raw e-values (solid) and their rejection thresholds (dashed): the threshold is 1/α of the "
            "metric's share of the error budget.",
            targets(
                (f"watcher_metric_evalue{{{M}}}", "{{metric}} e-value"),
                (f"watcher_metric_evalue_threshold{{{M}}}", "{{metric}} threshold"),
            ),
            log=True,
            w=12,
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": ".* threshold"},
                    "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}],
                }
            ],
        ),
        row("Segments: treatment vs control ($segment_key, recent window)"),
        seg_compare(
            "Quality: canary − baseline",
            "Difference of mean quality per segment value; red below the default tolerance (−0.03).",
            "watcher_segment_quality_mean",
            "-",
            "none",
            ((None, "red"), (-0.03, "yellow"), (0, "green")),
        ),
        seg_compare(
            "Latency p95: canary / baseline",
            "Ratio of p95 latency per segment value; red above ×1.5.",
            "watcher_segment_latency_seconds",
            "/",
            "none",
            ((None, "green"), (1.1, "yellow"), (1.5, "red")),
            match=', quantile="0.95"',
        ),
        seg_compare(
            "Escalation rate: canary − baseline",
            "Difference of the per-turn escalation rate.",
            "watcher_segment_escalation_ratio",
            "-",
            "percentunit",
            ((None, "green"), (0.005, "yellow"), (0.02, "red")),
        ),
        seg_compare(
            "Error rate: canary − baseline",
            "Difference of the per-turn error rate.",
            "watcher_segment_error_ratio",
            "-",
            "percentunit",
            ((None, "green"), (0.002, "yellow"), (0.01, "red")),
        ),
        table(
            "Segment metrics per arm",
            "Per segment value and arm (recent window): quality, p95 latency, escalation and error rates, "
            "and turns (cumulative).",
            targets(
                (
                    f"max by (segment_key, segment_value, version, arm) (watcher_segment_quality_mean{{{seg}}})",
                    "",
                ),
                (
                    f'max by (segment_key, segment_value, version, arm) (watcher_segment_latency_seconds{{{seg}, quantile="0.95"}})',
                    "",
                ),
                (
                    f"max by (segment_key, segment_value, version, arm) (watcher_segment_escalation_ratio{{{seg}}})",
                    "",
                ),
                (
                    f"max by (segment_key, segment_value, version, arm) (watcher_segment_error_ratio{{{seg}}})",
                    "",
                ),
                (
                    f"max by (segment_key, segment_value, version, arm) (watcher_segment_compliance_violation_ratio{{{seg}}})",
                    "",
                ),
                (
                    "max by (segment_key, segment_value, version, arm) (watcher_segment_turns_total{"
                    + seg.replace('window="recent", ', "")
                    + "})",
                    "",
                ),
                instant=True,
                table=True,
            ),
            [
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True},
                        "renameByName": {
                            "Value #A": "quality",
                            "Value #B": "p95 latency",
                            "Value #C": "escalation",
                            "Value #D": "errors",
                            "Value #E": "compliance",
                            "Value #F": "turns",
                        },
                    },
                },
                {"id": "sortBy", "options": {"sort": [{"field": "segment_value"}]}},
            ],
            w=24,
            h=12,
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "p95 latency"},
                    "properties": [{"id": "unit", "value": "s"}],
                },
                *(
                    {
                        "matcher": {"id": "byName", "options": n},
                        "properties": [{"id": "unit", "value": "percentunit"}],
                    }
                    for n in ("escalation", "errors", "compliance")
                ),
            ],
        ),
        timeseries(
            "Quality per segment value and arm",
            "Recent-window mean quality of each segment value, canary and baseline.",
            targets(
                (f"watcher_segment_quality_mean{{{seg}}}", "{{segment_key}}={{segment_value}} ({{arm}})")
            ),
            w=24,
            h=10,
        ),
    ]
    variables = [
        query_var("agent", "label_values(watcher_rollout_info, agent)", label="Agent", multi=False),
        query_var(
            "environment",
            'label_values(watcher_rollout_info{agent="$agent"}, environment)',
            label="Environment",
            multi=False,
        ),
        query_var(
            "rollout_id",
            'label_values(watcher_rollout_info{agent="$agent", environment="$environment"}, rollout_id)',
            label="Rollout",
            multi=False,
        ),
        query_var(
            "canary_version",
            'label_values(watcher_rollout_info{rollout_id="$rollout_id"}, canary_version)',
            label="Canary",
            multi=False,
            hide=2,
        ),
        query_var(
            "baseline_version",
            'label_values(watcher_rollout_info{rollout_id="$rollout_id"}, baseline_version)',
            label="Baseline",
            multi=False,
            hide=2,
        ),
        query_var(
            "metric", 'label_values(watcher_metric_effect{rollout_id="$rollout_id"}, metric)', label="Metric"
        ),
        query_var(
            "slice",
            'label_values(watcher_metric_verdict{rollout_id="$rollout_id"}, slice)',
            label="Slice",
            multi=False,
        ),
        query_var(
            "segment_key",
            'label_values(watcher_segment_turns_total{agent="$agent", environment="$environment"}, segment_key)',
            label="Segment key",
        ),
    ]
    return dashboard(
        "watcher-canary",
        "watcher / Canary analysis",
        "One rollout: each metric's effect with its anytime-valid interval, e-values, and the "
        "per-segment view that shows an edge-case regression.",
        variables,
        rollout_annotations(f'{R}, agent="$agent", environment="$environment"', ended=False),
        panels,
    )


def health() -> dict[str, Any]:
    INST = 'instance=~"$instance"'
    panels = [
        row("Status"),
        stat(
            "Ready",
            "watcher_ready: 1 while watcher consumes (what /readyz says).",
            targets((f"watcher_ready{{{INST}}}", "{{instance}}")),
            defaults={
                "mappings": [
                    {
                        "type": "value",
                        "options": {
                            "1": {"text": "READY", "color": "green"},
                            "0": {"text": "NOT READY", "color": "red"},
                        },
                    }
                ],
                "thresholds": thresholds((None, "red"), (1, "green")),
            },
        ),
        stat(
            "Scrape up",
            "Prometheus' up metric for the watcher targets.",
            targets((f"up{{{INST}}}", "{{instance}}")),
            defaults={
                "mappings": [
                    {
                        "type": "value",
                        "options": {
                            "1": {"text": "UP", "color": "green"},
                            "0": {"text": "DOWN", "color": "red"},
                        },
                    }
                ],
                "thresholds": thresholds((None, "red"), (1, "green")),
            },
        ),
        stat(
            "Since last batch",
            "Wall time since the last processed batch; large while lag > 0 means stuck.",
            targets((f"time() - watcher_last_batch_timestamp_seconds{{{INST}}}", "{{instance}}")),
            unit="s",
            defaults={"thresholds": thresholds((None, "green"), (60, "yellow"), (300, "red"))},
        ),
        stat(
            "Version",
            "watcher_build_info.",
            targets((f"watcher_build_info{{{INST}}}", "{{version}}")),
            text_mode="name",
            defaults={"thresholds": thresholds((None, "text"))},
        ),
        row("Throughput and lag"),
        timeseries(
            "Events consumed per second",
            "Messages consumed, per topic (rate of watcher_events_consumed_total).",
            targets(
                (
                    f"sum by (instance, topic) (rate(watcher_events_consumed_total{{{INST}}}[$__rate_interval]))",
                    "{{topic}} ({{instance}})",
                )
            ),
            unit="reqps",
        ),
        timeseries(
            "Consumer lag",
            "High watermark minus position, per topic and partition.",
            targets(
                (
                    f"sum by (topic, partition) (watcher_consumer_lag_messages{{{INST}}})",
                    "{{topic}}/{{partition}}",
                )
            ),
            unit="short",
        ),
        timeseries(
            "Batch time",
            "Time to process one batch (decode, state, judge, dead letters, commit).",
            targets(
                *(
                    (
                        f"histogram_quantile({q}, sum by (le) (rate(watcher_batch_duration_seconds_bucket{{{INST}}}[$__rate_interval])))",
                        f"p{int(float(q) * 100)}",
                    )
                    for q in ("0.5", "0.95", "0.99")
                )
            ),
            unit="s",
            w=8,
        ),
        timeseries(
            "Messages per batch",
            "Batch size quantiles (getmany); small batches under load cost throughput.",
            targets(
                *(
                    (
                        f"histogram_quantile({q}, sum by (le) (rate(watcher_batch_events_bucket{{{INST}}}[$__rate_interval])))",
                        f"p{int(float(q) * 100)}",
                    )
                    for q in ("0.5", "0.95")
                )
            ),
            unit="short",
            w=8,
        ),
        timeseries(
            "Batches per second",
            "Processed batches per second.",
            targets(
                (
                    f"sum by (instance) (rate(watcher_batch_duration_seconds_count{{{INST}}}[$__rate_interval]))",
                    "{{instance}}",
                )
            ),
            unit="ops",
            w=8,
        ),
        row("Rejected events"),
        timeseries(
            "Rejected per second by reason",
            "Messages rejected by validation (they go to the dead-letter "
            "topic); every reason is pre-initialised at 0.",
            targets(
                (
                    f"sum by (reason) (rate(watcher_events_rejected_total{{{INST}}}[$__rate_interval]))",
                    "{{reason}}",
                )
            ),
            unit="reqps",
        ),
        timeseries(
            "Duplicates and dead letters per second",
            "Duplicate event ids ignored, and rejected messages written to the dead-letter topic.",
            targets(
                (f"sum(rate(watcher_events_duplicate_total{{{INST}}}[$__rate_interval]))", "duplicates"),
                (
                    f"sum(rate(watcher_dead_letters_published_total{{{INST}}}[$__rate_interval]))",
                    "dead letters",
                ),
            ),
            unit="reqps",
        ),
        row("Checkpoints"),
        timeseries(
            "Since last checkpoint",
            "Wall time since the last checkpoint was written (or restored). Checkpoints "
            "come at most every checkpoint.interval_s while events flow and at shutdown; an idle watcher writes "
            "none, so this grows while nothing is consumed — stale only while events are consumed "
            "(WatcherCheckpointStale). No line before the first checkpoint of a fresh start.",
            targets((f"time() - (watcher_checkpoint_last_timestamp_seconds{{{INST}}} > 0)", "{{instance}}")),
            unit="s",
            w=6,
        ),
        timeseries(
            "Checkpoint time",
            "Time to serialise the engine state and write it (p50/p99 of "
            "watcher_checkpoint_duration_seconds); batches wait meanwhile.",
            targets(
                *(
                    (
                        f"histogram_quantile({q}, sum by (le) (rate(watcher_checkpoint_duration_seconds_bucket{{{INST}}}[$__rate_interval])))",
                        f"p{int(float(q) * 100)}",
                    )
                    for q in ("0.5", "0.99")
                )
            ),
            unit="s",
            w=6,
        ),
        timeseries(
            "Checkpoint size",
            "Bytes the last checkpoint wrote (watcher_checkpoint_bytes): the parts that changed since the "
            "one before (the agents with traffic, the judges that got turns, the dedup window).",
            targets((f"watcher_checkpoint_bytes{{{INST}}}", "{{instance}}")),
            unit="bytes",
            w=6,
        ),
        timeseries(
            "Checkpoint failures",
            "Checkpoints that could not be written in each interval (offsets are then "
            "not committed; the next batch retries). Anything above 0 is WatcherCheckpointFailing.",
            targets(
                (
                    f"sum by (instance) (increase(watcher_checkpoint_failures_total{{{INST}}}[$__rate_interval]))",
                    "{{instance}}",
                )
            ),
            unit="short",
            w=6,
            defaults={"thresholds": thresholds((None, "green"), (1, "red")), "min": 0},
        ),
        row("Scale-out: partitions per instance (checkpoint.scope: partition)"),
        timeseries(
            "Partitions owned",
            "Partitions whose state each instance holds (watcher_partitions_owned). "
            "Summed over instances it should equal the topics' partition count; a dip is a rebalance in "
            "progress, a lasting gap is WatcherPartitionsUnowned.",
            targets(
                (f"watcher_partitions_owned{{{INST}}}", "{{instance}}"),
                (f"sum(watcher_partitions_owned{{{INST}}})", "all instances"),
                (f"max(watcher_partitions{{{INST}}})", "partitions of the topics"),
            ),
            unit="short",
            w=12,
        ),
        timeseries(
            "Partition hand-overs",
            "Partitions taken over from their checkpoint, taken over fresh (no "
            "checkpoint: a new partition or a lost store) and released, per interval "
            "(watcher_partition_handovers_total). Steady hand-overs without deploys mean instances "
            "are flapping.",
            targets(
                (
                    f"sum by (kind) (increase(watcher_partition_handovers_total{{{INST}}}[$__rate_interval]))",
                    "{{kind}}",
                )
            ),
            unit="short",
            w=12,
        ),
        row("Outbox: deliveries to the push sinks"),
        timeseries(
            "Backlog per sink",
            "Deliveries waiting per sink (watcher_outbox_backlog, read from the outbox "
            "store at scrape time). Grows while a receiver is down; sinks are independent.",
            targets(
                (f"sum by (instance, sink) (watcher_outbox_backlog{{{INST}}})", "{{sink}} ({{instance}})")
            ),
            unit="short",
            w=8,
        ),
        timeseries(
            "Oldest pending delivery",
            "Age of the oldest waiting delivery per sink (0 when none). A sink "
            "gets its deliveries in order, so everything after it waits too; over 15 min is WatcherOutboxStuck.",
            targets(
                (
                    f"max by (instance, sink) (watcher_outbox_oldest_pending_age_seconds{{{INST}}})",
                    "{{sink}} ({{instance}})",
                )
            ),
            unit="s",
            w=8,
            defaults={
                "thresholds": thresholds((None, "green"), (900, "red")),
                "custom": {"thresholdsStyle": {"mode": "line"}},
            },
        ),
        timeseries(
            "Deliveries per second by outcome",
            "Per sink: delivered, retried (transient error: timeout, "
            "408/425/429, 5xx) and failed_permanent (refused, or out of attempts; WatcherDeliveriesFailing).",
            targets(
                (
                    f"sum by (sink, outcome) (rate(watcher_outbox_deliveries_total{{{INST}}}[$__rate_interval]))",
                    "{{sink}} {{outcome}}",
                )
            ),
            unit="ops",
            w=8,
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": ".*failed_permanent"},
                    "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}}],
                }
            ],
        ),
        timeseries(
            "Delivery latency",
            "Queued → delivered per sink, retries included "
            "(watcher_outbox_delivery_latency_seconds, p50/p95/p99).",
            targets(
                *(
                    (
                        f"histogram_quantile({q}, sum by (sink, le) (rate(watcher_outbox_delivery_latency_seconds_bucket{{{INST}}}[$__rate_interval])))",
                        f"{{{{sink}}}} p{int(float(q) * 100)}",
                    )
                    for q in ("0.5", "0.95", "0.99")
                )
            ),
            unit="s",
            w=24,
        ),
        row("Decisions and drift"),
        timeseries(
            "Decisions taken",
            "Cumulative decisions per agent and action since watcher started "
            "(watcher_decisions_total; a step is a decision).",
            targets(
                (
                    f"sum by (agent, environment, action) (watcher_decisions_total{{{AE}, {INST}}})",
                    "{{agent}}/{{environment}} {{action}}",
                )
            ),
            unit="short",
            defaults={"custom": {"drawStyle": "line", "lineInterpolation": "stepAfter"}},
        ),
        timeseries(
            "Drift signals",
            "Cumulative drift signals per version and metric (versions running without "
            "a concurrent control; a signal to look, never a rollback).",
            targets(
                (
                    f"sum by (agent, environment, version, metric) (watcher_drift_signals_total{{{AE}, {INST}}})",
                    "{{agent}}/{{environment}} {{version}} {{metric}}",
                )
            ),
            unit="short",
            defaults={"custom": {"drawStyle": "line", "lineInterpolation": "stepAfter"}},
        ),
        timeseries(
            "Turns per second by agent",
            "Telemetry volume per agent and environment.",
            targets(
                (
                    f"sum by (agent, environment) (rate(watcher_turns_total{{{AE}, {INST}}}[$__rate_interval]))",
                    "{{agent}}/{{environment}}",
                )
            ),
            unit="reqps",
            w=24,
        ),
    ]
    variables = [
        query_var("instance", "label_values(watcher_build_info, instance)", label="Instance"),
        query_var("agent", "label_values(watcher_turns_total, agent)", label="Agent"),
        query_var(
            "environment",
            'label_values(watcher_turns_total{agent=~"$agent"}, environment)',
            label="Environment",
        ),
    ]
    return dashboard(
        "watcher-health",
        "watcher / Health",
        "watcher's own health: throughput, lag, rejected events, batch time, readiness, checkpoints, "
        "deliveries to the push sinks, decisions and drift.",
        variables,
        [
            annotation(
                "Decisions",
                'watcher_rollout_verdict{agent=~"$agent", environment=~"$environment", '
                'decision=~"pause|rollback|promote|resume"} == 1',
                "decision: {{decision}} {{canary_version}}",
                "rollout {{rollout_id}}",
                "red",
                value_is_time=False,
            )
        ],
        panels,
    )


DASHBOARDS = {"watcher-rollouts.json": rollouts, "watcher-canary.json": canary, "watcher-health.json": health}


def render() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    return {
        name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n" for name, build in DASHBOARDS.items()
    }


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else HERE
    for name, text in render().items():
        (out / name).write_text(text, encoding="utf-8")
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
