"""Storage (layer: I/O). ``checkpoint``: the engine's state parts with the offsets they cover, the
format and the stores (SQLite); ``checkpointer``: when to checkpoint, and the snapshot on the event
loop in slices, written in a worker thread; ``kafka_checkpoints``: the same store in a compacted Kafka topic;
``decisions``: the append-only decision log; ``spool``: records waiting for Kafka (dead letters,
markers), and their metrics; ``sqlite``: opening watcher's SQLite files one way.
"""

from __future__ import annotations

from watcher.storage.checkpoint import SCOPE_ALL, Checkpoint, CheckpointStore, Offsets
from watcher.storage.checkpointer import Checkpointer, CheckpointMetrics
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
