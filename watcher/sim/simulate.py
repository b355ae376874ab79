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
from watcher.errors import ConfigError
from watcher.sim.otlp import otlp_blocks
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
    "FORMATS",
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
    "messages",
    "parse_regression",
    "produce",
    "run",
    "scenario_from_args",
    "write_jsonl",
]


FORMATS = ("json", "otlp", "otlp_proto", "otlp_json")


def write_jsonl(scenario: Scenario, path: str | Path, fmt: str = "json") -> int:
    """Write the scenario as JSON Lines (turns, or OTLP/JSON requests, and markers); returns the number
    of events (turns and markers) written."""
    n = 0
    with open(path, "wb") as f:
        for chunk in messages(scenario, _file_format(fmt)):
            f.write(b"".join(value + b"\n" for value, _, _ in chunk))
            n += sum(events for _, _, events in chunk)
    return n


def _file_format(fmt: str) -> str:
    if fmt == "otlp_proto":
        raise ConfigError(
            "simulate.format", "protobuf has no line framing in a file: use otlp (OTLP/JSON lines)"
        )
    return "otlp_json" if fmt == "otlp" else fmt


def messages(scenario: Scenario, fmt: str = "json") -> Iterator[list[tuple[bytes, bool, int]]]:
    """The scenario's messages block by block: ``(value, is_marker, events)``; ``fmt`` json (a turn per
    message) or otlp_proto / otlp_json (a trace request per message: ``watcher.sim.otlp``)."""
    if fmt == "json":
        for lines, marker_pos in blocks(scenario):
            yield [(line.encode(), i in marker_pos, 1) for i, line in enumerate(lines)]
    else:
        yield from otlp_blocks(blocks(scenario), fmt)


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


def _chunks(block: list[Any], rate: float | None) -> Iterator[list[Any]]:
    step = max(1, int(rate / 20)) if rate else len(block)  # paced: ~20 sends a second, smooth enough
    for i in range(0, len(block), step):
        yield block[i : i + step]


async def produce(
    scenario: Scenario,
    bootstrap_servers: str,
    topic: str,
    *,
    rate: float | None = None,
    deployments_topic: str | None = None,
    clock: Clock | None = None,
    fmt: str = "json",
) -> int:
    """Send the scenario to Kafka (key = agent_id); markers go to ``deployments_topic`` if given.
    ``fmt`` otlp (protobuf), otlp_proto or otlp_json: trace requests, as the Collector's Kafka exporter
    writes them. Returns the events (turns and markers) sent.

    acks=1 and no idempotence: the embedded test broker (Tansu) rejects InitProducerId. Records are
    appended to batches by hand (the partition the default partitioner picks for the key): a
    ``send()`` per record costs ~30 µs, which would cap the throughput benchmark's feed at ~30k/s.
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks=1,
        enable_idempotence=False,
        linger_ms=5 if rate else 50,
        max_batch_size=1 << 20,
        max_request_size=8 << 20,  # an OTLP request of 512 spans is ~300 KB
    )
    await producer.start()
    key = scenario.agent_id.encode()
    pacer = _Pacer(rate, clock or SystemClock())
    partitions: dict[str, int] = {}
    inflight: list[asyncio.Future[Any]] = []
    try:
        for dest in {topic, deployments_topic or topic}:
            available = sorted(await producer.partitions_for(dest))
            partitions[dest] = DefaultPartitioner()(key, available, available)
        for block in messages(scenario, "otlp_proto" if fmt == "otlp" else fmt):
            for chunk in _chunks(block, rate):
                batches = {dest: producer.create_batch() for dest in partitions}
                for value, is_marker, _ in chunk:
                    dest = deployments_topic if deployments_topic and is_marker else topic
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
                await pacer.tick(sum(events for _, _, events in chunk))
        await asyncio.gather(*inflight)
    finally:
        await producer.stop()
    return pacer.sent


async def _write_paced(
    scenario: Scenario, path: str | Path, rate: float, clock: Clock, fmt: str = "json"
) -> int:
    pacer = _Pacer(rate, clock)
    with open(path, "wb") as f:
        for block in messages(scenario, _file_format(fmt)):
            for chunk in _chunks(block, rate):
                f.write(b"".join(value + b"\n" for value, _, _ in chunk))
                f.flush()  # a follower (tail -f, FileSource) sees events as they are "produced"
                await pacer.tick(sum(events for _, _, events in chunk))
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
    out.add_argument("--bootstrap-servers", help="produce to this Kafka cluster")
    out.add_argument("--topic", default="watcher.telemetry", help="telemetry topic (default %(default)s)")
    out.add_argument("--deployments-topic", help="send markers here (default: the telemetry topic)")
    out.add_argument("--rate", type=float, help="pace output to this many events per second")
    out.add_argument(
        "--format",
        choices=FORMATS,
        default="json",
        help="json: watcher.turn/v1 events; otlp: the same turns as OpenTelemetry GenAI spans, one trace "
        "request per message (protobuf to Kafka, OTLP/JSON lines to a file); otlp_proto, otlp_json: "
        "that encoding (default %(default)s)",
    )
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


async def run(args: argparse.Namespace) -> int:
    """``watcher simulate``: returns the process exit code. Raises ConfigError on a bad combination."""
    if bool(args.out) == bool(args.bootstrap_servers):
        raise ConfigError("simulate.output", "give exactly one of --out FILE or --bootstrap-servers")
    if args.rate is not None and args.rate <= 0:
        raise ConfigError("simulate.rate", "must be > 0")
    scenario = scenario_from_args(args)
    started = time.monotonic()
    if args.out:
        if args.rate:
            n = await _write_paced(scenario, args.out, args.rate, SystemClock(), args.format)
        else:
            n = write_jsonl(scenario, args.out, args.format)
        where = args.out
    else:
        n = await produce(
            scenario,
            args.bootstrap_servers,
            args.topic,
            rate=args.rate,
            deployments_topic=args.deployments_topic,
            fmt=args.format,
        )
        where = f"{args.bootstrap_servers}/{args.topic}"
    elapsed = time.monotonic() - started
    print(
        f"simulate: {n} events ({scenario.name}, seed {scenario.seed}, expected {expected_outcome(scenario)})"
        f" to {where} in {elapsed:.1f}s",
        file=sys.stderr,
    )
    return 0
