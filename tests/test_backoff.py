"""The one backoff (watcher.backoff): the schedule, its jitter and cap, a server's hint, the counter."""

from __future__ import annotations

import random

import pytest

from watcher.backoff import Backoff, Retries


def test_doubling_up_to_the_cap_shortened_by_at_most_the_jitter() -> None:
    backoff = Backoff(initial_s=1.0, factor=2.0, max_s=10.0, jitter=0.2)
    rng = random.Random(7)
    for attempt in range(1, 12):
        nominal = min(10.0, 2.0 ** (attempt - 1))
        d = backoff.delay(attempt, rng)
        assert 0.8 * nominal <= d <= nominal


def test_jitter_spreads_instances_that_fail_together() -> None:
    backoff = Backoff(initial_s=1.0, max_s=30.0, jitter=0.2)
    waits = [backoff.delay(3, random.Random(seed)) for seed in range(50)]
    assert len(set(waits)) == 50 and max(waits) - min(waits) > 0.4  # 4 s spread over [3.2, 4]
    assert Backoff(jitter=0.0).delay(3, random.Random(1)) == 4.0


def test_a_servers_hint_wins_capped_and_never_negative() -> None:
    backoff = Backoff(initial_s=1.0, max_s=10.0, max_hint_s=60.0)
    rng = random.Random(0)
    assert backoff.delay(3, rng, hint=7.5) == 7.5
    assert backoff.delay(3, rng, hint=86400) == 60.0
    assert backoff.delay(3, rng, hint=-3) == 0.0


def test_thousands_of_failures_stay_at_the_cap() -> None:
    assert Backoff(initial_s=0.5, max_s=30.0, jitter=0.0).delay(5000, random.Random(0)) == 30.0


def test_retries_count_failures_in_a_row_and_start_over_after_a_success() -> None:
    retries = Retries(Backoff(initial_s=0.5, max_s=4.0, jitter=0.0))
    assert [retries.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert retries.failures == 6
    retries.reset()
    assert retries.next() == 0.5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_s": 0.0},
        {"initial_s": 5.0, "max_s": 1.0},
        {"factor": 0.5},
        {"jitter": 1.5},
        {"max_hint_s": -1},
    ],
)
def test_a_schedule_that_cannot_work_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)
