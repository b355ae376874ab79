"""``watcher gate``: the pre-production gate as a command, for CI/CD pipelines (docs/gate.md).

Exit status: 0 pass (promote), 1 fail (rollback), 2 inconclusive (not enough data to show either),
3 the gate could not run (an unreadable input, an option the data cannot answer, a bad policy).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from watcher.errors import ConfigError, WatcherError

EXIT_ERROR = 3

_EPILOG = """exit status: 0 pass (promote), 1 fail (rollback), 2 inconclusive (not enough data to show
either), 3 the gate could not run (unreadable input, a version or agent not in the data, bad policy).
Without --baseline/--candidate the versions come from the input's 'started' marker."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help="JSON Lines: watcher.turn/v1 turns and markers, or OTLP/JSON trace requests",
    )
    src = p.add_argument_group("a time range of a Kafka topic (instead of, or with, files)")
    src.add_argument("--topic", help="read this telemetry topic from --since to its end now")
    src.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT",
        help="Kafka (default: kafka.bootstrap_servers of the settings)",
    )
    src.add_argument(
        "--since",
        metavar="TIME",
        help="keep events from TIME on (event time): RFC 3339, Unix seconds, or a time ago: 2h, 30m, 1d",
    )
    src.add_argument("--until", metavar="TIME", help="keep events before TIME (same forms)")
    what = p.add_argument_group("what to compare")
    what.add_argument("--baseline", metavar="VERSION", help="the version in production (the control)")
    what.add_argument("--candidate", metavar="VERSION", help="the version to gate (the treatment)")
    what.add_argument("--agent", help="the agent (needed when the input holds several)")
    what.add_argument(
        "--environment", metavar="ENV", help="the gate's environment; the candidate's turns come from it"
    )
    what.add_argument(
        "--baseline-environment",
        metavar="ENV",
        help="where the baseline's turns come from (default: the gate's, e.g. prod for production telemetry)",
    )
    what.add_argument(
        "--pairing",
        choices=("auto", "paired", "unpaired"),
        default="auto",
        help="paired: both versions answered the same conversations (same conversation_id); "
        "auto (default): paired when most candidate conversations have a baseline twin",
    )
    what.add_argument(
        "--segments",
        choices=("pass", "no-fail"),
        default="pass",
        help="pass (default): a pass needs every judged segment shown non-inferior; no-fail: the overall "
        "rows must pass and no segment may fail (for data sets too small to show every segment)",
    )
    what.add_argument("--policy", help="policy YAML (default: the bundled policy)")
    out = p.add_argument_group("outputs")
    out.add_argument(
        "--decision-out", metavar="FILE", help="the watcher.decision/v1 record (JSON; - for stdout)"
    )
    out.add_argument(
        "--summary",
        metavar="FILE",
        help="Markdown summary for the job page (appended when FILE is $GITHUB_STEP_SUMMARY)",
    )
    out.add_argument("--junit", metavar="FILE", help="JUnit XML, one test case per metric x slice")
    out.add_argument(
        "--report",
        metavar="FILE",
        help="HTML report: every metric x slice against its margins, plotted (needs watcher[report])",
    )
    out.add_argument("--dead-letters-out", metavar="FILE", help="rejected input lines, with the reason")
    out.add_argument(
        "--record",
        action="append",
        default=[],
        metavar="TARGET",
        help="record the verdict as a 'gated' deployment marker for the candidate: watcher's API "
        "(http://host:port; token from WATCHER_API_TOKEN), kafka://host:port/deployments-topic, or a file",
    )
    out.add_argument("--quiet", action="store_true", help="print only the verdict line")
    p.epilog = _EPILOG
    p.usage_status = EXIT_ERROR  # type: ignore[attr-defined]  # 2 means "inconclusive" here: a usage error is 3


def run(args: argparse.Namespace) -> int:
    """The command; every error a person can make is one line on stderr and exit status 3."""
    try:
        return _run(args)
    except ConfigError as exc:
        print(f"watcher gate: {exc}", file=sys.stderr)
    except WatcherError as exc:
        print(f"watcher gate: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"watcher gate: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
    return EXIT_ERROR


def _run(args: argparse.Namespace) -> int:
    from watcher.config import load_settings
    from watcher.contract import NullOtlp, OtlpDecoder, dead_letter_record
    from watcher.judges import load_policy
    from watcher.service import (
        GateRequest,
        gate_files,
        gate_html,
        gate_junit,
        gate_kafka_range,
        gate_markdown,
        gate_marker,
        load_gate_input,
        record_marker,
        run_gate,
    )

    if not args.files and not args.topic:
        raise ConfigError("FILE", "give at least one input file, or --topic and --since")
    if args.report:
        from watcher.report import require_plotting

        require_plotting()  # before reading a topic, not after
    now = time.time()
    since = _time(args.since, now, "--since")
    until = _time(args.until, now, "--until")
    policies = load_policy(args.policy)
    request = GateRequest(
        baseline=args.baseline,
        candidate=args.candidate,
        agent=args.agent,
        environment=args.environment,
        baseline_environment=args.baseline_environment,
        pairing=args.pairing,
        segments_must_pass=args.segments == "pass",
    )
    settings = load_settings(args.config or os.environ.get("WATCHER_CONFIG"))
    sources: list[Iterable[Any]] = [gate_files(args.files)]
    if args.topic:
        if since is None:
            raise ConfigError("--since", "required with --topic (the start of the range to read)")
        bootstrap = args.bootstrap_servers or settings.kafka.bootstrap_servers
        sources.append(gate_kafka_range(bootstrap, args.topic, since))
    otlp = settings.otlp
    # OTLP trace requests read with the configured span mapping, as the daemon reads them
    spans: OtlpDecoder | NullOtlp = (
        OtlpDecoder(otlp.mapping, max_message_bytes=otlp.max_message_bytes) if otlp.enabled else NullOtlp()
    )
    data = load_gate_input(
        itertools.chain.from_iterable(sources),
        since=since,
        until=until,
        request=request,
        otlp=spans,
        max_bytes=settings.state.max_event_bytes,
    )
    gate = run_gate(data, request, policies)
    record = gate.result.decision.to_dict()
    if args.decision_out == "-":
        print(json.dumps(record, indent=2))
    elif args.decision_out:
        _write(args.decision_out, json.dumps(record, indent=2) + "\n")
    if args.summary:
        _write(args.summary, gate_markdown(gate), append=_is_step_summary(args.summary))
    if args.junit:
        Path(args.junit).write_bytes(gate_junit(gate))
    if args.report:
        _write(args.report, gate_html(gate))
    if args.dead_letters_out:
        with open(args.dead_letters_out, "wb") as fh:
            for r in data.rejections:
                fh.write(dead_letter_record(r, gate.result.decision.ts) + b"\n")
    out = sys.stderr if args.decision_out == "-" else sys.stdout
    _print(gate, quiet=args.quiet, out=out)
    if args.record:
        marker = gate_marker(gate, now)
        for target in args.record:  # a failure is exit 3: the pipeline must know the verdict was not kept
            print(
                f"recorded {marker.action} {gate.result.verdict.value} at {record_marker(marker, target)}",
                file=out,
            )
    return gate.exit_code


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _time(text: str | None, now: float, option: str) -> float | None:
    """RFC 3339 (with a zone), Unix seconds, or a time ago (90s, 30m, 2h, 1d; also -2h as --since=-2h)."""
    if text is None:
        return None
    t = text.strip()
    try:
        if t[-1:] in _UNITS:
            return now - abs(float(t[:-1])) * _UNITS[t[-1]]
        try:
            return float(t)
        except ValueError:
            stamp = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        stamp = None
    if stamp is None or stamp.tzinfo is None:
        raise ConfigError(
            option, f"expected RFC 3339 with a zone, Unix seconds or a time ago (2h, 30m, 1d), got {text!r}"
        )
    return stamp.timestamp()


def _is_step_summary(path: str) -> bool:
    env = os.environ.get("GITHUB_STEP_SUMMARY")
    return env is not None and os.path.abspath(env) == os.path.abspath(path)


def _write(path: str, text: str, *, append: bool = False) -> None:
    with open(path, "a" if append else "w", encoding="utf-8") as fh:
        fh.write(text)


def _print(gate: Any, *, quiet: bool, out: Any) -> None:
    from watcher.contract import Verdict

    d = gate.result.decision
    print(f"{gate.result.verdict.value.upper()}: {d.reason}", file=out)
    if quiet:
        return
    data = gate.input
    rejected = sum(data.rejected.values())
    print(
        f"input: {data.lines} lines, {len(data.turns)} turns, {data.duplicates} duplicates, "
        f"{rejected} rejected, {data.outside} outside the time range, {data.other} of other versions"
        + (f" {dict(sorted(data.rejected.items()))}" if rejected else ""),
        file=out,
    )
    for m in gate.result.rows:
        if m.slice == "all" or m.verdict is Verdict.FAIL:
            print(f"  {m.verdict.value:12s} {m.reason}", file=out)
    print(f"decision {d.decision_id} action={d.action.value}", file=out)
