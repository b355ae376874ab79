"""The durable outbox (layer: I/O). Items (decisions, rollout changes, drift signals) are stored in
SQLite (``store``) before anything is sent; one worker per sink delivers them with retries and
idempotency keys (``delivery``); ``metrics`` computes the backlog at scrape time.
"""

from __future__ import annotations

from watcher.outbox.outbox import Outbox, SinkSwap

__all__ = [
    "Outbox",
    "SinkSwap",
]
