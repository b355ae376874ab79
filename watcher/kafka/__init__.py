"""Kafka (layer: I/O). ``source``: the consumer group in batches (``KafkaSource``, ``MessageBatch``) and
``FileSource``; ``fast_fetch``: aiokafka's record batches taken whole; ``deadletter``: the
dead-letter topic (and file / null variants); ``rebalance``: what the owner of the consumed state
is told when the group moves partitions (``PartitionListener``); ``embedded``: the embedded broker
and topic creation; ``reachability``: saying once, with a hint, that no broker answers.
"""

from __future__ import annotations

from watcher.kafka.deadletter import DeadLetters, KafkaDeadLetters
from watcher.kafka.embedded import EmbeddedBroker, TopicSpec, create_topics
from watcher.kafka.reachability import ConnectionReport, KafkaClientNoise, local_broker_hint, unreachable
from watcher.kafka.rebalance import NULL_LISTENER, NullPartitionListener, PartitionListener, Partitions
from watcher.kafka.source import (
    KafkaSource,
    Message,
    MessageBatch,
    OffsetSource,
    Origins,
    Source,
    next_offsets,
)

__all__ = [
    "ConnectionReport",
    "DeadLetters",
    "EmbeddedBroker",
    "KafkaClientNoise",
    "KafkaDeadLetters",
    "KafkaSource",
    "Message",
    "MessageBatch",
    "NULL_LISTENER",
    "NullPartitionListener",
    "OffsetSource",
    "Origins",
    "PartitionListener",
    "Partitions",
    "Source",
    "TopicSpec",
    "create_topics",
    "local_broker_hint",
    "next_offsets",
    "unreachable",
]
