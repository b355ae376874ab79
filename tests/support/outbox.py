"""Helpers shared by tests (moved from test_outbox.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from watcher.backoff import Backoff
from watcher.contract.signals import Item
from watcher.sinks.base import NULL_STATE, Request, Sent, SinkState

FAST = Backoff(initial_s=0.01, factor=2.0, max_s=0.05, jitter=0.0)


class FakeSink:
    """Records what it sends; ``script`` decides per call (raise or return)."""

    def __init__(
        self,
        name: str = "fake",
        *,
        requests_per_item: int = 1,
        accepts: Callable[[Item], bool] | None = None,
        timeout_s: float = 1.0,
        retry_for_s: float = 60.0,
    ) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.retry_for_s = retry_for_s
        self.sent: list[Request] = []
        self.calls = 0
        self.script: list[Any] = []  # per call: an exception to raise, a float to sleep, or None
        self._n = requests_per_item
        self._accepts = accepts or (lambda item: True)
        self.rendered_with: list[Any] = []

    def accepts(self, item: Item) -> bool:
        return self._accepts(item)

    def render(self, item: Item, state: SinkState = NULL_STATE) -> list[Request]:
        self.rendered_with.append(state.get("seen"))
        return [
            Request(kind=f"step{i}", url="fake", body={"id": item.item_id, "step": i}, remember="seen")
            for i in range(self._n)
        ]

    async def send(self, request: Request) -> Sent:
        self.calls += 1
        action = self.script.pop(0) if self.script else None
        if isinstance(action, BaseException):
            raise action
        if isinstance(action, (int, float)):
            await asyncio.sleep(action)
        self.sent.append(request)
        return Sent(status=200, state=request.body["id"])

    async def aclose(self) -> None:
        return None
