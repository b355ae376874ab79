"""The composition root (watcher.service.compose.build_daemon): what the settings make, and parts
passed in used as they are. Nothing here connects anywhere: the Kafka parts connect when started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from watcher.config import Settings, load_settings
from watcher.engine import Engine, Tasks
from watcher.errors import ConfigError
from watcher.kafka import KafkaSource
from watcher.kafka.deadletter import NullDeadLetters
from watcher.kafka.messages import FileSource
from watcher.service.compose import build_daemon
from watcher.service.markers import NullMarkerPublisher
from watcher.service.partitions import InstancePartitions, TaskPartitions
from watcher.storage import SqliteCheckpointStore
from watcher.storage.checkpoint import MemoryCheckpointStore
from watcher.storage.decisions import MemoryDecisionLog


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    return load_settings(
        environ={},
        overrides={
            "kafka.telemetry_topics": ["tel", "deployments"],
            "kafka.deployments_topics": ["deployments"],
            "judge.decision_log": str(tmp_path / "decisions.sqlite"),
            "outbox.path": str(tmp_path / "outbox.sqlite"),
            "spool.path": str(tmp_path / "spool.sqlite"),
            "checkpoint.path": str(tmp_path / "checkpoint.sqlite"),
            **overrides,
        },
    )


def test_the_settings_make_one_engine_a_kafka_source_and_its_checkpoints(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    daemon = build_daemon(_settings(tmp_path), registry=registry)
    source = daemon.source
    assert isinstance(source, KafkaSource) and source.topics == ("tel", "deployments")  # each topic once
    assert isinstance(daemon.engine, Engine) and daemon.tasks is None and daemon.peers is None
    assert daemon.checkpoints is not None and daemon.checkpoints.checkpointer is not None
    assert isinstance(daemon.checkpoints.store, SqliteCheckpointStore)
    assert isinstance(daemon.partitions, InstancePartitions)
    assert daemon.partitions.checkpointer is daemon.checkpoints.checkpointer  # resumes where it checkpointed
    assert registry.get_sample_value("watcher_partitions_owned") == 0  # every part on the one registry
    assert registry.get_sample_value("watcher_checkpoint_failures_total") == 0
    daemon.checkpoints.close()
    daemon.decision_log.close()
    daemon.outbox.close()


def test_partition_scope_makes_tasks_peers_and_an_advertising_assignor(tmp_path: Path) -> None:
    store = MemoryCheckpointStore()
    daemon = build_daemon(_settings(tmp_path, **{"checkpoint.scope": "partition"}), checkpoint_store=store)
    assert isinstance(daemon.engine, Tasks) and daemon.tasks is daemon.engine and daemon.peers is not None
    assert isinstance(daemon.partitions, TaskPartitions)
    assert daemon.checkpoints is not None and daemon.checkpoints.store is store
    assert daemon.checkpoints.handover is daemon.partitions.handover
    assert isinstance(daemon.source, KafkaSource)
    (assignor,) = daemon.source._options["partition_assignment_strategy"]
    assert assignor.name == "watcher-range"
    task = daemon.tasks.create(0)  # a new task takes the policies in force and forwards its changes
    assert task.policies is daemon.tasks.policies and len(task.change_listeners) == 1
    daemon.decision_log.close()
    daemon.outbox.close()


def test_parts_passed_in_are_used_and_a_file_source_keeps_no_checkpoints(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    engine, log, source = Engine(settings), MemoryDecisionLog(), FileSource(tmp_path / "in.jsonl")
    daemon = build_daemon(
        settings,
        engine=engine,
        source=source,
        decision_log=log,
        dead_letters=NullDeadLetters(),
        marker_publisher=NullMarkerPublisher(),
    )
    assert daemon.engine is engine and daemon.source is source and daemon.decision_log is log
    assert len(engine.change_listeners) == 1  # its rollout changes reach the outbox
    assert daemon.checkpoints is None  # a file cannot resume at a checkpoint's offsets
    daemon.outbox.close()


def test_partition_scope_without_a_kafka_source_fails_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build_daemon(
            _settings(tmp_path, **{"checkpoint.scope": "partition"}),
            source=FileSource(tmp_path / "in.jsonl"),
            decision_log=MemoryDecisionLog(),
        )
    assert info.value.field == "checkpoint.scope"
