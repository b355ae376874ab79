"""Kafka (layer: I/O). ``messages``: what every source hands the engine (``Message``,
``MessageBatch``, the ``Source`` protocols) and ``FileSource``; ``source``: the consumer group in
batches (``KafkaSource``); ``fast_fetch``: aiokafka's record batches taken whole; ``deadletter``: the
dead-letter topic (and file / null variants); ``producer``: records written with acks=all, reporting
what was not acknowledged; ``turns``: turns received over OTLP/HTTP written to the telemetry topic
(``TurnWriter``); ``spool``: records Kafka would not take yet, and their forwarder;
``rebalance``: what the owner of the consumed state is told when the group moves partitions
(``PartitionListener``); ``embedded``: the embedded broker and topic creation; ``range``: a time
range of a topic read once (``watcher gate``); ``reachability``: saying once, with a hint, that no
broker answers.
"""

from __future__ import annotations

from watcher.kafka.deadletter import DeadLetters, FileDeadLetters, KafkaDeadLetters, NullDeadLetters
from watcher.kafka.embedded import EmbeddedBroker, TopicSpec, create_topics
from watcher.kafka.messages import Message, MessageBatch, OffsetSource, Origins, Source, next_offsets
from watcher.kafka.producer import OutRecord, RecordProducer
from watcher.kafka.range import read_range
from watcher.kafka.reachability import ConnectionReport, KafkaClientNoise, local_broker_hint, unreachable
from watcher.kafka.rebalance import NULL_LISTENER, NullPartitionListener, PartitionListener, Partitions
from watcher.kafka.source import KafkaSource
from watcher.kafka.spool import MemorySpool, Spool, Spooled, SpoolForwarder, SpoolStats
from watcher.kafka.turns import KafkaTurnWriter, NoTurnWriter, TurnWriter

__all__ = [
    "ConnectionReport",
    "DeadLetters",
    "EmbeddedBroker",
    "KafkaClientNoise",
    "FileDeadLetters",
    "KafkaDeadLetters",
    "KafkaSource",
    "KafkaTurnWriter",
    "Message",
    "MemorySpool",
    "MessageBatch",
    "NULL_LISTENER",
    "NoTurnWriter",
    "NullDeadLetters",
    "NullPartitionListener",
    "OffsetSource",
    "OutRecord",
    "Origins",
    "PartitionListener",
    "Partitions",
    "RecordProducer",
    "Source",
    "Spool",
    "SpoolForwarder",
    "SpoolStats",
    "Spooled",
    "TopicSpec",
    "TurnWriter",
    "create_topics",
    "local_broker_hint",
    "next_offsets",
    "read_range",
    "unreachable",
]
