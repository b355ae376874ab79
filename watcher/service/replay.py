"""Replay: the daemon's engine over a JSON Lines file, in event time, without Kafka.

This is how users backtest a policy on yesterday's traffic, and how the detection benchmark scores
watcher: same engine, same decisions, same decision ids as the daemon would produce.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from watcher.config import Settings, load_settings
from watcher.contract import dead_letter_record
from watcher.engine import Engine
from watcher.judges import load_policy

DEFAULT_BATCH = 1000


@dataclass
class ReplayReport:
    lines: int = 0
    turns: int = 0
    deployments: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    drift_signals: list[dict[str, Any]] = field(default_factory=list)


def _batches(path: Path, size: int) -> Iterator[tuple[list[bytes], list[str]]]:
    raws: list[bytes] = []
    origins: list[str] = []
    name = path.name
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue  # blank lines carry nothing; not an event
            raws.append(line)
            origins.append(f"{name}:{number}")
            if len(raws) >= size:
                yield raws, origins
                raws, origins = [], []
    if raws:
        yield raws, origins


def replay(
    path: str | Path,
    *,
    settings: Settings | None = None,
    policy_path: str | Path | None = None,
    batch_size: int = DEFAULT_BATCH,
    engine: Engine | None = None,
    decisions_out: IO[str] | None = None,
    dead_letters_out: IO[bytes] | None = None,
    until: Collection[str] = (),
) -> tuple[ReplayReport, Engine]:
    """The engine over ``path`` in batches of ``batch_size``. With ``until`` (decision actions, e.g.
    pause and rollback) the replay stops after the batch that made the first such decision: what
    follows cannot change that decision (the detection benchmark reads only the first stop)."""
    settings = settings or load_settings(environ={})
    if engine is None:
        policies = load_policy(policy_path) if policy_path is not None else None
        engine = Engine(settings, policies=policies, max_batch_turns=batch_size)
    report = ReplayReport()
    for raws, origins in _batches(Path(path), batch_size):
        result = engine.process(raws, origins)
        report.lines += len(raws)
        report.turns += result.turns
        report.deployments += result.deployments
        report.duplicates += result.duplicates
        for r in result.rejected:
            report.rejected[r.reason.value] += 1
            if dead_letters_out is not None:
                ts = engine.state.watermark or 0.0
                dead_letters_out.write(dead_letter_record(r, ts) + b"\n")
        for d in result.decisions:
            record = d.to_dict()
            report.decisions.append(record)
            if decisions_out is not None:
                decisions_out.write(json.dumps(record, separators=(",", ":")) + "\n")
        report.drift_signals.extend(s.to_dict() for s in result.drift_signals)
        if until and any(d.action.value in until for d in result.decisions):
            break
    return report, engine


def replay_decisions(
    path: str | Path, *, policy_path: str | Path | None = None, until: Collection[str] = ()
) -> list[dict[str, Any]]:
    """Every decision record a replay of ``path`` produces, up to the batch of the first decision
    whose action is in ``until`` (the detection benchmark's entry point)."""
    report, _ = replay(path, policy_path=policy_path, until=until)
    return report.decisions


def summary_table(engine: Engine, *, segments: bool = True) -> str:
    frame = engine.state.summary_frame()
    if frame.empty:
        return "(no turns)"
    if not segments:
        frame = frame[frame["segment"] == ""]
    frame = frame.sort_values(["agent", "environment", "segment", "version", "arm"])
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4g}")
