"""How often a coroutine hands the event loop back while it runs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


def run_counting_turns(work: Awaitable[T]) -> tuple[T, int]:
    """Run ``work`` on a fresh event loop beside a task that counts its own turns: the count is how
    many times ``work`` let another task run (a step that never yields leaves it near zero)."""

    async def main() -> tuple[T, int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        result = await work
        done.set()
        await task
        return result, ticks

    return asyncio.run(main())
