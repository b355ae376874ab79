"""Command line: ``watcher run | check-config | simulate | replay | gate | demo``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

import yaml

from watcher.cli import gate as gate_cli
from watcher.cli.process import install_reload_signal, stop_within, tune_gc
from watcher.errors import ConfigError, WatcherError


def _config_source(args: argparse.Namespace) -> Any:
    """The config file and the command-line overrides: read at start-up, and again on SIGHUP."""
    from watcher.service import ConfigSource

    overrides: dict[str, Any] = {}
    if getattr(args, "bootstrap_servers", None):
        overrides["kafka.bootstrap_servers"] = args.bootstrap_servers
    if getattr(args, "http_port", None) is not None:
        overrides["http.port"] = args.http_port
    if getattr(args, "policy", None):
        overrides["judge.policy_file"] = args.policy
    return ConfigSource(args.config or os.environ.get("WATCHER_CONFIG"), overrides)


def _settings(args: argparse.Namespace) -> Any:
    from watcher.config import load_settings

    source = _config_source(args)
    return load_settings(source.path, overrides=source.overrides)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True
    )
    logging.getLogger("aiokafka").setLevel(logging.ERROR if level != "DEBUG" else logging.DEBUG)


def _check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from watcher.judges import load_policy
    from watcher.sinks import sink_settings

    load_policy(settings.judge.policy_file)
    sinks = sink_settings(settings.sinks)  # each sink's own options, validated as start-up does
    sys.stdout.write(yaml.safe_dump(settings.masked(sinks), sort_keys=False))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from watcher.service import replay, summary_table

    settings = _settings(args)
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
    from watcher.config import load_settings
    from watcher.service import build_daemon

    tune_gc()
    source = _config_source(args)
    settings = load_settings(source.path, overrides=source.overrides)
    _logging(settings.log_level)
    stop = asyncio.Event()
    stop_within(stop, settings.shutdown_grace_s)  # before any thread: they inherit its signal mask
    daemon = build_daemon(settings, config_source=source)
    install_reload_signal(daemon.reload)  # SIGHUP: policy and sinks again, without a restart
    return await daemon.run(stop)


def build_parser() -> argparse.ArgumentParser:
    from watcher.sim import add_simulate_arguments

    parser = argparse.ArgumentParser(prog="watcher", description=__doc__)
    parser.add_argument("--config", help="YAML settings file (or WATCHER_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon against Kafka")
    run.add_argument("--bootstrap-servers", help="override kafka.bootstrap_servers")
    run.add_argument("--http-port", type=int, help="override http.port")
    run.add_argument("--policy", help="policy YAML (default: the bundled policy)")

    sub.add_parser("check-config", help="validate and print the effective settings (secrets masked)")

    rep = sub.add_parser("replay", help="run the engine over a JSON Lines file in event time")
    rep.add_argument("file")
    rep.add_argument("--policy", help="policy YAML (default: the bundled policy)")
    rep.add_argument("--decisions-out", help="write every decision record here (JSON Lines)")
    rep.add_argument("--dead-letters-out", help="write rejected lines here (JSON Lines, with the reason)")
    rep.add_argument("--batch-size", type=int, default=1000)
    rep.add_argument(
        "--report", metavar="FILE", help="write an HTML report of every rollout (needs watcher[report])"
    )
    rep.add_argument("--no-segments", action="store_true", help="only the per-version rows")

    gate = sub.add_parser(
        "gate",
        help="pre-production gate: candidate vs baseline on a data set; exit 0 pass, 1 fail, 2 inconclusive",
        description="Compare a candidate version with a baseline on pre-production telemetry, with the "
        "live judge's metrics, segments and policy (docs/gate.md).",
    )
    gate_cli.add_arguments(gate)

    sim = sub.add_parser("simulate", help="produce realistic telemetry to Kafka or a JSONL file")
    add_simulate_arguments(sim)

    demo = sub.add_parser("demo", help="embedded broker + simulator + daemon, with a live table")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument("--rate", type=float, default=400.0, help="simulated events per second")
    demo.add_argument("--http-port", type=int, default=8080)
    demo.add_argument(
        "--speedup",
        type=float,
        default=10.0,
        help="simulated seconds per real second (event time runs faster than the clock)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return asyncio.run(_run(args))
        if args.command == "check-config":
            return _check_config(args)
        if args.command == "replay":
            return _replay(args)
        if args.command == "gate":
            return gate_cli.run(args)
        if args.command == "simulate":
            from watcher.sim import run_simulate

            return asyncio.run(run_simulate(args))
        if args.command == "demo":
            from watcher.cli.demo import run_demo

            return asyncio.run(run_demo(args))
    except ConfigError as exc:
        print(f"watcher: configuration error: {exc}", file=sys.stderr)
        return 2
    except WatcherError as exc:
        print(f"watcher: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
