"""No broker answers: one WARNING with what to do, DEBUG for the retries, a reminder every minute,
INFO when it connects; never the Kafka client's ERROR plus a WARNING per retry."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from watcher.backoff import Backoff
from watcher.cli.logs import configure_logging
from watcher.clock import ManualClock
from watcher.kafka import (
    ConnectionReport,
    KafkaClientNoise,
    KafkaSource,
    OutRecord,
    RecordProducer,
    local_broker_hint,
    unreachable,
)


def test_one_warning_then_debug_then_a_reminder(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock(100.0)
    report = ConnectionReport("localhost:9092", logging.getLogger("t.reach"), remind_s=60.0, clock=clock)
    caplog.set_level(logging.DEBUG, logger="t.reach")
    for _ in range(5):
        report.failed(ConnectionRefusedError("refused"))
        clock.advance(10.0)
    levels = [r.levelno for r in caplog.records]
    assert levels == [logging.WARNING] + [logging.DEBUG] * 4
    assert "`watcher broker`" in caplog.records[0].getMessage()
    assert "`watcher demo`" in caplog.records[0].getMessage()
    clock.advance(15.0)  # 65 s after the first failure
    report.failed(ConnectionRefusedError("refused"))
    assert caplog.records[-1].levelno == logging.WARNING
    assert (
        "still cannot connect to Kafka at localhost:9092: 6 attempts in 65 s"
        in caplog.records[-1].getMessage()
    )
    report.connected()
    assert (
        caplog.records[-1].levelno == logging.INFO
        and "after 6 failed attempts" in caplog.records[-1].getMessage()
    )
    caplog.clear()
    report.failed(ConnectionRefusedError("refused"))  # a new outage is reported again
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_the_hint_only_for_this_machine() -> None:
    assert "watcher broker" in local_broker_hint("127.0.0.1:9092,localhost:9093")
    assert "watcher broker" in local_broker_hint("[::1]:9092")
    assert local_broker_hint("kafka:9092") == ""  # a remote cluster being down is not a missing local broker
    assert local_broker_hint("127.0.0.1:9092,kafka:9092") == ""
    error = unreachable("127.0.0.1:9", OSError("Unable to bootstrap from [('127.0.0.1', 9, ...)]"))
    assert error.bootstrap_servers == "127.0.0.1:9"
    assert str(error).startswith(
        "no Kafka broker answers at 127.0.0.1:9 (connection refused or no answer). Is a"
    )


async def test_a_source_without_broker_logs_one_warning(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    configure_logging("INFO")  # what `watcher run` sets up, writing to (captured) stderr
    source = KafkaSource(
        f"127.0.0.1:{port}",
        ["t"],
        "g",
        backoff=Backoff(initial_s=0.05, max_s=0.05, jitter=0.0),
        client_options={"request_timeout_ms": 500, "retry_backoff_ms": 20},
    )
    await source.start()
    batches = source.batches()
    task = asyncio.ensure_future(batches.__anext__())
    for _ in range(200):
        if source._report.failures >= 3:
            break
        await asyncio.sleep(0.05)
    await source.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert source._report.failures >= 3
    lines = capsys.readouterr().err.splitlines()
    loud = [line for line in lines if " WARNING " in line or " ERROR " in line]
    assert len(loud) == 1 and " WARNING watcher.kafka.source: cannot connect" in loud[0], lines
    assert "watcher broker" in loud[0]


async def test_a_producer_without_broker_warns_once_for_all_the_sends_retried(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    # the markers' and dead letters' producers are retried by their callers every few seconds
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    configure_logging("INFO")
    producer = RecordProducer(
        f"127.0.0.1:{port}",
        what="markers",
        client_options={"request_timeout_ms": 500, "retry_backoff_ms": 20},
    )
    record = OutRecord("watcher.deployments", None, b"{}")
    for _ in range(3):
        assert await producer.send([record]) == [record]
    await producer.stop()
    assert producer.last_error is not None and "cannot connect to Kafka" in producer.last_error
    lines = capsys.readouterr().err.splitlines()
    loud = [line for line in lines if " WARNING " in line or " ERROR " in line]
    assert len(loud) == 1, lines
    assert (
        " WARNING watcher.kafka.producer: cannot connect to Kafka (markers)" in loud[0]
        and "watcher broker" in loud[0]
    )


def test_other_client_errors_still_pass() -> None:
    noise = KafkaClientNoise()
    record = logging.LogRecord(
        "aiokafka.consumer.group_coordinator",
        logging.ERROR,
        "",
        0,
        "Heartbeat failed: %r",
        (ValueError("x"),),
        None,
    )
    assert noise.filter(record)
    record = logging.LogRecord(
        "aiokafka.client", logging.ERROR, "", 0, 'Unable connect to "%s:%s": %s', ("h", 1, OSError()), None
    )
    assert not noise.filter(record)
    record = logging.LogRecord(
        "watcher.kafka.source", logging.WARNING, "", 0, "Unable connect to %s", ("x",), None
    )
    assert noise.filter(record)  # watcher's own lines are never dropped
