"""The ``watcher`` command: parses the command line and runs one subcommand.

Subcommands register here with ``set_defaults(handler=...)``; the grammar every one of them shares
(global options on either side, one-line errors, help layout, argument types) is in
``watcher.cli.parser``. Exit status: 0 done, 1 a failure while working (e.g. no broker answers),
2 a mistake in the command line or the configuration, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from watcher import __version__
from watcher.cli import configured
from watcher.cli import gate as gate_cli
from watcher.cli.broker import add_broker_command
from watcher.cli.logs import SettingsSecrets, configure_logging
from watcher.cli.parser import (
    CommandParser,
    VersionAction,
    bootstrap,
    input_file,
    output_file,
    port,
    positive_int,
)
from watcher.cli.process import install_reload_signal, stop_within, tune_gc
from watcher.config import secret_values
from watcher.errors import CheckpointLost, ConfigError, WatcherError

DISTRIBUTION = "rollout-watcher"  # the name on PyPI (the import package and the command are `watcher`)

DESCRIPTION = """\
watcher: the safety net between your deployer and your customers when you update a live AI agent.
It reads conversation telemetry from Kafka, compares each canary with its baseline and decides
pause, rollback or promote."""

EPILOG = """\
examples:
  watcher demo                                   everything on this machine, with a live table
  watcher broker                                 a local Kafka-compatible broker on 127.0.0.1:9092
  watcher run --config watcher.yaml              the daemon
  watcher check-config --config watcher.yaml     validate; print the settings, secrets masked
  watcher simulate --preset demo --out traffic.jsonl
  watcher replay traffic.jsonl                   the daemon's decisions on a file, in event time
  watcher gate pre-prod.jsonl                    CI/CD: candidate vs baseline; exit 0 pass, 1 fail

'watcher COMMAND --help' describes a command. Documentation: docs/ in the source repository."""


def _check_config(args: argparse.Namespace) -> int:
    settings = configured.settings(args)
    from watcher.judges import load_policy
    from watcher.sinks import sink_settings

    load_policy(settings.judge.policy_file)
    sinks = sink_settings(settings.sinks)  # each sink's own options, validated as start-up does
    sys.stdout.write(yaml.safe_dump(settings.masked(sinks), sort_keys=False))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from watcher.service import replay, summary_table

    settings = configured.settings(args)
    if args.report:
        from watcher.report import require_plotting

        require_plotting()  # before the replay, not after it
    out = open(args.decisions_out, "w", encoding="utf-8") if args.decisions_out else None
    dead = open(args.dead_letters_out, "wb") if args.dead_letters_out else None
    try:
        report, engine = replay(
            args.file,
            settings=settings,
            policy_path=args.policy,
            batch_size=args.batch_size,
            decisions_out=out,
            dead_letters_out=dead,
        )
    finally:
        for fh in (out, dead):
            if fh is not None:
                fh.close()
    print(summary_table(engine, segments=not args.no_segments))
    print()
    if args.report:
        from watcher.report import render

        with open(args.report, "w", encoding="utf-8") as fh:
            fh.write(render(engine.histories(), title=f"watcher replay of {args.file}"))
        print(f"report: {args.report} ({len(engine.histories())} rollout(s))")
    print(
        f"lines {report.lines}  turns {report.turns}  markers {report.deployments}  "
        f"duplicates {report.duplicates}  rejected {sum(report.rejected.values())}"
        + (f" {dict(report.rejected)}" if report.rejected else "")
    )
    for r in engine.registry.all():
        print(
            f"rollout {r.rollout_id} {r.agent_id}/{r.environment} {r.baseline_version} -> {r.canary_version} "
            f"state={r.state.value}"
        )
    for d in report.decisions:
        print(f"decision {d['ts']} {d['action']:8s} {d['reason']}")
    for s in report.drift_signals:
        print(f"drift    {s.get('ts')} {s.get('reason')}")
    return 0


async def _run(args: argparse.Namespace) -> int:
    settings = configured.settings(args)  # a mistake in the settings is told before the slow imports
    from watcher.service import ConfigSource, Daemon, build_daemon  # the daemon's imports when it runs
    from watcher.sinks import sink_settings

    tune_gc()
    source = ConfigSource(configured.config_file(args), configured.overrides(args))
    # every secret of the settings in force and of their sinks' own settings is masked in the log
    daemon: Daemon | None = None
    configure_logging(
        settings.log_level,
        SettingsSecrets(
            lambda: daemon.settings if daemon is not None else settings,
            lambda now: secret_values((now, sink_settings(now.sinks))),
        ),
    )
    stop = asyncio.Event()
    stop_within(stop, settings.shutdown_grace_s)  # before any thread: they inherit its signal mask
    daemon = build_daemon(settings, config_source=source, reset_state=args.reset_state)
    install_reload_signal(daemon.reload)  # SIGHUP: policy and sinks again, without a restart
    return await daemon.run(stop, freeze_heap=True)


def _simulate(args: argparse.Namespace) -> Any:
    from watcher.sim import run_simulate

    return run_simulate(args)


def _demo(args: argparse.Namespace) -> Any:
    from watcher.cli.demo import run_demo

    return run_demo(args)


def _version_text() -> str:
    """The version, and a warning when PyPI's unrelated ``watcher`` is installed in the same
    environment: both install a top-level ``watcher`` package and a ``watcher`` command, so the one
    installed last overwrites files of the other."""
    import importlib.metadata  # only for --version: scanning the installed distributions takes time

    text = f"watcher {__version__} ({DISTRIBUTION} on PyPI)"
    try:
        other = importlib.metadata.distribution("watcher")
    except importlib.metadata.PackageNotFoundError:
        return text
    return (
        f"{text}\nwarning: the unrelated PyPI project 'watcher' {other.version} is installed here too and "
        "shares the 'watcher' package and command: uninstall it (pip uninstall watcher) or give each "
        "its own environment"
    )


def build_parser() -> argparse.ArgumentParser:
    from watcher.sim import add_simulate_arguments

    parser = CommandParser(prog="watcher", description=DESCRIPTION, epilog=EPILOG, top=True)
    parser.add_argument(
        "--version", action=VersionAction, describe=_version_text, help="print the version and exit"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", required=True)

    run = commands.add_parser(
        "run",
        help="run the daemon against Kafka",
        description="Consume telemetry from Kafka, judge every rollout and serve the HTTP API until "
        "SIGTERM or Ctrl-C. SIGHUP reloads the configuration and the policy.",
    )
    run.add_argument(
        "--bootstrap-servers", metavar="HOST:PORT", type=bootstrap, help="override kafka.bootstrap_servers"
    )
    run.add_argument("--http-port", metavar="PORT", type=port, help="override http.port")
    run.add_argument(
        "--policy", metavar="FILE", type=input_file, help="policy YAML (default: the bundled policy)"
    )
    run.add_argument(
        "--reset-state",
        action="store_true",
        help="start from a fresh state when the checkpoint cannot be read (it is kept aside, not "
        "overwritten); without it such a start is refused",
    )
    run.set_defaults(handler=_run)

    check = commands.add_parser(
        "check-config",
        help="validate and print the effective settings (secrets masked)",
        description="Read the settings (file, WATCHER_* variables) and the policy, report the first "
        "invalid field, or print the effective settings with every secret masked.",
    )
    check.add_argument("--policy", metavar="FILE", type=input_file, help="policy YAML to check as well")
    check.set_defaults(handler=_check_config)

    rep = commands.add_parser(
        "replay",
        help="run the engine over a JSON Lines file in event time",
        description="Run the daemon's engine over a JSON Lines file of turns and markers, in event "
        "time: the same decisions the daemon would have made.",
    )
    rep.add_argument("file", type=input_file, help="JSON Lines file (watcher simulate --out writes one)")
    rep.add_argument(
        "--policy", metavar="FILE", type=input_file, help="policy YAML (default: the bundled policy)"
    )
    rep.add_argument(
        "--decisions-out",
        metavar="FILE",
        type=output_file,
        help="write every decision record here (JSON Lines)",
    )
    rep.add_argument(
        "--dead-letters-out",
        metavar="FILE",
        type=output_file,
        help="write rejected lines here (JSON Lines, with the reason)",
    )
    rep.add_argument(
        "--batch-size",
        metavar="N",
        type=positive_int,
        default=1000,
        help="lines per batch (default %(default)s)",
    )
    rep.add_argument(
        "--report",
        metavar="FILE",
        type=output_file,
        help="write an HTML report of every rollout (needs rollout-watcher[report])",
    )
    rep.add_argument("--no-segments", action="store_true", help="only the per-version rows")
    rep.set_defaults(handler=_replay)

    gate = commands.add_parser(
        "gate",
        help="pre-production gate: candidate vs baseline on a data set; exit 0 pass, 1 fail, 2 inconclusive",
        description="Compare a candidate version with a baseline on pre-production telemetry, with the "
        "live judge's metrics, segments and policy (docs/gate.md).",
    )
    gate_cli.add_arguments(gate)
    gate.set_defaults(handler=gate_cli.run)

    sim = commands.add_parser(
        "simulate",
        help="produce realistic telemetry to Kafka or a JSONL file",
        description="Generate a seeded stream of turns and deployment markers, to a file or to Kafka.",
    )
    add_simulate_arguments(sim)
    sim.set_defaults(handler=_simulate)

    demo = commands.add_parser(
        "demo",
        help="embedded broker + simulator + daemon, with a live table",
        description="Start a local broker, simulated traffic in which canary v42 hurts billing "
        "customers, and the daemon, and draw the rollout as a live table. Ctrl-C stops everything.",
    )
    demo.add_argument(
        "--duration", metavar="SECONDS", type=float, default=None, help="stop after this many seconds"
    )
    demo.add_argument(
        "--rate", type=float, default=400.0, help="simulated events per second (default %(default)s)"
    )
    demo.add_argument(
        "--http-port", metavar="PORT", type=port, default=8080, help="API port (default %(default)s)"
    )
    demo.add_argument(
        "--decision-log", metavar="FILE", type=output_file, help="keep the decision log (SQLite) in FILE"
    )
    demo.set_defaults(handler=_demo)

    add_broker_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse has said it
        return int(exc.code or 0)
    if not logging.getLogger().handlers:  # a process of its own (not a caller that set up logging)
        configure_logging("WARNING")  # until a command sets its own level (`run`: log_level)
    try:
        result = args.handler(args)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        return int(result)
    except ConfigError as exc:
        print(f"watcher {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
    except CheckpointLost as exc:
        print(
            f"watcher {args.command}: {exc}\nThe state was not started afresh, so nothing was overwritten "
            "(the unreadable rows are kept in the checkpoint file's checkpoint_quarantine table). "
            "Restore the file from a backup, or run with --reset-state to start from a fresh state.",
            file=sys.stderr,
        )
        return 1
    except WatcherError as exc:
        print(f"watcher {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
