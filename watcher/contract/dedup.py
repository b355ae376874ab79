"""``Deduplicator``: the bounded window of recently seen event ids (at-least-once delivery)."""

from __future__ import annotations

import operator
from typing import Any

from watcher.errors import CheckpointError

__all__ = ["Deduplicator"]


class Deduplicator:
    """A bounded window of recently seen event ids.

    Two generations of sets: when the current one reaches ``capacity`` it becomes the previous one
    and a fresh one starts, so between ``capacity`` and ``2 * capacity`` most recent ids are
    remembered at a fixed memory bound, with O(1) work per id and no per-id timestamps.

    >>> d = Deduplicator(capacity=2)
    >>> [d.seen(x) for x in ["a", "b", "a", "c", "d", "a"]]
    [False, False, True, False, False, False]
    """

    def __init__(self, capacity: int = 200_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._current: set[str] = set()
        self._previous: set[str] = set()
        self.generation = 0  # rotations so far: the previous generation changes only then

    def seen(self, event_id: str) -> bool:
        """True if ``event_id`` is in the window; otherwise records it and returns False."""
        if event_id in self._current or event_id in self._previous:
            return True
        self._current.add(event_id)
        if len(self._current) >= self.capacity:
            self._rotate()
        return False

    def _add_batch(self, ids: list[str]) -> list[bool] | None:
        """Record a batch of ids; None when all are new, else a parallel list of "is new" flags.

        Same outcome as ``[not self.seen(x) for x in ids]`` but built from set and map operations in
        C: a Python loop of ``seen`` calls would cost more than decoding. The window rotates once per
        batch here, so the current generation may overshoot ``capacity`` by at most one batch.
        """
        batch = set(ids)
        known = batch & self._previous
        if self._current:
            known |= batch & self._current
        if not known and len(batch) == len(ids):
            self._current |= batch
            flags = None
        else:
            n = len(ids)
            first = dict(zip(reversed(ids), range(n - 1, -1, -1)))  # id -> index of its first occurrence
            is_first = map(operator.eq, map(first.__getitem__, ids), range(n))
            flags = list(map(operator.gt, is_first, map(known.__contains__, ids)))  # first and not known
            self._current |= batch - known
        if len(self._current) >= self.capacity:
            self._rotate()
        return flags

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def _rotate(self) -> None:
        self._previous = self._current
        self._current = set()
        self.generation += 1

    # A checkpoint stores the two generations apart: the previous one changes only at a rotation, so
    # an incremental checkpoint writes the current generation alone most of the time.
    def current_state(self) -> dict[str, Any]:
        return {"v": 2, "capacity": self.capacity, "generation": self.generation, "ids": list(self._current)}

    def previous_state(self) -> dict[str, Any]:
        return {"generation": self.generation, "ids": list(self._previous)}

    @classmethod
    def from_parts(cls, current: dict[str, Any], previous: dict[str, Any]) -> Deduplicator:
        """The inverse of ``current_state`` and ``previous_state`` (of the same generation)."""
        try:
            if current.get("v") != 2 or current["generation"] != previous["generation"]:
                raise ValueError(f"generations {current.get('generation')} and {previous.get('generation')}")
            dedup = cls(int(current["capacity"]))
            dedup._current = set(current["ids"])
            dedup._previous = set(previous["ids"])
            dedup.generation = int(current["generation"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"deduplicator state: {e}") from e
        return dedup

    def to_state(self) -> dict[str, Any]:
        return {
            "v": 1,
            "capacity": self.capacity,
            "current": list(self._current),
            "previous": list(self._previous),
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> Deduplicator:
        if not isinstance(d, dict) or d.get("v") != 1:
            version = d.get("v") if isinstance(d, dict) else d
            raise CheckpointError(f"deduplicator state: unsupported version {version!r}")
        try:
            dedup = cls(int(d["capacity"]))
            dedup._current = {str(x) for x in d["current"]}
            dedup._previous = {str(x) for x in d["previous"]}
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"deduplicator state: {e}") from e
        return dedup
