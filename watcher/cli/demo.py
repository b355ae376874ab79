"""``watcher demo``: the whole loop on one machine, no external services.

Starts the embedded Kafka-compatible broker on a free loopback port, creates the topics, runs the
simulator with a canary that regresses in one segment, runs the daemon against it, and draws a live
table of rollouts, versions, metrics and decisions in the terminal. ``--duration`` stops it by itself;
Ctrl-C stops everything cleanly (the broker process cannot outlive the demo). Its files live in a
temporary folder removed at the end; ``--decision-log FILE`` keeps the decisions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from watcher.cli.broker import local_topics
from watcher.cli.process import install_stop_signals, tune_gc
from watcher.config import load_settings
from watcher.contract import Action
from watcher.engine import EngineView
from watcher.kafka import EmbeddedBroker, create_topics
from watcher.service import build_daemon
from watcher.sim import PRESETS, produce

TELEMETRY, DEPLOYMENTS, DEAD_LETTERS = "watcher.telemetry", "watcher.deployments", "watcher.deadletter"
REFRESH_S = 2.0
# what a deployer does with each decision (watcher decides; Argo Rollouts or Flagger move the traffic)
NEXT_STEP = {
    "rollback": "a deployer shifts all traffic back to {baseline} now",
    "pause": "a deployer holds {canary} at its weight until someone acknowledges or overrides",
    "promote": "a deployer sends all traffic to {canary}",
    "resume": "a deployer goes on with {canary}",
}


def decision_lines(records: list[dict[str, Any]], port: int | None) -> list[str]:
    """The decisions, oldest first, each with its agent and versions, and what a deployer does."""
    lines: list[str] = []
    agent = "<agent>"
    for r in records:
        rollout = r.get("rollout") or {}
        canary, baseline = rollout.get("canary_version") or "?", rollout.get("baseline_version") or "?"
        agent = rollout.get("agent_id", agent)
        where = f"{agent}/{rollout.get('environment', '?')}"
        reason = str(r["reason"]).removeprefix(f"{r['action']}: ")
        lines.append(f"{r['ts']}  {r['action'].upper():8s} {where} {baseline} -> {canary}: {reason}")
        step = NEXT_STEP.get(r["action"])
        if step:
            lines.append("    -> " + step.format(canary=canary, baseline=baseline))
    if lines:
        lines.append(
            f"Deployers ask GET http://127.0.0.1:{port}/v1/verdict?agent={agent} (Argo Rollouts) or "
            "the /v1/flagger/* hooks (Flagger): docs/deployers.md"
        )
    return lines


def render(
    engine: EngineView, *, elapsed: float, port: int | None, consumed: int, decisions: list[str]
) -> str:
    """The live table (pure: state in, text out)."""
    lines = [
        f"watcher demo — {elapsed:5.0f} s   API http://127.0.0.1:{port}   events consumed {consumed}",
        "",
    ]
    rollouts = engine.registry.all()
    if not rollouts:
        lines.append("waiting for the first deployment marker...")
    for r in rollouts:
        action = engine.last_action.get(r.rollout_id, Action.CONTINUE).value
        lines.append(
            f"rollout {r.rollout_id}  {r.agent_id}/{r.environment}  {r.strategy}  "
            f"{r.baseline_version} -> {r.canary_version}  weight {r.canary_weight:.2f}  "
            f"state {r.state.value}  decision {action.upper()}"
        )
    lines.append("")
    header = (
        f"{'version':10} {'arm':9} {'segment':24} {'turns':>7} {'quality':>8} {'p95 ms':>8} "
        f"{'escal.':>7} {'errors':>7} {'share':>6}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    state = engine.state
    shares: dict[tuple[str, str], dict[tuple[str, str], float]] = {}
    rows: list[tuple[Any, ...]] = []
    for key in state.keys():
        agent, env, version, arm, seg_key, seg_value = key
        if seg_key not in ("", "intent"):
            continue  # keep the screen short: overall and per intent
        snap = state.snapshot(key, "cumulative")
        share = None
        if not seg_key:
            shares.setdefault((agent, env), state.traffic_share(agent, env, "cumulative"))
            share = shares[(agent, env)].get((version, arm))
        rows.append((seg_key != "", seg_value, version, arm, snap, share))
    for _, seg_value, version, arm, snap, share in sorted(rows, key=lambda r: (r[0], r[1], r[2], r[3])):
        lines.append(
            f"{version:10} {arm:9} {('intent=' + seg_value) if seg_value else 'all':24} {snap.turns:7d} "
            f"{_fmt(snap.quality_mean, '.3f'):>8} {_fmt(snap.latency_p95_ms, '.0f'):>8} "
            f"{_fmt(snap.rates['escalation'], '.3f'):>7} {_fmt(snap.rates['error'], '.4f'):>7} "
            f"{_fmt(share, '.2f'):>6}"
        )
    lines.append("")
    lines.append("decisions:" if decisions else "decisions: none yet (evidence is accumulating)")
    lines.extend(f"  {d}" for d in decisions[-13:])
    return "\n".join(lines)


def _port_or_any(port: int) -> int:
    """The asked port if it is free, else any free one (the table shows which)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return 0
    return port


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _draw(out: TextIO, text: str) -> None:
    if out.isatty():
        out.write("\x1b[H\x1b[2J" + text + "\n")
    else:
        out.write(text + "\n\n")
    out.flush()


async def run_demo(args: argparse.Namespace, *, out: TextIO = sys.stdout) -> int:
    tune_gc()
    stop = asyncio.Event()
    install_stop_signals(stop)
    workdir = Path(tempfile.mkdtemp(prefix="watcher-demo-"))
    decision_log = Path(args.decision_log) if args.decision_log else workdir / "decisions.sqlite"
    broker = EmbeddedBroker(log_path=workdir / "broker.log")
    try:
        await broker.start()
        settings = load_settings(
            environ={},
            overrides={
                "kafka.bootstrap_servers": broker.bootstrap_servers,
                "kafka.telemetry_topics": [TELEMETRY],
                "kafka.deployments_topics": [DEPLOYMENTS],
                "kafka.dead_letter_topic": DEAD_LETTERS,
                "http.port": _port_or_any(args.http_port),
                "judge.decision_log": str(decision_log),
                "outbox.path": str(workdir / "outbox.sqlite"),
                "spool.path": str(workdir / "spool.sqlite"),
                "checkpoint.path": str(workdir / "checkpoint.sqlite"),
                "log_level": "ERROR",
            },
        )
        await create_topics(broker.bootstrap_servers, local_topics(settings, partitions=3))
        daemon = build_daemon(settings)
        daemon_task = asyncio.create_task(daemon.run(stop))
        scenario = dataclasses.replace(PRESETS["demo"], start_ts=time.time())
        # the simulated deployer writes its markers into the telemetry topic, keyed by agent like the
        # turns: one partition, so the start marker is read before the traffic it announces (markers
        # posted to the API go to the deployments topic)
        producer_task = asyncio.create_task(
            produce(scenario, broker.bootstrap_servers, TELEMETRY, rate=args.rate)
        )
        started = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=REFRESH_S)
            elapsed = time.monotonic() - started
            lines = decision_lines(list(reversed(daemon.decision_log.list(limit=20))), daemon.port)
            _draw(
                out,
                render(
                    daemon.engine,
                    elapsed=elapsed,
                    port=daemon.port,
                    consumed=daemon.events_consumed,
                    decisions=lines,
                ),
            )
            if daemon_task.done():
                break
            if args.duration is not None and elapsed >= args.duration:
                break
        stop.set()
        producer_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await producer_task
        code = await daemon_task
        kept = (
            f"decision log kept in {decision_log}"
            if args.decision_log
            else "keep the decisions with --decision-log FILE"
        )
        out.write(f"\nstopped; {kept}\n")
        return code
    finally:
        await broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
