"""Rebalances: what the owner of the consumed state is told when the consumer group moves partitions.

``PartitionListener`` is the owner's side, given to ``KafkaSource.start``. The listener answers
and the source acts, so the listener never needs the source (no callbacks patched onto it, no
cycle between the two when they are built):

* ``revoked``: before the group takes partitions away, the owner checkpoints their state and returns
  the offsets that state covers; the source commits them while this member still owns them;
* ``assigned``: before the first fetch, the owner restores the partitions' state and returns the
  partition numbers it could not restore yet (an unreachable checkpoint store): the source pauses
  them until ``resume_partitions``;
* ``resume_offset``: where each assigned partition resumes (the checkpoint's offset), so a
  partition is never reset to a committed offset older than its state;
* ``moved``: the source moved a partition whose position was beyond the end of its log (the broker
  came back empty or truncated) to the start or the end of that log: the state covers from there.

``NullPartitionListener`` keeps nothing: Kafka's committed offsets alone say where to resume.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol

__all__ = ["NULL_LISTENER", "NullPartitionListener", "PartitionListener", "Partitions"]

Partitions = set[tuple[str, int]]  # (topic, partition)


class PartitionListener(Protocol):
    async def revoked(self, partitions: Partitions) -> Mapping[tuple[str, int], int]:
        """The next offsets to commit for ``partitions`` before they go ({}: nothing to commit)."""
        ...

    async def assigned(
        self, partitions: Partitions, partition_counts: Mapping[str, int | None]
    ) -> Collection[int]:
        """``partition_counts``: each consumed topic's partitions (None while unknown). Returns the
        partition numbers not to fetch yet (their state is not ready)."""
        ...

    def resume_offset(self, topic: str, partition: int) -> int | None:
        """The offset an assigned partition resumes at (None: its committed offset)."""
        ...

    def moved(self, topic: str, partition: int, was: int, now: int) -> None:
        """The partition was at ``was``, beyond the end of its log, and reads from ``now`` on."""
        ...


class NullPartitionListener:
    async def revoked(self, partitions: Partitions) -> Mapping[tuple[str, int], int]:
        return {}

    async def assigned(
        self, partitions: Partitions, partition_counts: Mapping[str, int | None]
    ) -> Collection[int]:
        return ()

    def resume_offset(self, topic: str, partition: int) -> int | None:
        return None

    def moved(self, topic: str, partition: int, was: int, now: int) -> None:
        return None


NULL_LISTENER = NullPartitionListener()
