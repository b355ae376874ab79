"""The CI examples under deploy/ci/: the files parse as their CI systems read them, the deploy waits for
the gate, and the gate's commands, typed as printed, run against sample data and give the verdict."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[2]
CI = ROOT / "deploy" / "ci"
BIN = Path(sys.executable).parent  # the venv's bin: `watcher` as the pipelines call it


def _github() -> dict:
    doc = yaml.safe_load((CI / "github-actions.yml").read_text())
    # YAML 1.1 reads the key `on` as True; GitHub reads it as "on"
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def _gitlab() -> dict:
    return yaml.safe_load((CI / "gitlab-ci.yml").read_text())


def _workspace(tmp_path: Path) -> Path:
    (tmp_path / "deploy" / "ci").mkdir(parents=True)
    shutil.copy(CI / "gate-policy.yaml", tmp_path / "deploy" / "ci" / "gate-policy.yaml")
    return tmp_path


def _sh(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_github_workflow_structure() -> None:
    doc = _github()
    assert set(doc) >= {"name", "on", "jobs"} and "workflow_dispatch" in doc["on"]
    jobs = doc["jobs"]
    for name, job in jobs.items():
        assert "runs-on" in job and job["steps"], name
        for need in [job["needs"]] if isinstance(job.get("needs"), str) else job.get("needs", []):
            assert need in jobs, (name, need)
        for step in job["steps"]:
            assert ("run" in step) != ("uses" in step), step  # a step runs a command or an action
    assert jobs["deploy-production"]["needs"] == "gate"
    ids = [s.get("id") for s in jobs["gate"]["steps"]]
    assert ids.index("replay") < ids.index("gate")
    gate = next(s for s in jobs["gate"]["steps"] if s.get("id") == "gate")
    assert "--junit gate.xml" in gate["run"] and '--summary "$GITHUB_STEP_SUMMARY"' in gate["run"]
    upload = next(s for s in jobs["gate"]["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()"  # the outputs are kept when the gate blocks, when they matter most
    kept = upload["with"]["path"].split()
    assert all(f"{out}" in gate["run"] for out in kept)  # every kept file is one the gate writes


def _github_env(doc: dict) -> dict[str, str]:
    env = {}
    for key, value in doc["env"].items():
        # ${{ github.event.inputs.candidate || 'v42' }} -> its default, as on a push without inputs
        m = re.fullmatch(r"\$\{\{.*\|\|\s*'([^']*)'\s*\}\}", str(value))
        env[key] = m.group(1) if m else str(value)
    return env


@pytest.mark.integration
def test_github_gate_steps_run_and_pass_then_block_a_regression(tmp_path: Path) -> None:
    doc = _github()
    steps = {s.get("id"): s["run"] for s in doc["jobs"]["gate"]["steps"] if s.get("id")}
    work = _workspace(tmp_path)
    summary = work / "step-summary.md"
    env = {**_github_env(doc), "GITHUB_STEP_SUMMARY": str(summary)}
    replay = _sh(steps["replay"], work, env)
    assert replay.returncode == 0, replay.stderr
    gate = _sh(steps["gate"], work, env)
    assert gate.returncode == 0, gate.stdout + gate.stderr  # a healthy candidate passes
    assert gate.stdout.startswith("PASS: promote:")
    assert summary.read_text().startswith(
        "## ✅ watcher gate: PASS (promote) — support-bot v42 vs v41 in staging"
    )
    assert ET.parse(work / "gate.xml").getroot().tag == "testsuites"
    assert (work / "gate-decision.json").exists()
    assert (work / "gate.html").read_text().startswith("<!DOCTYPE html>")
    # the same step on a replay in which the candidate regresses: non-zero, so the deploy job never runs
    bad = steps["replay"].replace("--seed 7", "--seed 7 --regression metric=error,size=x4")
    bad = bad.replace("--duration 1800", "--duration 600")
    assert _sh(bad, work, env).returncode == 0
    blocked = _sh(steps["gate"], work, env)
    assert blocked.returncode == 1 and blocked.stdout.startswith("FAIL: rollback: error")


def test_gitlab_pipeline_structure() -> None:
    doc = _gitlab()
    stages = doc["stages"]
    jobs = {k: v for k, v in doc.items() if isinstance(v, dict) and "script" in v}
    assert set(jobs) == {"staging-replay", "gate", "deploy-production"}
    for name, job in jobs.items():
        assert job["stage"] in stages, name
        assert all(isinstance(line, str) for line in job["script"]), name
        for need in job.get("needs", []):
            assert need in jobs and stages.index(jobs[need]["stage"]) <= stages.index(job["stage"])
    assert jobs["deploy-production"]["needs"] == ["gate"]
    gate = jobs["gate"]
    assert gate["artifacts"]["reports"]["junit"] == "gate.xml" and gate["artifacts"]["when"] == "always"
    assert any("--junit gate.xml" in line for line in gate["script"])
    assert "allow_failure" not in gate  # exit 1 and 2 fail the job and so hold the deploy


@pytest.mark.integration
def test_gitlab_jobs_run_in_order_against_sample_data(tmp_path: Path) -> None:
    doc = _gitlab()
    work = _workspace(tmp_path)
    env = {k: str(v) for k, v in doc["variables"].items()}
    for job in ("staging-replay", "gate", "deploy-production"):
        result = _sh("\n".join(doc[job]["script"]), work, env)
        assert result.returncode == 0, (job, result.stdout, result.stderr)
    assert (work / "gate-summary.md").read_text().startswith("## ✅ watcher gate: PASS")
    suite = ET.parse(work / "gate.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0"
    for kept in doc["gate"]["artifacts"]["paths"]:
        assert (work / kept).exists(), kept
