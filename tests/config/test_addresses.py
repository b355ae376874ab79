"""Kafka bootstrap addresses: every value the Kafka client cannot use fails at start-up naming the field."""

from __future__ import annotations

import pytest

from watcher.config import load_settings, parse_bootstrap_servers
from watcher.errors import ConfigError
from watcher.sinks import sink_settings


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost:9092", (("localhost", 9092),)),
        ("kafka", (("kafka", 9092),)),  # the Kafka client's default port
        (" a:1 , b.example.com:65535", (("a", 1), ("b.example.com", 65535))),
        ("10.0.0.1:19092", (("10.0.0.1", 19092),)),
        ("[::1]:9092", (("::1", 9092),)),
        ("kafka_1:9092", (("kafka_1", 9092),)),  # docker-compose service names may hold '_'
    ],
)
def test_valid_addresses(value: str, expected: tuple[tuple[str, int], ...]) -> None:
    assert parse_bootstrap_servers(value) == expected


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("127.0.0.1:90a", "port must be a number from 1 to 65535, got '90a'"),
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("a:1,,b:2", "empty entry"),
        ("a:0", "got '0'"),
        ("a:70000", "got '70000'"),
        ("a:", "got ''"),
        ("kafka://broker:9092", "is a URL"),
        ("bro ker:9092", "is not a host name"),
        ("[::1:9092", "is not [ipv6-address]:port"),
    ],
)
def test_invalid_addresses_name_the_field_and_the_fault(value: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_bootstrap_servers(value)
    assert err.value.field == "kafka.bootstrap_servers"
    assert says in err.value.message


def test_settings_reject_them_from_every_source(tmp_path) -> None:
    # an empty variable used to become localhost:9092 without a word
    with pytest.raises(ConfigError, match=r"kafka.bootstrap_servers: must not be empty"):
        load_settings(environ={"WATCHER_KAFKA__BOOTSTRAP_SERVERS": ""})
    path = tmp_path / "w.yaml"
    path.write_text("kafka:\n  bootstrap_servers: '127.0.0.1:90a'\n")
    with pytest.raises(ConfigError, match=r"kafka.bootstrap_servers: .*90a"):
        load_settings(path, environ={})
    sink = {"name": "audit", "type": "kafka", "bootstrap_servers": "x:y"}
    with pytest.raises(ConfigError) as err:
        sink_settings([sink])  # the sinks' own settings, validated at start-up and by check-config
    assert err.value.field == "sinks[audit].bootstrap_servers"
