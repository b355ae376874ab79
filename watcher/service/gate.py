"""``watcher gate``: a candidate against a baseline on pre-production telemetry, one verdict.

Inputs are decoded by the event contract exactly as the daemon decodes them (malformed lines are
counted by reason, never silently dropped; duplicates are ignored); the turns of the two versions
are selected, reduced to the live judges' per-conversation sums (``judges.build_sample``) and
judged once with fixed-sample tests (``judges.evaluate`` / ``judges.gate_decision``). What comes
out is a ``watcher.decision/v1`` record (action ``promote``, ``rollback`` or ``inconclusive``), the
summary and JUnit renderings (``watcher.service.gate_report``) and, if asked, a ``gated``
deployment marker that tells the live watcher what this version passed before production.

Sources plug in as iterables of raw message batches with their origins (``gate_files``, a Kafka time
range from ``watcher.kafka.read_range``); each message is recognised as the daemon recognises it: a
turn or marker, or an OTLP trace request (protobuf or OTLP/JSON) whose turn spans become turns.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from watcher.contract import (
    Deduplicator,
    Deployment,
    NullOtlp,
    OtlpDecoder,
    Rejected,
    RolloutRef,
    Turn,
    TurnColumns,
    Verdict,
    decode_batch,
)
from watcher.errors import ConfigError, SourceError
from watcher.judges import (
    GATE_STRATEGY,
    GateResult,
    PolicySet,
    build_sample,
    evaluate,
    gate_decision,
    gate_id,
)
from watcher.kafka import read_range

__all__ = [
    "EXIT_CODES",
    "GateInput",
    "GateRequest",
    "GateRun",
    "gate_files",
    "gate_kafka_range",
    "load_gate_input",
    "run_gate",
]

# The command's exit status per verdict; 3: the gate could not run (bad input or options).
EXIT_CODES = {Verdict.PASS: 0, Verdict.FAIL: 1, Verdict.INCONCLUSIVE: 2}
_BATCH = 5000
_AUTO_PAIR_SHARE = 0.5  # "auto" pairs when at least this share of candidate conversations has a twin

Batch = tuple[list[bytes], list[str]]


@dataclass(frozen=True, slots=True)
class GateRequest:
    """What to compare (None: found in the data) and how."""

    baseline: str | None = None
    candidate: str | None = None
    agent: str | None = None
    environment: str | None = None  # the gate's environment: the candidate's turns come from it
    baseline_environment: str | None = None  # default: the gate's, else the baseline's only one
    pairing: str = "auto"  # auto | paired | unpaired
    segments_must_pass: bool = True  # False: only the overall rows must pass; segments must not fail


@dataclass
class GateInput:
    """Everything decoded from the sources, in input order."""

    turns: list[Turn] = field(default_factory=list)
    markers: list[Deployment] = field(default_factory=list)
    lines: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    rejections: list[Rejected] = field(default_factory=list)  # kept for --dead-letters-out
    outside: int = 0  # valid events whose ts is outside the requested time range (not compared)
    other: int = 0  # turns of versions (or agents) the request leaves out, dropped while loading
    digest: str = ""  # sha256 of every message, in order: the run's identity


@dataclass(frozen=True, slots=True)
class GateRun:
    result: GateResult
    agent: str
    environment: str
    baseline_environment: str
    baseline: str
    candidate: str
    paired: bool
    counts: dict[str, int]
    input: GateInput

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.result.verdict]


def gate_files(paths: Sequence[str | Path], batch_size: int = _BATCH) -> Iterator[Batch]:
    """Batches of the lines of JSON Lines files (``file:line`` origins; blank lines skipped): turns and
    markers, or OTLP/JSON trace requests (the Collector's file exporter), which ``load_gate_input``
    expands."""
    for path in map(Path, paths):
        try:
            fh = path.open("rb")
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
        with fh:
            raws: list[bytes] = []
            origins: list[str] = []
            for number, line in enumerate(fh, start=1):
                line = line.rstrip(b"\r\n")
                if not line.strip():
                    continue
                raws.append(line)
                origins.append(f"{path.name}:{number}")
                if len(raws) >= batch_size:
                    yield raws, origins
                    raws, origins = [], []
            if raws:
                yield raws, origins


def gate_kafka_range(
    bootstrap_servers: str, topic: str, since: float, *, client_options: dict[str, Any] | None = None
) -> Iterator[Batch]:
    """The records of ``topic`` from about ``since`` to its end now, as batches (``kafka.read_range``);
    ``load_gate_input(..., since=, until=)`` keeps the events of the range by their own ``ts``."""
    values, origins = asyncio.run(read_range(bootstrap_servers, topic, since, client_options=client_options))
    for i in range(0, len(values), _BATCH):
        yield values[i : i + _BATCH], origins[i : i + _BATCH]


def load_gate_input(
    batches: Iterable[Batch],
    *,
    since: float | None = None,
    until: float | None = None,
    request: GateRequest | None = None,
    otlp: OtlpDecoder | NullOtlp | None = None,
    max_bytes: int = 65_536,
) -> GateInput:
    """Decode every batch with the event contract (as the daemon does) into one ``GateInput``;
    events outside ``[since, until)`` (event time) are counted in ``outside`` and left out, and so
    are, in ``other``, turns of versions or agents a ``request`` naming both versions leaves out (a
    busy topic need not be held in memory). OTLP trace requests (protobuf or JSON) become turns with
    ``otlp``'s span mapping, as in the daemon (default: the GenAI conventions); their broken spans are
    rejections like any other."""
    out = GateInput()
    dedup = Deduplicator(1 << 30)  # the whole input is one window: every repeated id is a duplicate
    h = hashlib.sha256()
    wanted = _wanted(request)
    spans = otlp if otlp is not None else OtlpDecoder()
    for lines, line_origins in batches:
        h.update(b"\n".join(lines) + b"\n")
        out.lines += len(lines)
        raws: Sequence[bytes] = lines
        origins: Sequence[str] | None = line_origins
        expanded = spans.expand(lines, line_origins)
        if expanded is not None:
            out.rejections.extend(expanded.rejected)
            for r in expanded.rejected:
                out.rejected[r.reason.value] += 1
            raws, origins = expanded.raws, expanded.origins
        batch = decode_batch(raws, dedup, origins=origins, max_bytes=max_bytes, columnar=False)
        turns, markers = list(batch.turns), batch.deployments
        if wanted is not None:
            n = len(turns)
            turns = [t for t in turns if wanted(t)]
            out.other += n - len(turns)
        if since is not None or until is not None:
            lo, hi = since if since is not None else -math.inf, until if until is not None else math.inf
            n = len(turns) + len(markers)
            turns = [t for t in turns if lo <= t.ts < hi]
            markers = [m for m in markers if lo <= m.ts < hi]
            out.outside += n - len(turns) - len(markers)
        out.turns.extend(turns)
        out.markers.extend(markers)
        out.duplicates += batch.duplicates
        for r in batch.rejected:
            out.rejected[r.reason.value] += 1
        out.rejections.extend(batch.rejected)
    out.digest = h.hexdigest()
    return out


def _wanted(request: GateRequest | None) -> Any:
    if request is None or request.baseline is None or request.candidate is None:
        return None
    versions, agent = {request.baseline, request.candidate}, request.agent
    return lambda t: t.version in versions and (agent is None or t.agent_id == agent)


def run_gate(data: GateInput, request: GateRequest, policies: PolicySet) -> GateRun:
    """Select the two versions' turns, reduce them and judge them with the agent's policy in the
    gate's environment (per-agent overrides apply as in the daemon); raises ``ConfigError`` naming
    the option when the data cannot answer the request (a version or agent that is not there)."""
    if not data.turns:
        outside = f", {data.outside} outside the time range" if data.outside else ""
        outside += f", {data.other} of other versions or agents" if data.other else ""
        raise ConfigError("FILE", f"no turns in the input ({data.lines} lines, {_rejects(data)}{outside})")
    agent = _agent(data, request)
    baseline, candidate, strategy = _versions(data, request, agent)
    turns = [t for t in data.turns if t.agent_id == agent]
    env = _environment(turns, candidate, request.environment, "--environment")
    base_env = request.baseline_environment or (
        env if any(t.version == baseline and t.environment == env for t in turns) else None
    )
    base_env = _environment(turns, baseline, base_env, "--baseline-environment")
    selected = [
        t
        for t in turns
        if (t.version == candidate and t.environment == env)
        or (t.version == baseline and t.environment == base_env)
    ]
    cols = TurnColumns(selected)
    treatment = np.fromiter((t.version == candidate for t in selected), bool, len(selected))
    turn_no = np.fromiter((t.turn for t in selected), np.int64, len(selected))
    paired = _paired(request.pairing, strategy, cols, treatment)
    policy = policies.for_agent(agent, env)
    sample = build_sample(cols, treatment, turn_no, policy, paired=paired)
    rows = evaluate(sample, policy)
    ref = RolloutRef(
        gate_id(agent, env, baseline, candidate, data.digest),
        agent,
        env,
        GATE_STRATEGY,
        baseline,
        candidate,
    )
    ts = float(cols.ts.max())
    result = gate_decision(rows, sample, policy, ref, ts, segments_must_pass=request.segments_must_pass)
    return GateRun(result, agent, env, base_env, baseline, candidate, paired, sample.counts, data)


def _rejects(data: GateInput) -> str:
    if not data.rejected:
        return "none rejected"
    return "rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(data.rejected.items()))


def _agent(data: GateInput, request: GateRequest) -> str:
    agents = sorted({t.agent_id for t in data.turns})
    if request.agent is not None:
        if request.agent not in agents:
            raise ConfigError("--agent", f"no turns of agent {request.agent!r} (agents: {_list(agents)})")
        return request.agent
    if len(agents) > 1:
        raise ConfigError("--agent", f"the input holds several agents ({_list(agents)}): choose one")
    return agents[0]


def _versions(data: GateInput, request: GateRequest, agent: str) -> tuple[str, str, str | None]:
    """(baseline, candidate, strategy of the start marker that named them, if any)."""
    versions = sorted({t.version for t in data.turns if t.agent_id == agent})
    starts = [
        m
        for m in data.markers
        if m.agent_id == agent and m.action == "started" and m.baseline_version and m.canary_version
    ]
    marker = max(starts, key=lambda m: m.ts) if starts else None
    baseline = request.baseline or (marker.baseline_version if marker else None)
    candidate = request.candidate or (marker.canary_version if marker else None)
    if baseline is None or candidate is None:
        roles = _roles(data.turns, agent)
        baseline = baseline or roles.get("baseline")
        candidate = candidate or roles.get("candidate")
    if baseline is None or candidate is None:
        raise ConfigError(
            "--baseline" if baseline is None else "--candidate",
            f"not named and no 'started' marker names it: give --baseline and --candidate "
            f"(versions of {agent} in the input: {_list(versions)})",
        )
    if baseline == candidate:
        raise ConfigError("--candidate", f"the candidate is the baseline ({candidate})")
    for option, version in (("--baseline", baseline), ("--candidate", candidate)):
        if version not in versions:
            raise ConfigError(
                option, f"no turns of version {version!r} of {agent} (versions: {_list(versions)})"
            )
    named = marker is not None and (marker.baseline_version, marker.canary_version) == (baseline, candidate)
    return baseline, candidate, marker.strategy if marker is not None and named else None


def _roles(turns: Sequence[Turn], agent: str) -> dict[str, str]:
    """Versions by the arms their turns carry, when each role has exactly one version."""
    by_role: dict[str, set[str]] = {"baseline": set(), "candidate": set()}
    for t in turns:
        if t.agent_id == agent and t.arm is not None:
            by_role["baseline" if t.arm in ("baseline", "live") else "candidate"].add(t.version)
    return {role: next(iter(vs)) for role, vs in by_role.items() if len(vs) == 1}


def _environment(turns: Sequence[Turn], version: str, wanted: str | None, option: str) -> str:
    envs = sorted({t.environment for t in turns if t.version == version})
    if wanted is not None:
        if wanted not in envs:
            raise ConfigError(
                option, f"no turns of {version} in environment {wanted!r} (it has {_list(envs)})"
            )
        return wanted
    if len(envs) > 1:
        raise ConfigError(option, f"{version} has turns in several environments ({_list(envs)}): choose one")
    return envs[0]


def _paired(pairing: str, strategy: str | None, cols: TurnColumns, treatment: np.ndarray) -> bool:
    if pairing not in ("auto", "paired", "unpaired"):
        raise ConfigError("--pairing", f"expected auto, paired or unpaired, got {pairing!r}")
    if pairing != "auto":
        return pairing == "paired"
    if strategy == "shadow":
        return True
    ids = cols.conversation_id
    cand = {c for c, t in zip(ids, treatment.tolist()) if t}
    base = {c for c, t in zip(ids, treatment.tolist()) if not t}
    return bool(cand) and len(cand & base) >= _AUTO_PAIR_SHARE * len(cand)


def _list(items: Iterable[Any]) -> str:
    shown = list(itertools.islice(items, 12))
    return ", ".join(map(str, shown)) or "none"
