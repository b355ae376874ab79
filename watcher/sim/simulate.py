"""``watcher simulate``: a scenario's telemetry to a JSON Lines file or to Kafka, optionally paced.

The simulator is four modules: ``watcher.sim.scenario`` (what a stream is made of), ``watcher.sim.traffic``
(the seeded generator), ``watcher.sim.presets`` (named scenarios) and this one (output and command
line). Their public names are re-exported here: ``from watcher.sim.simulate import PRESETS, generate``.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from watcher.clock import Clock, SystemClock
from watcher.config import parse_bootstrap_servers
from watcher.errors import ConfigError
from watcher.kafka import unreachable
from watcher.sim.presets import PRESETS, STRATEGY_PRESETS
from watcher.sim.scenario import (
    ARMS,
    STRATEGIES,
    ArmProfile,
    Metric,
    Mode,
    Regression,
    Scenario,
    Shape,
    expected_outcome,
)
from watcher.sim.traffic import blocks, generate

# The simulator's public names, wherever they live (callers import them from here).
__all__ = [
    "ArmProfile",
    "Metric",
    "Mode",
    "PRESETS",
    "STRATEGIES",
    "STRATEGY_PRESETS",
    "Regression",
    "Scenario",
    "Shape",
    "add_arguments",
    "expected_outcome",
    "generate",
    "parse_regression",
    "produce",
    "run",
    "scenario_from_args",
    "write_jsonl",
]


def write_jsonl(scenario: Scenario, path: str | Path) -> int:
    """Write the scenario as JSON Lines; returns the number of events written."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for lines, _ in blocks(scenario):
            f.write("\n".join(lines))
            f.write("\n")
            n += len(lines)
    return n


class _Pacer:
    """Sleeps so that ``rate`` events per second are not exceeded (None: as fast as possible)."""

    def __init__(self, rate: float | None, clock: Clock) -> None:
        self.rate, self.clock, self.sent = rate, clock, 0
        self.t0 = clock.monotonic()

    async def tick(self, n: int) -> None:
        self.sent += n
        if self.rate:
            delay = self.t0 + self.sent / self.rate - self.clock.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)


def _chunks(lines: list[str], rate: float | None) -> Iterator[tuple[int, list[str]]]:
    step = max(1, int(rate / 20)) if rate else len(lines)  # paced: ~20 sends a second, smooth enough
    for i in range(0, len(lines), step):
        yield i, lines[i : i + step]


async def produce(
    scenario: Scenario,
    bootstrap_servers: str,
    topic: str,
    *,
    rate: float | None = None,
    deployments_topic: str | None = None,
    clock: Clock | None = None,
) -> int:
    """Send the scenario to Kafka (key = agent_id); markers go to ``deployments_topic`` if given.

    acks=1 and no idempotence: the embedded test broker (Tansu) rejects InitProducerId. Records are
    appended to batches by hand (the partition the default partitioner picks for the key): a
    ``send()`` per record costs ~30 µs, which would cap the throughput benchmark's feed at ~30k/s.
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError
    from aiokafka.partitioner import DefaultPartitioner

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks=1,
        enable_idempotence=False,
        linger_ms=5 if rate else 50,
        max_batch_size=1 << 20,
    )
    try:
        await producer.start()
    except KafkaError as exc:
        await producer.stop()
        raise unreachable(bootstrap_servers, exc) from None
    key = scenario.agent_id.encode()
    pacer = _Pacer(rate, clock or SystemClock())
    partitions: dict[str, int] = {}
    inflight: list[asyncio.Future[Any]] = []
    try:
        for dest in {topic, deployments_topic or topic}:
            available = sorted(await producer.partitions_for(dest))
            partitions[dest] = DefaultPartitioner()(key, available, available)
        for lines, marker_pos in blocks(scenario):
            for offset, chunk in _chunks(lines, rate):
                batches = {dest: producer.create_batch() for dest in partitions}
                for i, line in enumerate(chunk, offset):
                    dest = deployments_topic if deployments_topic and i in marker_pos else topic
                    value = line.encode()
                    while batches[dest].append(key=key, value=value, timestamp=None) is None:
                        inflight.append(
                            await producer.send_batch(batches[dest], dest, partition=partitions[dest])
                        )
                        batches[dest] = producer.create_batch()
                for dest, batch in batches.items():
                    if batch.record_count():
                        inflight.append(await producer.send_batch(batch, dest, partition=partitions[dest]))
                # Paced: deliver now (a live demo). Unpaced: keep a few batches in flight, as the
                # broker's round trip would otherwise dominate; delivery errors surface either way.
                if rate or len(inflight) > 32:
                    keep = 0 if rate else 16
                    await asyncio.gather(*inflight[: len(inflight) - keep])
                    del inflight[: len(inflight) - keep]
                await pacer.tick(len(chunk))
        await asyncio.gather(*inflight)
    finally:
        await producer.stop()
    return pacer.sent


async def _write_paced(scenario: Scenario, path: str | Path, rate: float, clock: Clock) -> int:
    pacer = _Pacer(rate, clock)
    with open(path, "w", encoding="utf-8") as f:
        for lines, _ in blocks(scenario):
            for _, chunk in _chunks(lines, rate):
                f.write("".join(line + "\n" for line in chunk))
                f.flush()  # a follower (tail -f, FileSource) sees events as they are "produced"
                await pacer.tick(len(chunk))
    return pacer.sent


# ---------------------------------------------------------------------------------------------------
# Command line


_REGRESSION_KEYS = {"metric", "size", "start", "segment", "shape", "ramp", "mode", "slow", "arms"}


def parse_regression(text: str) -> Regression:
    """``metric=quality,size=-0.15,start=600,segment=intent:billing,shape=step``.

    Also ``size=x4`` (= mode=multiply, size=4), ``segment=intent:billing+language:de``,
    ``ramp=900``, ``slow=4`` (latency_tail), ``arms=canary|baseline|both``.
    """
    parts: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not value.strip():
            raise argparse.ArgumentTypeError(f"bad part {part!r} in {text!r}: expected key=value")
        if key not in _REGRESSION_KEYS:
            raise argparse.ArgumentTypeError(
                f"bad part {part!r} in {text!r}: unknown key {key!r} (known: "
                f"{', '.join(sorted(_REGRESSION_KEYS))})"
            )
        parts[key] = value.strip()
    if "metric" not in parts or "size" not in parts:
        raise argparse.ArgumentTypeError(f"regression {text!r} needs metric= and size=")
    kw: dict[str, Any] = {"metric": parts["metric"]}
    try:
        size = parts["size"]
        if size.lower().startswith("x"):
            kw["mode"], size = "multiply", size[1:]
        kw["size"] = float(size)
        for key, name in (("start", "start_s"), ("ramp", "ramp_s"), ("slow", "slow_factor")):
            if key in parts:
                kw[name] = float(parts[key])
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad number in regression {text!r}") from None
    for key in ("shape", "mode"):
        if key in parts:
            kw[key] = parts[key]
    if "segment" in parts:
        pairs = [p.partition(":") for p in parts["segment"].split("+")]
        if any(not k or not v for k, _, v in pairs):
            raise argparse.ArgumentTypeError(
                f"bad segment {parts['segment']!r} in {text!r}: expected key:value"
            )
        kw["segment"] = {k: v for k, _, v in pairs}
    if "arms" in parts:
        kw["arms"] = ARMS if parts["arms"] == "both" else (parts["arms"],)
    try:
        return Regression(**kw)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"bad regression {text!r}: {exc}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``watcher simulate``; unset options keep the preset's (or the default) value."""
    out = parser.add_argument_group("output (one of)")
    out.add_argument("--out", metavar="FILE", help="write JSON Lines to FILE")
    out.add_argument("--bootstrap-servers", metavar="HOST:PORT", help="produce to this Kafka cluster")
    out.add_argument("--topic", default="watcher.telemetry", help="telemetry topic (default %(default)s)")
    out.add_argument("--deployments-topic", help="send markers here (default: the telemetry topic)")
    out.add_argument("--rate", type=float, help="pace output to this many events per second")
    sc = parser.add_argument_group("scenario")
    sc.add_argument(
        "--preset", choices=sorted(PRESETS) + sorted(STRATEGY_PRESETS), help="start from a named scenario"
    )
    sc.add_argument("--strategy", choices=STRATEGIES, help="rollout strategy (default canary)")
    sc.add_argument("--switch", type=float, metavar="SECONDS", help="blue_green: the switch time")
    sc.add_argument("--seed", type=int)
    sc.add_argument("--duration", type=float, metavar="SECONDS", help="simulated seconds")
    sc.add_argument("--conversations-per-second", type=float)
    sc.add_argument("--canary-weight", type=float)
    sc.add_argument("--start", metavar="TS", help="start time: RFC 3339, Unix seconds or 'now'")
    sc.add_argument("--agent-id")
    sc.add_argument("--no-markers", action="store_true", help="emit no deployment markers")
    sc.add_argument("--implicit-arms", action="store_true", help="arm: null (the rollout resolves it)")
    sc.add_argument(
        "--regression",
        action="append",
        type=parse_regression,
        default=[],
        metavar="SPEC",
        help="repeatable; e.g. metric=quality,size=-0.15,start=600,segment=intent:billing",
    )


def _parse_start(text: str, clock: Clock) -> float:
    if text == "now":
        return float(int(clock.now()))
    try:
        return float(text)
    except ValueError:
        pass
    try:
        base, _, frac = text.rstrip("Z").partition(".")
        return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + (
            float("0." + frac) if frac else 0.0
        )
    except ValueError:
        raise ConfigError("simulate.start", f"{text!r} is not 'now', Unix seconds or RFC 3339 UTC") from None


def scenario_from_args(args: argparse.Namespace, clock: Clock | None = None) -> Scenario:
    base = {**PRESETS, **STRATEGY_PRESETS}[args.preset] if getattr(args, "preset", None) else Scenario()
    kw: dict[str, Any] = {}
    if getattr(args, "strategy", None):
        kw["strategy"] = args.strategy
    if getattr(args, "switch", None) is not None:
        kw["switch_s"] = args.switch
    for attr, name in (
        ("seed", "seed"),
        ("duration", "duration_s"),
        ("agent_id", "agent_id"),
        ("conversations_per_second", "conversations_per_s"),
        ("canary_weight", "canary_weight"),
    ):
        if getattr(args, attr, None) is not None:
            kw[name] = getattr(args, attr)
    if getattr(args, "start", None):
        kw["start_ts"] = _parse_start(args.start, clock or SystemClock())
    if getattr(args, "no_markers", False):
        kw["emit_markers"] = False
    if getattr(args, "implicit_arms", False):
        kw["explicit_arms"] = False
    if getattr(args, "regression", None):
        kw["regressions"] = base.regressions + tuple(args.regression)
    return replace(base, **kw)


def _check_writable(path: Path) -> None:
    """Before the work: a file in a folder that exists, not a folder."""
    if path.is_dir() or not str(path):
        raise ConfigError("--out", f"{str(path)!r} is a directory, not a file")
    if not path.parent.is_dir():
        raise ConfigError("--out", f"{path}: folder {path.parent} does not exist")


async def run(args: argparse.Namespace) -> int:
    """``watcher simulate``: returns the process exit code. Raises ConfigError on a bad combination."""
    if (args.out is None) == (args.bootstrap_servers is None):
        raise ConfigError("simulate.output", "give exactly one of --out FILE or --bootstrap-servers")
    if args.bootstrap_servers is not None:
        parse_bootstrap_servers(args.bootstrap_servers, "--bootstrap-servers")
    else:
        _check_writable(Path(args.out))
    if args.rate is not None and args.rate <= 0:
        raise ConfigError("simulate.rate", "must be > 0")
    scenario = scenario_from_args(args)
    started = time.monotonic()
    if args.out:
        if args.rate:
            n = await _write_paced(scenario, args.out, args.rate, SystemClock())
        else:
            n = write_jsonl(scenario, args.out)
        where = args.out
    else:
        n = await produce(
            scenario,
            args.bootstrap_servers,
            args.topic,
            rate=args.rate,
            deployments_topic=args.deployments_topic,
        )
        where = f"{args.bootstrap_servers}/{args.topic}"
    elapsed = time.monotonic() - started
    print(
        f"simulate: {n} events ({scenario.name}, seed {scenario.seed}, expected {expected_outcome(scenario)})"
        f" to {where} in {elapsed:.1f}s",
        file=sys.stderr,
    )
    return 0
