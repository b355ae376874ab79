"""Alert rules, their promtool unit tests, the runbook, and the Alertmanager routing.

promtool / amtool missing: skipped locally, a failure when ``CI`` is set (.ci/run installs them).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.ops import ROOT, RULE_FILES, require_tool, rules

RULE_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.yml"))
ALERTMANAGER = ROOT / "deploy" / "alertmanager.yml"
RUNBOOK = ROOT / "alerts" / "README.md"
ROLLOUT_ALERTS = {"WatcherRolloutRollback", "WatcherRolloutPaused"}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60)


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    return {
        re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", markdown, re.M)
    }


def test_every_rule_has_severity_annotations_and_a_runbook_section() -> None:
    found = rules()
    names = [r["alert"] for r in found]
    assert len(names) == len(set(names))
    assert {
        "WatcherRolloutRollback",
        "WatcherRolloutPaused",
        "WatcherDriftSignal",
        "WatcherDown",
        "WatcherMissing",
        "WatcherNotReady",
        "WatcherConsumerLagGrowing",
        "WatcherEventsRejected",
        "WatcherDeadLetters",
        "WatcherStuck",
        "WatcherCheckpointStale",
        "WatcherCheckpointFailing",
        "WatcherOutboxStuck",
        "WatcherDeliveriesFailing",
        "WatcherRollbackUndelivered",
        "WatcherPartitionsUnowned",
    } <= set(names)
    anchors = _anchors(RUNBOOK.read_text(encoding="utf-8"))
    for r in found:
        assert r["labels"]["severity"] in ("critical", "warning", "info"), r["alert"]
        ann = r["annotations"]
        assert ann["summary"] and ann["description"], r["alert"]
        path, _, anchor = ann["runbook"].partition("#")
        assert (ROOT / path) == RUNBOOK and anchor == r["alert"].lower() and anchor in anchors, r["alert"]
    severity = {r["alert"]: r["labels"]["severity"] for r in found}
    assert severity["WatcherRolloutRollback"] == "critical" and severity["WatcherRolloutPaused"] == "warning"
    # the outbox alerts name the sink; every health alert names the instance
    for name in ("WatcherOutboxStuck", "WatcherDeliveriesFailing", "WatcherRollbackUndelivered"):
        rule = next(r for r in found if r["alert"] == name)
        assert "$labels.sink" in rule["annotations"]["summary"], name
        assert "$labels.sink" in rule["annotations"]["description"], name
    for rule in found:
        # job-level: the partitions the job's instances hold between them
        if rule["alert"] not in ROLLOUT_ALERTS | {
            "WatcherRolloutUnjudged",
            "WatcherDriftSignal",
            "WatcherMissing",
            "WatcherPartitionsUnowned",
        }:
            assert "$labels.instance" in rule["annotations"]["summary"], rule["alert"]


def test_checkpoint_stale_is_guarded_by_consumption_within_its_age_threshold() -> None:
    """An idle watcher writes no checkpoint: the rule must require events consumed, over a window no longer
    than the age threshold (else the last burst before a quiet spell would fire it)."""
    rule = next(r for r in rules() if r["alert"] == "WatcherCheckpointStale")
    age = re.search(r"time\(\) - watcher_checkpoint_last_timestamp_seconds > (\d+)", rule["expr"])
    window = re.search(r"increase\(watcher_events_consumed_total\[(\d+)m\]\)\) > 0", rule["expr"])
    assert age and window, rule["expr"]
    assert int(window.group(1)) * 60 <= int(age.group(1))


def test_rollout_alerts_carry_rollout_agent_and_version_labels() -> None:
    for r in rules():
        if r["alert"] not in ROLLOUT_ALERTS | {"WatcherRolloutUnjudged"}:
            continue
        text = r["annotations"]["summary"] + r["annotations"]["description"]
        for label in ("rollout_id", "agent", "environment", "canary_version", "baseline_version"):
            assert f"$labels.{label}" in text, (r["alert"], label)
            assert re.search(rf"\b{label}\b", r["expr"]), (r["alert"], label)
        if r["alert"] == "WatcherRolloutUnjudged":  # says why: the closed vocabulary of coverage.Unjudged
            assert "$labels.reason" in r["annotations"]["summary"] and "reason" in r["expr"]
            continue
        decision = "rollback" if r["alert"] == "WatcherRolloutRollback" else "pause"
        assert f'decision="{decision}"' in r["expr"]


def test_every_rule_has_a_firing_and_a_not_firing_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        doc = yaml.safe_load(path.read_text())
        assert {str((path.parent / f).resolve()) for f in doc["rule_files"]} <= {str(f) for f in RULE_FILES}
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {r["alert"] for r in rules()}
    assert names - firing == set(), f"rules without a firing case: {names - firing}"
    assert names - quiet == set(), f"rules without a not-firing case: {names - quiet}"


def test_promtool_checks_the_rules() -> None:
    promtool = require_tool("promtool")
    result = _run(promtool, "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    promtool = require_tool("promtool")
    assert RULE_TESTS
    result = _run(promtool, "test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("alert", "old", "new"),
    [
        ("WatcherRolloutRollback", 'state=~"running|paused"', 'state=~".+"'),
        # the checkpoint age alone: an idle watcher (no checkpoint is due) would fire
        (
            "WatcherCheckpointStale",
            "increase(watcher_events_consumed_total[2m])) > 0",
            "increase(watcher_events_consumed_total[2m])) >= 0",
        ),
        # only rollbacks page
        ("WatcherRollbackUndelivered", 'severity="critical"', 'severity=~".+"'),
    ],
)
def test_promtool_unit_tests_would_catch_a_broken_rule(
    tmp_path: Path, alert: str, old: str, new: str
) -> None:
    """The unit tests are not vacuous: a rule loosened in a way that matters fails them."""
    promtool = require_tool("promtool")
    (tmp_path / "tests").mkdir()
    broken = RULE_FILES[0].read_text().replace(old, new, 1)
    assert broken != RULE_FILES[0].read_text()
    (tmp_path / RULE_FILES[0].name).write_text(broken)
    for path in RULE_TESTS:
        (tmp_path / "tests" / path.name).write_text(path.read_text())
    result = _run(promtool, "test", "rules", *(str(tmp_path / "tests" / p.name) for p in RULE_TESTS))
    assert result.returncode != 0
    assert alert in result.stderr + result.stdout


# --- Alertmanager ---------------------------------------------------------------------------------------


def _alertmanager() -> dict[str, Any]:
    return yaml.safe_load(ALERTMANAGER.read_text())


def test_alertmanager_config_is_valid() -> None:
    amtool = require_tool("amtool")
    result = _run(amtool, "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (
            {
                "alertname": "WatcherRolloutRollback",
                "severity": "critical",
                "rollout_id": "ro-1",
                "agent": "support-bot",
            },
            "slack",  # watcher's own PagerDuty sink pages for a rollback: one incident, not two
        ),
        (
            {
                "alertname": "WatcherRolloutPaused",
                "severity": "warning",
                "rollout_id": "ro-1",
                "agent": "support-bot",
            },
            "slack",
        ),
        ({"alertname": "WatcherDriftSignal", "severity": "info", "agent": "faq-bot"}, "slack"),
        ({"alertname": "WatcherDown", "severity": "critical", "instance": "w:8080"}, "pagerduty"),
        ({"alertname": "WatcherMissing", "severity": "critical"}, "pagerduty"),
        ({"alertname": "WatcherNotReady", "severity": "warning", "instance": "w:8080"}, "slack"),
        ({"alertname": "WatcherCheckpointStale", "severity": "warning", "instance": "w:8080"}, "slack"),
        (
            {
                "alertname": "WatcherDeliveriesFailing",
                "severity": "warning",
                "instance": "w:8080",
                "sink": "deployer",
            },
            "slack",
        ),
    ],
)
def test_alertmanager_routes(labels: dict[str, str], receiver: str) -> None:
    amtool = require_tool("amtool")
    result = _run(
        amtool,
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER}",
        f"--verify.receivers={receiver}",
        *(f"{k}={v}" for k, v in labels.items()),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_every_rule_severity_reaches_its_receiver() -> None:
    """Critical health alerts page, everything else goes to Slack; rollout alerts never page from
    Alertmanager, because watcher's PagerDuty sink pages for the same rollback with its own dedup key."""
    am = _alertmanager()
    route = am["route"]
    assert route["receiver"] == "slack"
    assert route["routes"][0] == {"receiver": "slack", "matchers": ['alertname=~"WatcherRollout.+"']}
    assert (
        route["routes"][1]["matchers"] == ['severity="critical"']
        and route["routes"][1]["receiver"] == "pagerduty"
    )
    rollout_alerts = {r["alert"] for r in rules() if r["alert"].startswith("WatcherRollout")}
    assert rollout_alerts == {"WatcherRolloutRollback", "WatcherRolloutPaused", "WatcherRolloutUnjudged"}
    receivers = {r["name"]: r for r in am["receivers"]}
    assert "pagerduty_configs" in receivers["pagerduty"] and "slack_configs" in receivers["slack"]
    assert {r["labels"]["severity"] for r in rules()} <= {"critical", "warning", "info"}


def test_alertmanager_groups_per_rollout_and_rollback_inhibits_pause() -> None:
    am = _alertmanager()
    assert am["route"]["group_by"] == ["agent", "environment", "rollout_id"]
    inhibit = [
        r for r in am["inhibit_rules"] if r["source_matchers"] == ['alertname="WatcherRolloutRollback"']
    ]
    assert len(inhibit) == 1
    assert inhibit[0]["target_matchers"] == ['alertname="WatcherRolloutPaused"']
    assert inhibit[0]["equal"] == ["rollout_id"]
    down = [r for r in am["inhibit_rules"] if r["source_matchers"] == ['alertname="WatcherDown"']]
    assert any(r["target_matchers"] == ['alertname="WatcherMissing"'] for r in down)  # one page
