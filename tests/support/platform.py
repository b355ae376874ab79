"""A simulated platform's events as the engine takes them."""

from __future__ import annotations

from collections.abc import Iterator

from watcher.sim.platform import Platform, events


def platform_batches(platform: Platform, size: int) -> Iterator[list[bytes]]:
    """Every event of ``platform`` (``watcher simulate --agents``'s timeline), encoded, in batches of
    at least ``size`` (a timeline step is never split) and a last, smaller one."""
    batch: list[bytes] = []
    for _, lines, _ in events(platform):
        batch.extend(line.encode() for line in lines)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
