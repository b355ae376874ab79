"""The outbox on its own: durability, ordering, retries, idempotency keys, state, queries, metrics.

Sinks here are in-process fakes (no network), so every assertion is about the outbox's contract;
tests/test_sinks*.py drive the real sinks against HTTP receivers.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.support.outbox import FAST, FakeSink
from tests.support.receivers import Running, eventually, make_decision, make_rollout, marker
from watcher.backoff import Backoff
from watcher.contract.signals import Item, ItemKind
from watcher.errors import SinkError
from watcher.outbox import Outbox
from watcher.outbox.delivery import idempotency_key
from watcher.outbox.outbox import change_item, decision_item
from watcher.sinks.base import NULL_STATE, NullSink, Request, Sent, SinkState


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "outbox.sqlite"


async def test_delivers_in_order_with_stable_idempotency_keys(db: Path) -> None:
    sink = FakeSink()
    outbox = Outbox(db, [sink], retry=FAST)
    decisions = [make_decision(i) for i in range(1, 6)]
    assert outbox.enqueue_decisions(decisions) == 5
    assert sink.calls == 0  # enqueue never sends
    async with Running(outbox):
        await eventually(lambda: len(sink.sent) == 5)
    assert [r.body["id"] for r in sink.sent] == [d.decision_id for d in decisions]
    assert [r.idempotency_key for r in sink.sent] == [
        idempotency_key(d.decision_id, "fake", "step0") for d in decisions
    ]
    assert all(d["status"] == "delivered" and d["attempts"] == 1 for d in outbox.deliveries())
    outbox.close()


async def test_enqueueing_the_same_item_again_is_a_no_op(db: Path) -> None:
    sink = FakeSink()
    outbox = Outbox(db, [sink], retry=FAST)
    d = make_decision(1)
    assert outbox.enqueue_decisions([d]) == 1
    assert outbox.enqueue_decisions([d]) == 0  # a replay re-emits the same decision_id
    async with Running(outbox):
        await eventually(lambda: len(sink.sent) == 1)
        assert outbox.enqueue_decisions([d]) == 0  # ...also once delivered
        await asyncio.sleep(0.05)
    assert len(sink.sent) == 1
    outbox.close()


async def test_filters_decide_which_sinks_get_a_delivery(db: Path) -> None:
    rollbacks = FakeSink(
        "rollbacks", accepts=lambda i: i.kind is ItemKind.DECISION and i.severity.value == "critical"
    )
    everything = FakeSink("everything")
    outbox = Outbox(db, [rollbacks, everything, NullSink()], retry=FAST)
    n = outbox.enqueue_decisions([make_decision(1, action="pause"), make_decision(2, action="rollback")])
    n += outbox.enqueue_rollout_change(
        "started", make_rollout(), 1795767000.0, marker("started", 1795767000.0)
    )
    assert n == 1 + 3
    assert {d["sink"] for d in outbox.deliveries()} == {"rollbacks", "everything"}
    assert [d["kind"] for d in outbox.deliveries(sink="rollbacks")] == ["decision"]
    outbox.close()


async def test_transient_errors_are_retried_with_retry_after_honoured(db: Path) -> None:
    sink = FakeSink()
    sink.script = [SinkError("HTTP 503"), SinkError("HTTP 429", retry_after=0.3), None]
    registry = CollectorRegistry()
    outbox = Outbox(db, [sink], retry=FAST, registry=registry)
    outbox.enqueue_decisions([make_decision(1)])
    started = time.monotonic()
    async with Running(outbox):
        await eventually(lambda: len(sink.sent) == 1)
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 1.5  # the 0.3 s Retry-After, not the 10 ms backoff
    assert sink.calls == 3
    (row,) = outbox.deliveries()
    assert row["status"] == "delivered" and row["attempts"] == 3
    assert sample(registry, "watcher_outbox_deliveries_total", sink="fake", outcome="retried") == 1
    assert sample(registry, "watcher_outbox_deliveries_total", sink="fake", outcome="throttled") == 1
    assert sample(registry, "watcher_outbox_deliveries_total", sink="fake", outcome="delivered") == 1
    outbox.close()


async def test_permanent_errors_are_not_retried_and_are_reported(db: Path) -> None:
    sink = FakeSink()
    sink.script = [SinkError("HTTP 400: invalid_payload", permanent=True)]
    registry = CollectorRegistry()
    outbox = Outbox(db, [sink], retry=FAST, registry=registry)
    outbox.enqueue_decisions([make_decision(1), make_decision(2)])
    async with Running(outbox):
        await eventually(lambda: len(sink.sent) == 1)
        await asyncio.sleep(0.05)
    assert sink.calls == 2  # the failed one once, the next one once: nothing retried
    failed = outbox.deliveries(status="failed")
    assert len(failed) == 1 and failed[0]["item_id"] == make_decision(1).decision_id
    assert failed[0]["last_error"] == "HTTP 400: invalid_payload" and failed[0]["attempts"] == 1
    assert sample(registry, "watcher_outbox_deliveries_total", sink="fake", outcome="failed_permanent") == 1
    assert sample(registry, "watcher_outbox_backlog", sink="fake") == 0
    outbox.close()


async def test_gives_up_after_the_retry_budget_in_time(db: Path) -> None:
    sink = FakeSink(retry_for_s=3600.0)
    sink.script = [SinkError("HTTP 500")] * 1000
    registry = CollectorRegistry()
    outbox = Outbox(db, [sink], retry=FAST, retry_for_s=0.3, registry=registry)  # overrides the sink's
    outbox.enqueue_decisions([make_decision(1, action="rollback")])
    started = time.monotonic()
    async with Running(outbox):
        await eventually(lambda: bool(outbox.deliveries(status="failed")))
    assert 0.3 <= time.monotonic() - started < 2.0
    (row,) = outbox.deliveries()
    assert row["last_error"].startswith("gave up after") and row["last_error"].endswith("HTTP 500")
    assert row["attempts"] == sink.calls >= 3
    # kept and visible until re-driven: the gauge the alert reads, by severity
    assert sample(registry, "watcher_outbox_failed_deliveries", sink="fake", severity="critical") == 1
    assert sample(registry, "watcher_outbox_failed_deliveries", sink="fake", severity="warning") == 0
    outbox.close()


async def test_a_short_retry_after_for_long_never_uses_up_the_budget(db: Path) -> None:
    # failure 1 of issue #15: 429 + Retry-After: 1 for 40 s used up 20 attempts in 20 s, for good
    # 60 pauses of 50 ms (3 s) against a budget of 2 s: only the time between a 429 and the next
    # attempt is not counted; the attempts' own time is (about 33 ms each is allowed on a loaded machine)
    sink = FakeSink(retry_for_s=2.0)
    sink.script = [SinkError("HTTP 429", retry_after=0.05)] * 60 + [None]
    outbox = Outbox(db, [sink], retry=FAST)
    outbox.enqueue_decisions([make_decision(1, action="rollback")])
    async with Running(outbox):
        await eventually(lambda: len(sink.sent) == 1, timeout=10.0)
    (row,) = outbox.deliveries()
    assert row["status"] == "delivered" and row["attempts"] == 61
    outbox.close()


async def test_retry_after_answers_do_not_raise_the_backoff_of_the_next_error(db: Path) -> None:
    # failure 2 of issue #15: 429s counted as attempts grew the exponent of the next plain error
    sink = FakeSink()
    sink.script = [SinkError("HTTP 429", retry_after=0.001)] * 6 + [SinkError("HTTP 500"), None]
    outbox = Outbox(db, [sink], retry=Backoff(initial_s=0.05, factor=4.0, max_s=600.0, jitter=0.0))
    outbox.enqueue_decisions([make_decision(1)])
    async with Running(outbox):
        await eventually(lambda: len(sink.sent) == 1, timeout=3.0)  # 0.05 s after the 500, not 0.05*4**6
    outbox.close()


class _Refuses(FakeSink):
    """A receiver that answers 500 to the items in ``refused`` and, while ``down``, to everything."""

    def __init__(self, refused: set[str] = frozenset(), **kw: Any) -> None:  # type: ignore[assignment]
        super().__init__(**kw)
        self.refused, self.down = set(refused), False

    async def send(self, request: Request) -> Sent:
        self.calls += 1
        if self.down or request.body["id"] in self.refused:
            raise SinkError("HTTP 500")
        self.sent.append(request)
        return Sent(status=200, state=request.body["id"])


async def test_a_delivery_that_keeps_failing_does_not_hold_back_other_rollouts(db: Path) -> None:
    poisoned = make_decision(1, action="pause", rollout_id="ro-a")
    sink = _Refuses({poisoned.decision_id})
    outbox = Outbox(db, [sink], retry=Backoff(initial_s=0.05, max_s=5.0, jitter=0.0))
    outbox.enqueue_decisions([poisoned])
    async with Running(outbox):
        await eventually(lambda: sink.calls >= 2)
        later = [make_decision(1, action="rollback", rollout_id=f"ro-{i}") for i in "bcd"]
        started = time.monotonic()
        outbox.enqueue_decisions(later)
        await eventually(lambda: len(sink.sent) == 3, timeout=2.0)
        assert time.monotonic() - started < 1.0
        # the same rollout's next decision waits behind its first: order within a rollout holds
        outbox.enqueue_decisions([make_decision(2, action="rollback", rollout_id="ro-a")])
        await asyncio.sleep(0.3)
    assert [r.body["id"] for r in sink.sent] == [d.decision_id for d in later]
    assert {d["status"] for d in outbox.deliveries(status="pending")} == {"pending"}
    assert [d["item_id"] for d in outbox.deliveries(status="pending")] == [
        make_decision(2, action="rollback", rollout_id="ro-a").decision_id,
        poisoned.decision_id,
    ]
    outbox.close()


async def test_after_an_outage_rollbacks_go_first_and_everything_goes_at_once(db: Path) -> None:
    sink = _Refuses()
    sink.down = True
    policy = Backoff(initial_s=0.02, factor=2.0, max_s=0.4, jitter=0.0)
    outbox = Outbox(db, [sink], retry=policy)
    info = [make_decision(i, action="promote", rollout_id=f"ro-p{i}") for i in range(1, 6)]
    rollbacks = [make_decision(1, action="rollback", rollout_id=f"ro-r{i}") for i in range(2)]
    outbox.enqueue_decisions(info)
    async with Running(outbox):
        await asyncio.sleep(1.0)  # every promote attempted, backoffs grown to the cap
        outbox.enqueue_decisions(rollbacks)  # never attempted before the receiver is back
        await asyncio.sleep(0.3)
        sink.down = False
        back = time.monotonic()
        await eventually(lambda: len(sink.sent) == 7, timeout=3.0)
        assert time.monotonic() - back < policy.max_s + 0.3  # the probe cap, then all at once
    assert [r.body["id"] for r in sink.sent[:2]] == [d.decision_id for d in rollbacks]
    outbox.close()


async def test_failed_deliveries_are_kept_and_can_be_re_driven_or_dismissed(db: Path) -> None:
    sink = FakeSink()
    sink.script = [SinkError("HTTP 404: no such hook", permanent=True)] * 2
    registry = CollectorRegistry()
    outbox = Outbox(db, [sink], retry=FAST, registry=registry, retain_finished=0)
    outbox.enqueue_decisions([make_decision(1, action="rollback"), make_decision(2, action="pause")])
    async with Running(outbox):
        await eventually(lambda: len(outbox.deliveries(status="failed")) == 2)
        assert sample(registry, "watcher_outbox_failed_deliveries", sink="fake", severity="critical") == 1
        failed = {d["item_id"]: d for d in outbox.deliveries(status="failed")}
        rollback = failed[make_decision(1, action="rollback").decision_id]
        pause = failed[make_decision(2, action="pause").decision_id]
        assert outbox.redrive(seq=rollback["id"]) == [rollback["id"]]
        await eventually(lambda: len(sink.sent) == 1)
        assert outbox.delivery(rollback["id"])["status"] == "delivered"
        assert outbox.dismiss(pause["id"], "receiver retired") is True
        assert outbox.dismiss(pause["id"], "twice") is False  # only a failed one
        assert outbox.redrive(seq=pause["id"]) == []
    assert sample(registry, "watcher_outbox_failed_deliveries", sink="fake", severity="critical") == 0
    assert sample(registry, "watcher_outbox_failed_deliveries", sink="fake", severity="warning") == 0
    assert outbox.delivery(pause["id"])["status"] == "dismissed"
    outbox._store.prune(0)
    assert outbox.delivery(rollback["id"]) is None
    outbox.close()


async def test_timeout_and_unexpected_exceptions_are_transient(db: Path) -> None:
    sink = FakeSink(timeout_s=0.1)
    sink.script = [5.0, ConnectionResetError("reset by peer"), None]
    outbox = Outbox(db, [sink], retry=FAST)
    outbox.enqueue_decisions([make_decision(1)])
    async with Running(outbox):
        await eventually(lambda: len(sink.sent) == 1)
    (row,) = outbox.deliveries()
    assert row["attempts"] == 3 and row["status"] == "delivered"
    outbox.close()


async def test_a_retry_does_not_repeat_requests_that_succeeded(db: Path) -> None:
    sink = FakeSink(requests_per_item=3)
    sink.script = [None, SinkError("HTTP 502"), None, None]  # step0 ok, step1 fails, then step1, step2
    outbox = Outbox(db, [sink], retry=FAST)
    outbox.enqueue_decisions([make_decision(1)])
    async with Running(outbox):
        await eventually(lambda: len(sink.sent) == 3)
    assert [r.kind for r in sink.sent] == ["step0", "step1", "step2"]
    assert outbox.deliveries()[0]["requests_done"] == ["step0", "step1", "step2"]
    outbox.close()


async def test_render_failure_is_permanent(db: Path) -> None:
    class Broken(FakeSink):
        def render(self, item: Item, state: SinkState = NULL_STATE) -> list[Request]:
            raise KeyError("rollout")

    sink = Broken()
    outbox = Outbox(db, [sink], retry=FAST)
    outbox.enqueue_decisions([make_decision(1)])
    async with Running(outbox):
        await eventually(lambda: bool(outbox.deliveries(status="failed")))
    assert "cannot render: KeyError" in outbox.deliveries()[0]["last_error"]
    outbox.close()


async def test_pending_deliveries_and_sink_state_survive_a_restart(db: Path) -> None:
    sink = FakeSink()
    sink.script = [None] + [SinkError("HTTP 503")] * 1000  # the first delivery succeeds, then the sink dies
    first = Outbox(db, [sink], retry=Backoff(initial_s=10.0, max_s=300.0, jitter=0.0))
    first.enqueue_decisions([make_decision(1), make_decision(2)])
    async with Running(first):
        await eventually(lambda: sink.calls >= 2)
    first.close()
    assert [r.body["id"] for r in sink.sent] == [make_decision(1).decision_id]

    again = FakeSink()
    second = Outbox(db, [again], retry=FAST, clock=_Shifted(20.0))  # past the 10 s backoff
    assert [d["status"] for d in second.deliveries()] == ["pending", "delivered"]
    async with Running(second):
        await eventually(lambda: len(again.sent) == 1)
        await asyncio.sleep(0.05)
    assert [r.body["id"] for r in again.sent] == [make_decision(2).decision_id]  # nothing delivered twice
    # the state the first process stored (``remember``) is what the second one renders with
    assert again.rendered_with == [make_decision(1).decision_id]
    # and the key is the one the first process used for its attempts
    assert again.sent[0].idempotency_key == idempotency_key(make_decision(2).decision_id, "fake", "step0")
    second.close()


class _Shifted:
    def __init__(self, offset: float) -> None:
        self.offset = offset

    def now(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()


async def test_run_returns_promptly_while_a_send_hangs(db: Path) -> None:
    sink = FakeSink(timeout_s=30.0)
    sink.script = [30.0]
    outbox = Outbox(db, [sink], retry=FAST)
    outbox.enqueue_decisions([make_decision(1)])
    runner = Running(outbox)
    await runner.__aenter__()
    await eventually(lambda: sink.calls == 1)
    started = time.monotonic()
    await runner.__aexit__()
    assert time.monotonic() - started < 0.5
    assert outbox.deliveries()[0]["status"] == "pending"  # sent again after the restart
    outbox.close()


async def test_metrics_backlog_oldest_age_and_latency(db: Path) -> None:
    registry = CollectorRegistry()
    sink = FakeSink()
    outbox = Outbox(db, [sink], registry=registry, retry=FAST)
    outbox.enqueue_decisions([make_decision(1), make_decision(2)])
    assert sample(registry, "watcher_outbox_backlog", sink="fake") == 2
    await asyncio.sleep(0.05)
    assert sample(registry, "watcher_outbox_oldest_pending_age_seconds", sink="fake") >= 0.05
    async with Running(outbox):
        await eventually(lambda: len(sink.sent) == 2)
    assert sample(registry, "watcher_outbox_backlog", sink="fake") == 0
    assert sample(registry, "watcher_outbox_oldest_pending_age_seconds", sink="fake") == 0
    assert sample(registry, "watcher_outbox_delivery_latency_seconds_count", sink="fake") == 2
    assert sample(registry, "watcher_outbox_delivery_latency_seconds_sum", sink="fake") >= 0.1
    outbox.close()


async def test_a_reconfigured_sink_gets_its_failed_deliveries_again(db: Path) -> None:
    broken = FakeSink("hook")
    broken.script = [SinkError("HTTP 404: wrong URL", permanent=True)]
    outbox = Outbox(db, [broken], retry=FAST)
    outbox.enqueue_decisions([make_decision(1)])
    async with Running(outbox):
        await eventually(lambda: bool(outbox.deliveries(status="failed")))
        fixed = FakeSink("hook")  # the same name with new settings: a reload with the right URL
        await outbox.replace_sinks([fixed])
        await eventually(lambda: len(fixed.sent) == 1)
    assert outbox.deliveries()[0]["status"] == "delivered"
    outbox.close()


def test_deliveries_query_filters_and_validates(db: Path) -> None:
    a, b = FakeSink("a"), FakeSink("b")
    outbox = Outbox(db, [a, b])
    outbox.enqueue_decisions([make_decision(i) for i in range(1, 4)])
    assert len(outbox.deliveries()) == 6
    assert len(outbox.deliveries(sink="a")) == 3
    assert len(outbox.deliveries(sink="a", status="pending", limit=2)) == 2
    assert outbox.deliveries(status="delivered") == []
    newest = outbox.deliveries(limit=1)[0]
    assert newest["item_id"] == make_decision(3).decision_id and newest["agent_id"] == "support-bot"
    with pytest.raises(ValueError):
        outbox.deliveries(status="lost")
    outbox.close()


def test_enqueue_is_one_fast_local_transaction(db: Path) -> None:
    sinks = [FakeSink(f"s{i}") for i in range(6)]
    outbox = Outbox(db, sinks)
    timings = []
    for i in range(1, 201):
        started = time.perf_counter()
        outbox.enqueue_decisions([make_decision(i)])
        timings.append(time.perf_counter() - started)
    timings.sort()
    assert timings[len(timings) // 2] < 0.005, f"median enqueue {timings[len(timings) // 2] * 1e3:.2f} ms"
    assert all(s.calls == 0 for s in sinks)
    outbox.close()


def test_item_ids_and_keys_are_stable() -> None:
    d = make_decision(4)
    assert decision_item(d).item_id == d.decision_id
    # inf e-values are not JSON: the record holds null, as in the decision log
    assert decision_item(d).record["evidence"][0]["statistic"] is None
    a = change_item("ended", make_rollout("rolled_back", ended=5.0), 5.0, marker("rolled_back", 5.0, "ev-9"))
    b = change_item("ended", make_rollout("rolled_back", ended=5.0), 5.0, marker("rolled_back", 5.0, "ev-9"))
    c = change_item("started", make_rollout(), 5.0, marker("started", 5.0, "ev-9"))
    assert a.item_id == b.item_id != c.item_id
    assert "markers" not in a.record["rollout"] and a.record["schema"] == "watcher.rollout_change/v1"
    assert a.severity.value == "warning" and c.severity.value == "info"
    assert Item.from_json(a.to_json()) == a
    assert idempotency_key("x", "s", "k") == idempotency_key("x", "s", "k") != idempotency_key("x", "s2", "k")
    with pytest.raises(ValueError):
        change_item("orphan", make_rollout(), 5.0)


def test_sink_names_must_be_unique(db: Path) -> None:
    with pytest.raises(ValueError):
        Outbox(db, [FakeSink("x"), FakeSink("x")])
