"""The composition root: every part of the daemon built from the settings, in one place.

``build_daemon(settings)`` makes the engine (one, or one task per partition with
``checkpoint.scope: partition``), the Kafka source with its partition listener, the checkpoints,
the dead-letter publisher, the decision log, the marker publisher, the outbox with its sinks, the
peers, the tracer and watcher's own metrics, and hands them to ``Daemon``. Every part can be passed
in instead (tests, embedding): a part given is used as it is, and the rest is built around it.

The wiring needs no callbacks patched onto a part after it was made: the source learns of its
partition listener when the daemon starts it (``Source.start(listener)``), the listener answers
the source instead of calling it (``watcher.kafka.rebalance``), and the rollout changes of every
engine reach the outbox through ``forward_changes``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from watcher.config import KafkaSettings, Settings
from watcher.engine import Engine, Tasks
from watcher.errors import ConfigError
from watcher.http import Peers, advertising_assignor
from watcher.judges import load_policy
from watcher.kafka import (
    DeadLetters,
    KafkaDeadLetters,
    KafkaSource,
    KafkaTurnWriter,
    OffsetSource,
    PartitionListener,
    Source,
    TurnWriter,
)
from watcher.outbox import Outbox
from watcher.service.daemon import Daemon, Parts
from watcher.service.exposition import Exposition
from watcher.service.handover import Handover, HandoverMetrics
from watcher.service.markers import MarkerPublisher, Markers
from watcher.service.partitions import Checkpoints, InstancePartitions, TaskPartitions
from watcher.service.reload import ConfigSource, ReloadMetrics
from watcher.service.telemetry import StateCollector, WatcherMetrics, setup_tracing
from watcher.sinks import build_sinks
from watcher.state import Change
from watcher.storage import (
    SCOPE_ALL,
    Checkpointer,
    CheckpointMetrics,
    CheckpointStore,
    DecisionLog,
    KafkaCheckpointStore,
    SpoolCollector,
    SqliteCheckpointStore,
    SqliteDecisionLog,
    SqliteSpool,
)

__all__ = ["build_daemon", "forward_changes"]


def build_daemon(
    settings: Settings,
    *,
    config_source: ConfigSource | None = None,
    registry: CollectorRegistry | None = None,
    engine: Engine | None = None,
    source: Source | None = None,
    dead_letters: DeadLetters | None = None,
    decision_log: DecisionLog | None = None,
    marker_publisher: Markers | None = None,
    turn_writer: TurnWriter | None = None,
    outbox: Outbox | None = None,
    checkpoint_store: CheckpointStore | None = None,
    tracer: Any = None,
    reset_state: bool = False,
) -> Daemon:
    """The daemon for ``settings``; any part given is used instead of the one the settings describe.

    ``config_source``: where the settings came from, so a reload reads them the same way (None: built
    in code, nothing to reload from). ``reset_state``: a checkpoint that was written but cannot be
    read means a fresh state, instead of a refusal to start (``watcher run --reset-state``).
    ``engine`` with ``checkpoint.scope: partition`` lends its policies to the partition tasks.
    Raises ``ConfigError`` when the parts cannot work together.
    """
    registry = registry if registry is not None else CollectorRegistry()
    cp = settings.checkpoint
    lock = asyncio.Lock()  # one batch, checkpoint, rebalance or reload at a time
    if outbox is None:
        outbox = Outbox(
            settings.outbox.path, build_sinks(settings.sinks, kafka=settings.kafka), registry=registry
        )
    forward = forward_changes(outbox)

    tasks: Tasks | None = None
    peers: Peers | None = None
    if cp.enabled and cp.scope == "partition":
        tasks = _tasks(settings, engine, forward)
        peers = _peers(tasks)
        view: Engine | Tasks = tasks
    else:
        engine = engine if engine is not None else Engine(settings)
        engine.change_listeners.append(forward)
        view = engine
    if source is None:
        source = _kafka_source(settings.kafka, peers)

    handover_metrics = HandoverMetrics(registry)
    for topic in [*settings.kafka.telemetry_topics, *settings.kafka.deployments_topics]:
        handover_metrics.offset_resets.labels(topic)  # at 0 from the start: the first one is an increase
    partitions: PartitionListener = InstancePartitions(handover_metrics)
    checkpoints: Checkpoints | None = None
    # only a source that can resume at given offsets can pair state and offsets (not a file)
    if cp.enabled and isinstance(source, OffsetSource):
        store = checkpoint_store if checkpoint_store is not None else _checkpoint_store(settings)
        metrics = CheckpointMetrics(registry)
        owner = settings.kafka.group_id
        if tasks is None:
            assert engine is not None
            checkpointer = Checkpointer(store, engine, owner=owner, interval_s=cp.interval_s, scope=SCOPE_ALL)
            checkpoints = Checkpoints(store, metrics, checkpointer=checkpointer, reset_state=reset_state)
            partitions = InstancePartitions(handover_metrics, checkpointer)
        else:
            handover = Handover(
                tasks,
                store,
                owner=owner,
                interval_s=cp.interval_s,
                metrics=metrics,
                handover_metrics=handover_metrics,
            )
            checkpoints = Checkpoints(store, metrics, handover=handover)
            partitions = TaskPartitions(
                handover, checkpoints, lock, telemetry_topic=settings.kafka.telemetry_topics[0]
            )
    elif tasks is not None:
        raise ConfigError(
            "checkpoint.scope", "'partition' needs a Kafka source (the partitions are the tasks)"
        )

    state_collector = StateCollector(view, settings.telemetry.series, settings.telemetry.series_limit)
    registry.register(state_collector)
    # what Kafka will not take yet waits on disk (the file is made only when something must wait)
    spool = SqliteSpool(settings.spool.path)
    limits = {"deadletter": settings.spool.max_bytes, "marker": 0}  # markers are few: no limit
    registry.register(SpoolCollector(spool, limits, time.time))
    if dead_letters is None:
        # a dead-letter topic that refuses writes never holds the batch: bounded, on disk, forwarded
        dead_letters = KafkaDeadLetters(
            settings.kafka,
            spool=spool,
            max_spool_bytes=settings.spool.max_bytes,
            direct_timeout_s=settings.kafka.dead_letter_timeout_s,
        )
    parts = Parts(
        engine=view,
        tasks=tasks,
        source=source,
        partitions=partitions,
        checkpoints=checkpoints,
        dead_letters=dead_letters,
        spool=spool,
        decision_log=decision_log
        if decision_log is not None
        else SqliteDecisionLog(settings.judge.decision_log),
        markers=marker_publisher if marker_publisher is not None else MarkerPublisher(settings.kafka, spool),
        turns=turn_writer
        if turn_writer is not None
        else KafkaTurnWriter.for_kafka(
            settings.kafka, settings.otlp.http_topic or settings.kafka.telemetry_topics[0]
        ),
        outbox=outbox,
        peers=peers,
        tracer=tracer if tracer is not None else setup_tracing(settings.telemetry),
        registry=registry,
        exposition=Exposition(registry, state_collector),
        metrics=WatcherMetrics(registry),
        reload_metrics=ReloadMetrics(registry),
        lock=lock,
    )
    return Daemon(settings, parts, config_source=config_source)


def forward_changes(outbox: Outbox) -> Callable[[Change], None]:
    """An engine's change listener: rollout starts, updates and ends go to the sinks (markers,
    Grafana regions, PagerDuty), synchronously, before the batch that made them is committed."""

    def forward(change: Change) -> None:
        if change.superseded is not None:
            ended = change.superseded
            outbox.enqueue_rollout_change("ended", ended.to_dict(), ended.ended_ts or ended.started_ts, None)
        rollout = change.rollout
        if rollout is None or change.kind == "orphan":
            return
        last = rollout.markers[-1] if rollout.markers else None
        marker = last if last is not None and last.get("event_id") else None
        if change.kind in ("started", "rebased"):
            ts = rollout.started_ts
        elif change.kind == "ended":
            ts = rollout.ended_ts or rollout.started_ts
        else:
            ts = float(last["ts"]) if last is not None else rollout.started_ts
        kind = "updated" if change.kind == "rebased" else change.kind  # sinks see the marker as an update
        outbox.enqueue_rollout_change(kind, rollout.to_dict(), ts, marker)

    return forward


def _tasks(settings: Settings, engine: Engine | None, forward: Callable[[Change], None]) -> Tasks:
    """One engine per owned partition, each forwarding its rollout changes; new tasks take the
    policies in force (a reload replaces ``tasks.policies``)."""
    policies = engine.policies if engine is not None else load_policy(settings.judge.policy_file)

    def new_task() -> Engine:
        task = Engine(settings, policies=tasks.policies)
        task.change_listeners.append(forward)
        return task

    tasks = Tasks(new_task, policies)
    return tasks


def _peers(tasks: Tasks) -> Peers:
    """Which instance owns which partition, so any instance answers about any agent."""
    return Peers(
        partition_count=lambda: tasks.partition_count,
        is_local=lambda p: tasks.get(p) is not None,
        holds_rollout=lambda rid: tasks.registry.get(rid) is not None,
    )


def _kafka_source(kafka: KafkaSettings, peers: Peers | None) -> KafkaSource:
    options: dict[str, Any] = {}
    if peers is not None:
        # partition p of every topic to the same member (the topics are co-partitioned by agent),
        # and every member learns every partition's owner address
        options["partition_assignment_strategy"] = (
            advertising_assignor(lambda: peers.address, peers.set_owners),
        )
    return KafkaSource(
        kafka.bootstrap_servers,
        list(dict.fromkeys([*kafka.telemetry_topics, *kafka.deployments_topics])),
        kafka.group_id,
        auto_offset_reset=kafka.auto_offset_reset,
        past_end=kafka.past_end,
        max_records=kafka.max_batch_records,
        poll_timeout_ms=kafka.poll_timeout_ms,
        stale_after=kafka.ready_stale_after_s,
        client_options={
            "client_id": kafka.client_id,
            "request_timeout_ms": kafka.request_timeout_ms,
            "session_timeout_ms": kafka.session_timeout_ms,
            "heartbeat_interval_ms": kafka.heartbeat_interval_ms,
            "max_partition_fetch_bytes": kafka.max_partition_fetch_bytes,
            **options,
            **kafka.client_options(),
        },
    )


def _checkpoint_store(settings: Settings) -> CheckpointStore:
    cp = settings.checkpoint
    if cp.store == "kafka":
        return KafkaCheckpointStore(
            settings.kafka.bootstrap_servers, cp.topic, client_options=settings.kafka.client_options()
        )
    return SqliteCheckpointStore(cp.path, backups=cp.backups, backup_interval_s=cp.backup_interval_s)
