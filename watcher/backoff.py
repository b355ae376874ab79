"""Backoff: how long to wait before trying again, one implementation for every retry in watcher.

The Kafka source reconnecting, the dead-letter publisher resending, the outbox redelivering to a
sink and the daemon reading an unreachable checkpoint store again all wait
``initial_s * factor**(attempt - 1)``, capped at ``max_s``, minus up to ``jitter`` of it at random:
instances that fail together (a broker restart, a receiver's outage) do not retry in step, and no
wait is ever longer than the cap. A server's own hint (an HTTP ``Retry-After``) wins over the
schedule, capped at ``max_hint_s``: a receiver that asks for a day gets an hour.

``Backoff`` is the frozen schedule (a pure function of the attempt number, so the outbox can keep the
attempt count in its store); ``Retries`` counts the attempts of one operation in a row for the
callers that keep no count of their own.

>>> import random
>>> b = Backoff(initial_s=1.0, factor=2.0, max_s=5.0, jitter=0.0)
>>> [b.delay(n, random.Random(0)) for n in range(1, 6)]
[1.0, 2.0, 4.0, 5.0, 5.0]
>>> b.delay(2, random.Random(0), hint=30.0), b.delay(2, random.Random(0), hint=1e9)
(30.0, 3600.0)
>>> r = Retries(b)
>>> r.next(), r.next(), r.next()
(1.0, 2.0, 4.0)
>>> r.reset(); r.next()
1.0
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff", "Retries"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter; ``delay(attempt)`` is the wait after the ``attempt``-th failure."""

    initial_s: float = 1.0
    factor: float = 2.0
    max_s: float = 30.0
    jitter: float = 0.2  # each wait is shortened by up to this share, at random
    max_hint_s: float = 3600.0  # the longest a server's own hint (Retry-After) may make us wait

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError(f"backoff needs 0 < initial_s <= max_s, got {self.initial_s} and {self.max_s}")
        if self.factor < 1 or not 0 <= self.jitter <= 1 or self.max_hint_s < 0:
            raise ValueError(
                f"backoff needs factor >= 1, 0 <= jitter <= 1 and max_hint_s >= 0, got "
                f"{self.factor}, {self.jitter} and {self.max_hint_s}"
            )

    def delay(self, attempt: int, rng: random.Random, hint: float | None = None) -> float:
        """Seconds to wait after ``attempt`` failures in a row (1 for the first); ``hint`` wins."""
        if hint is not None:
            return min(max(0.0, hint), self.max_hint_s)
        # the exponent is bounded so a count in the thousands cannot overflow a float
        nominal = min(self.max_s, self.initial_s * self.factor ** min(max(0, attempt - 1), 64))
        return nominal * (1.0 - self.jitter * rng.random())


class Retries:
    """The failures in a row of one operation: ``next()`` is the wait before trying again,
    ``reset()`` after a success. ``rng`` is injected so tests can fix the jitter."""

    def __init__(self, backoff: Backoff, *, rng: random.Random | None = None) -> None:
        self.backoff = backoff
        self.failures = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        self.failures += 1
        return self.backoff.delay(self.failures, self._rng)

    def reset(self) -> None:
        self.failures = 0
