from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from watcher.contract.verdicts import (
    Action,
    ArmEstimate,
    Cause,
    Decision,
    MetricEvidence,
    RolloutRef,
    Verdict,
    decision_id,
)
from watcher.errors import CheckpointError
from watcher.storage.decisions import DecisionLog, MemoryDecisionLog, SqliteDecisionLog, json_safe

T0 = 1_795_766_400.0  # 2026-11-26T00:00:00Z


def _ref(rollout_id: str = "support-bot/prod/v42@1795766400", agent: str = "support-bot") -> RolloutRef:
    return RolloutRef(
        rollout_id=rollout_id,
        agent_id=agent,
        environment="prod",
        strategy="canary",
        baseline_version="v41",
        canary_version="v42",
        canary_weight=0.1,
    )


def _evidence(statistic: float = 412.7) -> MetricEvidence:
    return MetricEvidence(
        metric="quality",
        slice="intent=billing",
        verdict=Verdict.FAIL,
        control=ArmEstimate(n=1840, estimate=0.81),
        treatment=ArmEstimate(n=212, estimate=0.66),
        effect=-0.15,
        effect_unit="difference",
        lower=-0.21,
        upper=-0.09,
        statistic=statistic,
        threshold=200.0,
        tolerance=0.05,
        critical=True,
        reason="quality in intent=billing: 0.66 vs 0.81 (-0.15, CI [-0.21, -0.09]), e=413 >= 200",
    )


def _decision(
    seq: int = 1,
    action: Action = Action.PAUSE,
    ts: float = T0 + 600,
    ref: RolloutRef | None = None,
    statistic: float = 412.7,
) -> Decision:
    ref = ref or _ref()
    return Decision(
        decision_id=decision_id(ref.rollout_id, seq, action),
        ts=ts,
        rollout=ref,
        action=action,
        cause=Cause.REGRESSION,
        reason="quality regressed in intent=billing",
        evidence=(_evidence(statistic),),
        trigger={"metric": "quality", "slice": "intent=billing"},
        sequence=seq,
    )


@dataclass(frozen=True)
class _Signal:
    signal_id: str
    ts: float
    version: str = "v41"
    metric: str = "quality"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "watcher.drift/v1",
            "signal_id": self.signal_id,
            "ts_unix": self.ts,
            "agent_id": "support-bot",
            "environment": "prod",
            "version": self.version,
            "metric": self.metric,
            "detector": "adwin",
            "before": 0.8,
            "after": 0.7,
            "reason": "quality drifted",
        }


@pytest.fixture(params=["sqlite", "memory"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        lg = SqliteDecisionLog(tmp_path / "decisions.db")
        yield lg
        lg.close()
    else:
        yield MemoryDecisionLog()


def test_both_implementations_satisfy_the_protocol(tmp_path: Path) -> None:
    logs: list[DecisionLog] = [SqliteDecisionLog(tmp_path / "a.db"), MemoryDecisionLog()]
    assert len(logs) == 2


def test_append_returns_the_record_as_to_dict(log: Any) -> None:
    d = _decision()
    assert log.append(d) is True
    [got] = log.list()
    assert got == json.loads(json.dumps(d.to_dict()))
    assert got["schema"] == "watcher.decision/v1"
    assert got["evidence"][0]["verdict"] == "fail"


def test_append_is_idempotent_and_never_overwrites(log: Any) -> None:
    first = _decision(statistic=412.7)
    # Same decision_id, different content: the first record wins (append-only).
    second = _decision(statistic=999.0)
    assert first.decision_id == second.decision_id
    assert log.append(first) is True
    assert log.append(second) is False
    [got] = log.list()
    assert got["evidence"][0]["statistic"] == 412.7


def test_append_many_counts_only_new_records(log: Any) -> None:
    ds = [_decision(seq=i, ts=T0 + i) for i in range(1, 6)]
    assert log.append_many(ds[:3]) == 3
    assert log.append_many(ds) == 2
    assert log.append_many([]) == 0
    assert len(log.list(limit=100)) == 5


def test_list_filters_order_and_limit(log: Any) -> None:
    other = _ref("faq-bot/prod/v7@1795766400", agent="faq-bot")
    log.append_many(
        [
            _decision(seq=1, action=Action.PAUSE, ts=T0 + 10),
            _decision(seq=2, action=Action.ROLLBACK, ts=T0 + 20),
            _decision(seq=1, action=Action.PROMOTE, ts=T0 + 30, ref=other),
        ]
    )
    newest_first = log.list()
    assert [r["ts_unix"] for r in newest_first] == [T0 + 30, T0 + 20, T0 + 10]
    assert [r["ts_unix"] for r in log.list(ascending=True)] == [T0 + 10, T0 + 20, T0 + 30]
    assert [r["action"] for r in log.list(agent_id="support-bot")] == ["rollback", "pause"]
    assert [r["action"] for r in log.list(rollout_id=other.rollout_id)] == ["promote"]
    assert [r["action"] for r in log.list(action="pause")] == ["pause"]
    assert [r["action"] for r in log.list(environment="staging")] == []
    assert [r["ts_unix"] for r in log.list(since=T0 + 20)] == [T0 + 30, T0 + 20]
    assert [r["ts_unix"] for r in log.list(limit=1)] == [T0 + 30]
    assert log.list(limit=0) == []


def test_latest_is_the_newest_decision_of_the_rollout(log: Any) -> None:
    assert log.latest(_ref().rollout_id) is None
    log.append(_decision(seq=1, action=Action.PAUSE, ts=T0 + 10))
    log.append(_decision(seq=2, action=Action.ROLLBACK, ts=T0 + 20))
    latest = log.latest(_ref().rollout_id)
    assert latest is not None and latest["action"] == "rollback" and latest["sequence"] == 2


def test_same_ts_keeps_insertion_order(log: Any) -> None:
    log.append(_decision(seq=1, action=Action.PAUSE, ts=T0))
    log.append(_decision(seq=2, action=Action.ROLLBACK, ts=T0))
    assert [r["sequence"] for r in log.list(ascending=True)] == [1, 2]
    assert log.latest(_ref().rollout_id)["sequence"] == 2  # type: ignore[index]


def test_non_finite_statistic_is_stored_as_null(log: Any) -> None:
    log.append(_decision(statistic=float("inf")))
    [got] = log.list()
    assert got["evidence"][0]["statistic"] is None


def test_drift_signals(log: Any) -> None:
    assert log.append_drift(_Signal("drift-a", T0 + 5)) is True
    assert log.append_drift(_Signal("drift-a", T0 + 5)) is False
    assert log.append_drift(_Signal("drift-b", T0 + 9, version="v42", metric="latency")) is True
    assert [r["signal_id"] for r in log.list_drift()] == ["drift-b", "drift-a"]
    assert [r["signal_id"] for r in log.list_drift(version="v41")] == ["drift-a"]
    assert [r["signal_id"] for r in log.list_drift(metric="latency")] == ["drift-b"]
    assert [r["signal_id"] for r in log.list_drift(since=T0 + 6)] == ["drift-b"]
    assert log.list() == []  # drift signals are not decisions


def test_sqlite_persists_across_reopen_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    with SqliteDecisionLog(path) as lg:
        lg.append(_decision())
    with SqliteDecisionLog(path) as lg:
        assert lg.append(_decision()) is False
        assert len(lg.list()) == 1
        mode = lg._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_sqlite_refuses_update_and_delete(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    with SqliteDecisionLog(path) as lg:
        lg.append(_decision())
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE decisions SET action='promote'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM decisions")
    db.close()


def test_sqlite_batch_is_atomic(tmp_path: Path) -> None:
    # A NULL agent_id violates NOT NULL at insert time: the whole batch must roll back.
    bad = _decision(seq=2, ref=RolloutRef("r/x", None, "prod", "canary", "a", "b"))  # type: ignore[arg-type]
    with SqliteDecisionLog(tmp_path / "d.db") as lg:
        with pytest.raises(CheckpointError):
            lg.append_many([_decision(seq=1), bad])
        assert lg.list() == []
        assert lg.append(_decision(seq=1)) is True  # the log is usable after the failure


def test_sqlite_unopenable_path_raises_checkpoint_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(CheckpointError):
        SqliteDecisionLog(tmp_path / "a-file" / "d.db")


def test_sqlite_creates_missing_directories(tmp_path: Path) -> None:
    with SqliteDecisionLog(tmp_path / "new" / "dir" / "d.db") as lg:
        assert lg.list() == []


def test_sqlite_threads_share_one_log(tmp_path: Path) -> None:
    with SqliteDecisionLog(tmp_path / "d.db") as lg:
        ds = [_decision(seq=i, ts=T0 + i) for i in range(1, 41)]

        def write(part: list[Decision]) -> None:
            for d in part:
                lg.append(d)

        threads = [threading.Thread(target=write, args=(ds[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(lg.list(limit=1000)) == 40


def test_json_safe() -> None:
    got = json_safe({"a": [1.0, float("nan")], "b": (float("-inf"), "x")})
    assert got == {"a": [1.0, None], "b": [None, "x"]}
