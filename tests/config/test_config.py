from __future__ import annotations

import pytest

from watcher.config import MASK, Settings, load_settings
from watcher.errors import ConfigError


def test_defaults_need_nothing() -> None:
    s = load_settings(environ={})
    assert s == Settings()
    assert s.kafka.bootstrap_servers == "localhost:9092"
    assert s.kafka.telemetry_topics == ("watcher.telemetry",)


def test_yaml_then_environment_then_overrides(tmp_path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("kafka:\n  bootstrap_servers: a:1\n  group_id: g1\nhttp:\n  port: 9000\n")
    s = load_settings(
        path,
        environ={
            "WATCHER_KAFKA__GROUP_ID": "g2",
            "WATCHER_HTTP__PORT": "9100",
            "WATCHER_KAFKA__TELEMETRY_TOPICS": "t1, t2",
        },
        overrides={"http.port": 9200},
    )
    assert s.kafka.bootstrap_servers == "a:1"
    assert s.kafka.group_id == "g2"
    assert s.kafka.telemetry_topics == ("t1", "t2")
    assert s.http.port == 9200


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("kafka:\n  bootstrap_server: x\n", "kafka.bootstrap_server"),  # a typo is an error, not a default
        ("http:\n  port: 70000\n", "http.port"),
        ("http:\n  port: eighty\n", "http.port"),
        ("state:\n  window_seconds: -1\n", "state.window_seconds"),
        ("kafka:\n  auto_offset_reset: middle\n", "kafka.auto_offset_reset"),
        ("kafka:\n  security_protocol: SSL_PLAIN\n", "kafka.security_protocol"),
        ("rollouts:\n  auto_start: maybe\n", "rollouts.auto_start"),
        ("rollouts:\n  auto_canary_weight: 1.5\n", "rollouts.auto_canary_weight"),
        ("kafka: 3\n", "kafka"),
        # a topic the broker would refuse only at the first write (issue #15, 3)
        ("kafka:\n  dead_letter_topic: dead letters\n", "kafka.dead_letter_topic"),
        ("kafka:\n  telemetry_topics: [ok, '..']\n", "kafka.telemetry_topics[1]"),
        ("checkpoint:\n  topic: 'a/b'\n", "checkpoint.topic"),
        ("kafka:\n  dead_letter_timeout_s: 0\n", "kafka.dead_letter_timeout_s"),
        ("spool:\n  max_bytes: 0\n", "spool.max_bytes"),
        ("shutdown_grace_s: 0.1\n", "shutdown_grace_s"),
        ("telemetry:\n  traces_exporter: otlp\n", "telemetry.otlp_endpoint"),
        ("judge:\n  policy_file: /nonexistent/policy.yaml\n", "judge.policy_file"),
        ("judge:\n  trace_link: 'https://t/{trace}'\n", "judge.trace_link"),  # not a placeholder we fill
        ("judge:\n  trace_link: 'https://t/search'\n", "judge.trace_link"),  # neither id
        ("judge:\n  examples: -1\n", "judge.examples"),
        ("log_level: LOUD\n", "log_level"),
    ],
)
def test_bad_values_fail_naming_the_field(tmp_path, text: str, field: str) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert info.value.field == field
    assert field in str(info.value)


def test_bad_environment_value_names_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"WATCHER_STATE__WINDOW_BUCKETS": "ten"})
    assert info.value.field == "state.window_buckets"


def test_not_yaml_and_missing_file(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_settings(bad, environ={})
    # one line, where and what (PyYAML's own report is four lines about a "<unicode string>")
    assert str(info.value) == (
        f"config: {bad} is not valid YAML at line 2, column 1: expected ',' or ']', but got '<stream end>'"
    )
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml", environ={})


def test_secrets_are_masked() -> None:
    s = load_settings(
        environ={
            "WATCHER_KAFKA__SASL_PLAIN_PASSWORD": "hunter2",
            "WATCHER_KAFKA__SASL_MECHANISM": "PLAIN",
            "WATCHER_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        }
    )
    plain = s.masked()
    assert plain["kafka"]["sasl_plain_password"] == MASK
    assert "hunter2" not in repr(plain)
    assert s.kafka.client_options()["sasl_plain_password"] == "hunter2"  # passed through to aiokafka
    assert plain["telemetry"]["otlp_headers"] is None  # an unset secret is shown as unset


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.http.port = 1  # type: ignore[misc]


def test_environment_text_is_read_as_the_fields_type() -> None:
    s = load_settings(
        environ={
            "WATCHER_ROLLOUTS__AUTO_START": "no",
            "WATCHER_CHECKPOINT__ENABLED": "off",
            "WATCHER_STATE__ALLOWED_LATENESS_S": "null",
            "WATCHER_JUDGE__EVALUATE_EVERY_S": "2.5",
            "WATCHER_KAFKA__DEPLOYMENTS_TOPICS": "",  # an empty list
            "WATCHER_HTTP__ADVERTISED_URL": "",  # an optional field unset
        }
    )
    assert s.rollouts.auto_start is False and s.checkpoint.enabled is False
    assert s.state.allowed_lateness_s is None and s.judge.evaluate_every_s == 2.5
    assert s.kafka.deployments_topics == () and s.http.advertised_url is None
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"WATCHER_KAFKA__MAX_BATCH_RECORDS": "0"})
    assert (info.value.field, info.value.message) == (
        "kafka.max_batch_records",
        "must be >= 1, got '0' (from the environment variable WATCHER_KAFKA__MAX_BATCH_RECORDS)",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"WATCHER_KAFKA__NOPE": "1"})
    assert info.value.field == "kafka.nope" and "bootstrap_servers" in info.value.message


def test_in_the_file_a_value_keeps_its_yaml_type(tmp_path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("kafka:\n  group_id: 123\n")  # a number where a string is expected: not guessed
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert (info.value.field, info.value.message) == ("kafka.group_id", "expected a string, got 123")


def test_a_secret_is_never_shown_in_an_error() -> None:
    for name, value in [("WATCHER_HTTP__AUTH_TOKEN", "hunter2"), ("WATCHER_KAFKA__SASL_PLAIN_PASSWORD", "")]:
        try:
            load_settings(environ={name: value, "WATCHER_HTTP__READ_TOKEN": "short-token"})
        except ConfigError as exc:
            assert exc.field in ("http.auth_token", "http.read_token")
            assert "hunter2" not in str(exc) and "short-token" not in str(exc)
        else:
            raise AssertionError("a short token was accepted")


def test_sinks_are_kept_as_written_and_their_names_checked_at_load() -> None:
    entry = {"name": "hook", "type": "webhook", "url": "https://h", "hmac_secret": "s3cret"}
    s = load_settings(environ={}, overrides={"sinks": [entry]})
    assert s.sinks == (entry,)
    assert s.masked()["sinks"] == [{"name": "hook", "type": "webhook"}]  # nothing that may be a secret
    for sinks, field in [
        ([{"type": "otel"}], "sinks[0].name"),
        ([{"name": "a b", "type": "otel"}], "sinks[0].name"),
        ([{"name": "a", "type": "otel"}, {"name": "a", "type": "otel"}], "sinks[1].name"),
        ([{"name": "a"}], "sinks[a].type"),
        (["webhook"], "sinks[0]"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_settings(environ={}, overrides={"sinks": sinks})
        assert info.value.field == field, sinks


def test_a_mistake_in_an_environment_variable_names_the_variable() -> None:
    # "nope: unknown setting" alone sends a person looking through a YAML file that has no "nope"
    for environ, field in (
        ({"WATCHER_NOPE": "1"}, "nope"),
        ({"WATCHER_HTTP__PORT": "eighty"}, "http.port"),
        ({"WATCHER_KAFKA__BOOTSTRAP_SERVERS": "h:0x"}, "kafka.bootstrap_servers"),
    ):
        with pytest.raises(ConfigError) as info:
            load_settings(None, environ=environ)
        (name,) = environ
        assert info.value.field == field
        assert str(info.value).endswith(f"(from the environment variable {name})")
    # a command-line override of the same field replaces the variable: no error, no blame
    assert (
        load_settings(None, environ={"WATCHER_HTTP__PORT": "eighty"}, overrides={"http.port": 9}).http.port
        == 9
    )
