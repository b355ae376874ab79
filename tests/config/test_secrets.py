"""Secrets masked wherever they are printed or logged: check-config, log lines and tracebacks, the
errors a sink keeps in the outbox, configuration errors; URLs with credentials included."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from watcher.cli import main
from watcher.cli.logs import SettingsSecrets, configure_logging
from watcher.config import MASK, load_settings, mask_url, redact, secret_values
from watcher.errors import ConfigError, SinkError
from watcher.sinks import sink_settings
from watcher.sinks.base import Request
from watcher.sinks.webhook import HttpSink

SLACK_SECRET = "B0123/Xq9secretPathPart"
SECRETS = {
    "slack": f"https://hooks.slack.com/services/T0001/{SLACK_SECRET}",
    "basic_password": "pa55-w0rd-in-url",
    "query_token": "q-token-0123456789",
    "hmac": "hmac-secret-0123456789",
    "routing_key": "R0UTINGKEY0123456789",
    "grafana_token": "glsa_grafana_0123456789",
    "auth_token": "auth-token-0123456789",
    "flagger_token": "flagger-token-0123456789",
    "sasl": "sasl-password-0123456789",
    "otlp": "Authorization=Bearer otlp-0123456789",
}
CONFIG = f"""
kafka:
  security_protocol: SASL_PLAINTEXT
  sasl_mechanism: PLAIN
  sasl_plain_username: watcher
  sasl_plain_password: {SECRETS["sasl"]}
http:
  auth_token: {SECRETS["auth_token"]}
  flagger_token: {SECRETS["flagger_token"]}
telemetry:
  traces_exporter: otlp
  otlp_endpoint: https://otel:{SECRETS["basic_password"]}@collector.example.com:4318/v1/traces
  otlp_headers: "{SECRETS["otlp"]}"
sinks:
  - {{name: team, type: slack, url: "{SECRETS["slack"]}"}}
  - name: deployer
    type: webhook
    url: "https://ci:{SECRETS["basic_password"]}@deploy.example.com/hooks/watcher?token={SECRETS["query_token"]}&team=ml"
    hmac_secret: {SECRETS["hmac"]}
  - {{name: pager, type: pagerduty, routing_key: {SECRETS["routing_key"]}}}
  - {{name: grafana, type: grafana, url: "https://grafana.example.com", token: {SECRETS["grafana_token"]}}}
"""


def _leaks(text: str) -> list[str]:
    parts = [SLACK_SECRET, *(v for k, v in SECRETS.items() if k != "slack")]
    return [p for p in parts if p in text]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "watcher.yaml"
    path.write_text(CONFIG)
    return path


def test_check_config_masks_every_secret_and_url_credential(config: Path, capsys) -> None:
    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert _leaks(out) == []
    shown = yaml.safe_load(out)
    sinks = {s["name"]: s for s in shown["sinks"]}
    # what is not secret stays readable: which endpoint, which user, which parameters
    assert sinks["team"]["url"] == MASK  # a Slack webhook URL is the credential itself
    assert sinks["deployer"]["url"] == (
        f"https://ci:{MASK}@deploy.example.com/hooks/watcher?token={MASK}&team=ml"
    )
    assert sinks["deployer"]["hmac_secret"] == MASK and sinks["pager"]["routing_key"] == MASK
    assert shown["telemetry"]["otlp_endpoint"] == f"https://otel:{MASK}@collector.example.com:4318/v1/traces"
    assert shown["kafka"]["sasl_plain_username"] == "watcher"


def test_log_lines_and_tracebacks_are_masked(config: Path, capsys, restore_logging: None) -> None:
    settings = load_settings(config, environ={})
    configure_logging("INFO", secret_values((settings, sink_settings(settings.sinks))))
    log = logging.getLogger("watcher.test.secrets")
    log.warning("posting to %s failed", SECRETS["slack"])
    log.info("token %s, key %s", SECRETS["flagger_token"], SECRETS["routing_key"])
    log.warning(
        "GET http://anyone:%s@127.0.0.1:8080/v1/flagger/rollout?token=%s", "unlisted-pass", "unlisted-tok"
    )
    try:
        raise RuntimeError(f"cannot reach https://ci:{SECRETS['basic_password']}@deploy.example.com")
    except RuntimeError:
        log.exception("delivery failed")
    err = capsys.readouterr().err
    assert f"posting to {MASK} failed" in err and "delivery failed" in err  # the whole Slack URL is secret
    assert _leaks(err) == [] and "unlisted-pass" not in err and "unlisted-tok" not in err
    assert "Traceback" in err and f"https://ci:{MASK}@deploy.example.com" in err


def test_a_sink_a_reload_adds_is_masked_in_the_log(config: Path, capsys, restore_logging: None) -> None:
    # `watcher run` masks the secrets of the settings in force: a reload replaces daemon.settings
    before = load_settings(config, environ={})
    added = "NEWROUTINGKEY0123456789"
    after = load_settings(
        config, environ={}, overrides={"sinks": [{"name": "p2", "type": "pagerduty", "routing_key": added}]}
    )
    running = {"settings": before}
    configure_logging(
        "INFO",
        SettingsSecrets(
            lambda: running["settings"], lambda now: secret_values((now, sink_settings(now.sinks)))
        ),
    )
    log = logging.getLogger("watcher.test.secrets")
    log.warning("before the reload: %s", added)
    running["settings"] = after
    log.warning("after the reload: %s", added)
    err = capsys.readouterr().err
    assert f"before the reload: {added}" in err  # not a secret of the settings then
    assert f"after the reload: {MASK}" in err and err.count(added) == 1


async def test_a_sink_s_transport_error_keeps_no_credentials() -> None:
    # the HTTP client's error for a URL it cannot use quotes the whole URL; the outbox keeps that
    # text as the delivery's last_error, which GET /v1/deliveries shows
    url = f"http://ci:{SECRETS['basic_password']}@[::1/hook?token={SECRETS['query_token']}"
    (settings,) = sink_settings(
        [{"name": "deployer", "type": "webhook", "url": url, "hmac_secret": SECRETS["hmac"]}]
    )
    sink = HttpSink(settings)
    try:
        with pytest.raises(SinkError) as err:
            await sink.send(Request(kind="decision", method="POST", url=url, body={"x": 1}))
    finally:
        await sink.aclose()
    assert str(err.value) and _leaks(str(err.value)) == []


def test_configuration_errors_do_not_print_the_secret_url() -> None:
    bad = f"htps://hooks.slack.com/services/T0001/{SLACK_SECRET}"
    with pytest.raises(ConfigError) as err:
        sink_settings([{"name": "team", "type": "slack", "url": bad}])
    assert SLACK_SECRET not in str(err.value)
    typo = f"htp://ci:{SECRETS['basic_password']}@deploy.example.com/?token={SECRETS['query_token']}"
    with pytest.raises(ConfigError) as err:
        sink_settings([{"name": "deployer", "type": "webhook", "url": typo, "hmac_secret": SECRETS["hmac"]}])
    assert _leaks(str(err.value)) == [] and f"htp://ci:{MASK}@deploy.example.com" in str(err.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("https://hooks.slack.com/services/T1/B2/xyz", f"https://hooks.slack.com/services/{MASK}"),
        ("https://discord.com/api/webhooks/1/abc", f"https://discord.com/api/{MASK}"),
        ("http://u:p@h:1/x?api_key=k&x=1", f"http://u:{MASK}@h:1/x?api_key={MASK}&x=1"),
        ("http://tokenonly@h/x", f"http://{MASK}@h/x"),
        ("https://grafana/d/x?var-agent={agent_id}", "https://grafana/d/x?var-agent={agent_id}"),
        ("kafka:9092", "kafka:9092"),
        ("http://u:p4ss@[::1/x?token=t0k&a=1", f"http://u:{MASK}@[::1/x?token={MASK}&a=1"),  # unparsable
        ("not a url", "not a url"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_redact_free_text() -> None:
    text = "retry http://a:b0b0b0@h/p?sig=s1s1s1 and the key abcdefgh"
    assert redact(text, {"abcdefgh"}) == f"retry http://a:{MASK}@h/p?sig={MASK} and the key {MASK}"
