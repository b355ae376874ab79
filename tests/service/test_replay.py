"""`watcher replay`: the daemon's engine over a file, in event time, with decision records out."""

from __future__ import annotations

import dataclasses
import json

from watcher.cli import main
from watcher.service.replay import replay, replay_decisions
from watcher.sim.presets import PRESETS
from watcher.sim.simulate import write_jsonl


def test_replay_writes_a_rollback_naming_metric_and_segment(tmp_path, capsys) -> None:
    path = tmp_path / "demo.jsonl"
    write_jsonl(dataclasses.replace(PRESETS["demo"], duration_s=600.0), path)
    out = tmp_path / "decisions.jsonl"
    assert main(["replay", str(path), "--decisions-out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["action"] for r in records] == ["rollback"]
    record = records[0]
    assert record["schema"] == "watcher.decision/v1"
    assert record["trigger"] == {"metric": "quality", "slice": "intent=billing"}
    assert record["rollout"]["canary_version"] == "v42" and record["rollout"]["baseline_version"] == "v41"
    # event time: the decision is stamped after the regression's onset (start + 120 s), not wall time
    onset = PRESETS["demo"].start_ts + 120.0
    assert onset < record["ts_unix"] < onset + 480.0
    failing = [e for e in record["evidence"] if e["verdict"] == "fail"]
    assert {"metric": "quality", "slice": "intent=billing"} in [
        {"metric": e["metric"], "slice": e["slice"]} for e in failing
    ]
    table = capsys.readouterr().out
    assert "v42" in table and "intent" in table and "rollback" in table


def test_replay_is_deterministic_and_batch_size_does_not_change_the_decision(tmp_path) -> None:
    path = tmp_path / "demo.jsonl"
    write_jsonl(dataclasses.replace(PRESETS["demo"], duration_s=600.0), path)
    first = replay_decisions(path)
    assert first == replay_decisions(path)  # same input, same decisions, same ids
    report, _ = replay(path, batch_size=250)
    assert [d["decision_id"] for d in report.decisions] == [d["decision_id"] for d in first]


def test_replay_until_a_stop_reads_no_further_and_keeps_that_decision(tmp_path) -> None:
    path = tmp_path / "demo.jsonl"
    write_jsonl(dataclasses.replace(PRESETS["demo"], duration_s=600.0), path)
    whole, _ = replay(path, batch_size=250)
    cut, _ = replay(path, batch_size=250, until=("pause", "rollback"))
    assert cut.decisions == whole.decisions[:1] and cut.decisions[0]["action"] == "rollback"
    assert cut.lines < whole.lines and cut.lines % 250 == 0  # the batch of the first stop was the last read
    assert replay_decisions(path, until=("rollback",)) == whole.decisions[:1]


def test_replay_of_a_healthy_canary_makes_no_rollback(tmp_path) -> None:
    path = tmp_path / "healthy.jsonl"
    write_jsonl(dataclasses.replace(PRESETS["healthy"], duration_s=900.0), path)
    assert all(d["action"] not in ("rollback", "pause") for d in replay_decisions(path))


def test_replay_counts_and_dead_letters_bad_lines(tmp_path, capsys) -> None:
    path = tmp_path / "mixed.jsonl"
    write_jsonl(dataclasses.replace(PRESETS["healthy"], duration_s=60.0), path)
    with path.open("ab") as fh:
        fh.write(b'\xff\xfe not json\n{"schema": "watcher.turn/v1"}\n\n')
    dead = tmp_path / "dead.jsonl"
    assert main(["replay", str(path), "--dead-letters-out", str(dead), "--no-segments"]) == 0
    records = [json.loads(line) for line in dead.read_text().splitlines()]
    assert sorted(r["reason"] for r in records) == ["missing_field", "not_json"]
    assert records[0]["origin"].startswith("mixed.jsonl:")
    assert "rejected 2" in capsys.readouterr().out


def test_replay_with_a_policy_file(tmp_path) -> None:
    """A stricter tolerance file changes nothing structural but must be honoured (loads, runs)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\ndefaults:\n  metrics:\n    quality:\n      enabled: false\n")
    path = tmp_path / "demo.jsonl"
    write_jsonl(dataclasses.replace(PRESETS["demo"], duration_s=600.0), path)
    decisions = replay_decisions(path, policy_path=policy)
    assert all(d["trigger"] is None or d["trigger"]["metric"] != "quality" for d in decisions)


def test_auto_started_rollout_uses_the_observed_share_not_a_guess(tmp_path) -> None:
    """No marker: telemetry reveals the canary. A guessed 10 % against a real 30 % split would be a
    false sample-ratio pause (and bias every rate test); the observed share stands in instead."""
    path = tmp_path / "auto.jsonl"
    write_jsonl(
        dataclasses.replace(PRESETS["healthy"], emit_markers=False, canary_weight=0.3, duration_s=900.0), path
    )
    report, engine = replay(path)
    (rollout,) = engine.registry.all()
    assert rollout.source == "auto"
    assert not [d for d in report.decisions if d["action"] in ("pause", "rollback")], report.decisions
