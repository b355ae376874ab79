"""The command line as people type it: global options on either side of the command, --version,
readable help, and one-line errors with a non-zero status for every everyday mistake."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from watcher import __version__
from watcher.cli import main
from watcher.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nothing listens there


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "watcher.yaml"
    path.write_text("kafka:\n  bootstrap_servers: broker-a:9093\nhttp:\n  port: 9001\n")
    return path


def test_global_options_before_or_after_the_command(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code_after, after, _ = _run(["check-config", "--config", str(config)], capsys)
    code_before, before, _ = _run(["--config", str(config), "check-config"], capsys)
    assert code_after == code_before == 0
    assert after == before
    assert yaml.safe_load(after)["kafka"]["bootstrap_servers"] == "broker-a:9093"


def test_the_command_s_copy_of_a_global_option_wins(config: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text("{}\n")
    args = build_parser().parse_args(["--config", str(other), "check-config", "--config", str(config)])
    assert args.config == str(config)
    # not given after the command: the value before it stays (argparse would reset it to None)
    args = build_parser().parse_args(["--config", str(config), "run"])
    assert args.config == str(config)


def test_every_command_accepts_the_global_options(config: Path) -> None:
    assert {"run", "check-config", "replay", "simulate", "demo", "broker"} <= set(_commands())
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in action.choices.items():
        config_option = next(a for a in sub._actions if "--config" in a.option_strings)
        assert config_option.default is argparse.SUPPRESS, name  # never resets a value given before


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["--version"], capsys)
    assert code == 0
    assert out.startswith(f"watcher {__version__} (rollout-watcher on PyPI)")


def _commands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices)


def test_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["--help"], capsys)
    assert code == 0
    assert "``" not in out and "{run," not in out  # no reStructuredText, no argparse choice list
    for command in _commands():  # every command, also those added later
        assert f"\n  {command} " in out
    for command in _commands():
        code, out, _ = _run([command, "--help"], capsys)
        assert code == 0 and "global options (before or after the command)" in out and "``" not in out


@pytest.mark.parametrize(
    ("argv", "says", "status"),
    [
        (["replay", "nope.jsonl"], "nope.jsonl: no such file", 2),
        (["replay", "."], ". is a directory, not a file", 2),
        (["replay", "{traffic}", "--decisions-out", "missing/d.jsonl"], "folder missing does not exist", 2),
        (["replay", "{traffic}", "--dead-letters-out", "."], "is a directory", 2),
        (["replay", "{traffic}", "--batch-size", "0"], "must be at least 1", 2),
        (["run", "--bootstrap-servers", "127.0.0.1:90a"], "the port must be a number from 1 to 65535", 2),
        (["run", "--bootstrap-servers", ""], "must not be empty", 2),
        (["run", "--http-port", "eighty"], "expected a port number", 2),
        (["run", "--config", "missing.yaml"], "config: cannot read missing.yaml", 2),
        (["simulate", "--preset", "demo", "--bootstrap-servers", "127.0.0.1:90a"], "--bootstrap-servers", 2),
        (["simulate", "--preset", "demo", "--out", "missing/t.jsonl"], "folder missing does not exist", 2),
        (["simulate", "--preset", "demo"], "give exactly one of --out FILE or --bootstrap-servers", 2),
        (["simulate", "--preset", "demo", "--bootstrap-servers", "127.0.0.1:{closed}"], "watcher broker", 1),
        (["nope"], "invalid choice: 'nope'", 2),
        ([], "the following arguments are required: COMMAND", 2),
    ],
)
def test_everyday_mistakes_are_one_line_and_a_non_zero_status(
    argv: list[str], says: str, status: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WATCHER_CONFIG", raising=False)
    (tmp_path / "traffic.jsonl").write_text("")
    argv = [a.format(traffic="traffic.jsonl", closed=_closed_port()) for a in argv]
    code, out, err = _run(argv, capsys)
    assert code == status, err
    assert says in err
    assert "Traceback" not in err and out == ""
    lines = err.strip().splitlines()
    assert len(lines) <= 2 and (len(lines) == 1 or lines[1].startswith("Try 'watcher"))
    assert not (tmp_path / "missing").exists()


def test_an_api_port_in_use_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    # the daemon used to end in an OSError traceback from the HTTP server's bind
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "watcher", "run", "--bootstrap-servers", f"127.0.0.1:{_closed_port()}"]
            + ["--http-port", str(port)],
            cwd=tmp_path,
            env={k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"watcher run: configuration error: http.port: cannot listen on 127.0.0.1:{port}: the port is in "
        "use (another watcher?); choose another one (--http-port, http.port or WATCHER_HTTP__PORT; 0 "
        "picks a free one)"
    )


def test_a_missing_output_folder_fails_before_the_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the replay used to run to the end and only then fail on --decisions-out
    traffic = tmp_path / "t.jsonl"
    assert main(["simulate", "--preset", "demo", "--duration", "600", "--out", str(traffic)]) == 0
    capsys.readouterr()
    code, out, err = _run(
        ["replay", str(traffic), "--decisions-out", str(tmp_path / "no" / "d.jsonl")], capsys
    )
    assert code == 2 and out == "" and "folder" in err  # no summary table: nothing was replayed


def test_the_installed_command_and_python_m_agree() -> None:
    script = Path(sys.executable).with_name("watcher")
    for argv in ([str(script)], [sys.executable, "-m", "watcher"]):
        done = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.startswith(f"watcher {__version__}")
        done = subprocess.run([*argv, "replay", "nope.jsonl"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert done.stderr.splitlines()[0] == "watcher replay: error: argument file: nope.jsonl: no such file"


def test_the_distribution_name_is_used_everywhere() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "rollout-watcher"  # PyPI's "watcher" is a file watcher
    assert project["scripts"]["watcher"] == "watcher.__main__:main"
    texts = [
        ROOT / "README.md",
        ROOT / "deploy" / "Dockerfile",
        *sorted((ROOT / "docs").rglob("*.md")),
        *sorted((ROOT / "deploy" / "ci").glob("*.yml")),  # pipelines copied as they are
    ]
    for path in texts:
        text = path.read_text()
        for bad in ("pip install watcher", "'watcher[", '"watcher['):
            assert bad not in text, f"{path.relative_to(ROOT)} installs the wrong distribution: {bad}"
    assert "pip install /wheels/rollout_watcher-" in (ROOT / "deploy" / "Dockerfile").read_text()
    import watcher.kafka.embedded as embedded

    assert "rollout-watcher[embedded]" in embedded.__doc__
