"""Storage (layer: I/O). ``checkpoint``: the engine's state with the offsets it covers, and the
checkpointer; ``sqlite_checkpoints``: the embedded store (generations, checksums, quarantine);
``kafka_checkpoints``: the same store in a compacted Kafka topic;
``decisions``: the append-only decision log; ``spool``: records waiting for Kafka (dead letters,
markers), and their metrics; ``sqlite``: opening watcher's SQLite files one way.
"""

from __future__ import annotations

from watcher.storage.checkpoint import (
    SCOPE_ALL,
    Checkpoint,
    Checkpointer,
    CheckpointMetrics,
    CheckpointStore,
    Offsets,
)
from watcher.storage.decisions import DecisionLog, SqliteDecisionLog, json_safe
from watcher.storage.kafka_checkpoints import KafkaCheckpointStore
from watcher.storage.spool import SpoolCollector, SqliteSpool
from watcher.storage.sqlite import open_store
from watcher.storage.sqlite_checkpoints import SqliteCheckpointStore

__all__ = [
    "Checkpoint",
    "CheckpointMetrics",
    "CheckpointStore",
    "Checkpointer",
    "DecisionLog",
    "KafkaCheckpointStore",
    "Offsets",
    "SCOPE_ALL",
    "SqliteCheckpointStore",
    "SpoolCollector",
    "SqliteDecisionLog",
    "SqliteSpool",
    "json_safe",
    "open_store",
]
