"""Restoring the instance's state (``Checkpoints.restore``) from a damaged checkpoint file: a refusal,
a counted fresh start with ``--reset-state``; and ``watcher run``'s refusal as an operator reads it
(issue #15, 4)."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from watcher.config import load_settings
from watcher.engine import Engine
from watcher.errors import CheckpointLost
from watcher.service.partitions import Checkpoints
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate
from watcher.storage import Checkpointer, CheckpointMetrics, SqliteCheckpointStore

LINES = list(generate(dataclasses.replace(PRESETS["demo"], duration_s=120.0, conversations_per_s=4.0)))


def _written(path: Path) -> None:
    """Checkpoints of a real engine's state, after 100, 200 and 300 messages (incremental)."""
    engine = Engine(load_settings(environ={}))
    store = SqliteCheckpointStore(path)
    cp = Checkpointer(store, engine, owner="g", interval_s=0.0)
    for end in (100, 200, 300):
        engine.process(LINES[end - 100 : end])
        cp.advance({("t", 0): end})
        cp.save()
    store.close()


def _turns(engine: Engine) -> dict[tuple[str, ...], int]:
    return {k: engine.state.snapshot(k, "cumulative").turns for k in engine.state.keys()}


def _damage(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("UPDATE checkpoint_parts SET data=substr(data, 1, length(data) - 1)")
    db.commit()
    db.close()


def _restore(path: Path, *, reset_state: bool = False) -> tuple[Checkpoints, Engine, CollectorRegistry]:
    engine = Engine(load_settings(environ={}))
    registry = CollectorRegistry()
    store = SqliteCheckpointStore(path)
    checkpointer = Checkpointer(store, engine, owner="g")
    checkpoints = Checkpoints(
        store, CheckpointMetrics(registry), checkpointer=checkpointer, reset_state=reset_state
    )
    return checkpoints, engine, registry


def test_nothing_readable_refuses_to_start_unless_reset_state(tmp_path: Path) -> None:
    path = tmp_path / "cp.sqlite"
    _written(path)
    _damage(path)
    checkpoints, _, registry = _restore(path)
    with pytest.raises(CheckpointLost):
        checkpoints.restore()
    checkpoints, engine, registry = _restore(path, reset_state=True)
    assert checkpoints.restore() is False
    assert registry.get_sample_value("watcher_checkpoint_lost_total") == 1
    assert engine.to_state() == Engine(load_settings(environ={})).to_state()


def test_watcher_run_refuses_an_unreadable_checkpoint_and_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "cp.sqlite"
    _written(path)
    _damage(path)
    env = {
        **os.environ,
        "WATCHER_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9",  # never reached: the refusal comes first
        "WATCHER_HTTP__PORT": "0",
        "WATCHER_JUDGE__DECISION_LOG": str(tmp_path / "d.sqlite"),
        "WATCHER_OUTBOX__PATH": str(tmp_path / "o.sqlite"),
        "WATCHER_SPOOL__PATH": str(tmp_path / "spool.sqlite"),
        "WATCHER_CHECKPOINT__PATH": str(path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "watcher", "run"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    assert "no readable checkpoint of 'all'" in done.stderr and "--reset-state" in done.stderr
    assert "Traceback" not in done.stderr
    db = sqlite3.connect(path)  # nothing overwritten: the damaged rows are kept aside
    assert db.execute("SELECT COUNT(*) FROM checkpoint_quarantine WHERE part=''").fetchone() == (1,)
    assert db.execute("SELECT COUNT(*) FROM checkpoints").fetchone() == (0,)


def test_a_damaged_checkpoint_restores_the_backup_with_its_offsets_counted(tmp_path: Path) -> None:
    path = tmp_path / "cp.sqlite"
    engine = Engine(load_settings(environ={}))
    store = SqliteCheckpointStore(path, backups=2, backup_interval_s=3600.0)  # one copy: the first save's
    cp = Checkpointer(store, engine, owner="g", interval_s=0.0)
    engine.process(LINES[:100])
    cp.advance({("t", 0): 100})
    cp.save()
    at_backup = _turns(engine)
    engine.process(LINES[100:300])
    cp.advance({("t", 0): 300})
    cp.save()
    store.close()
    _damage(path)

    restored = Engine(load_settings(environ={}))
    registry = CollectorRegistry()
    store = SqliteCheckpointStore(path, backups=2)
    checkpointer = Checkpointer(store, restored, owner="g")
    checkpoints = Checkpoints(store, CheckpointMetrics(registry), checkpointer=checkpointer)
    assert checkpoints.restore() is True
    assert _turns(restored) == at_backup and sum(at_backup.values()) > 0
    assert checkpointer.resume_offset("t", 0) == 100  # messages 100-299 are read again
    assert registry.get_sample_value("watcher_checkpoint_fallbacks_total") == 1
    assert registry.get_sample_value("watcher_checkpoint_lost_total") == 0
