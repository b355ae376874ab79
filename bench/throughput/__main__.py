"""Throughput benchmark: watcher's full pipeline against plain aiokafka consumption, same run.

    python -m bench.throughput                 # 1,000,000 events, 3 rounds (make bench-throughput)
    python -m bench.throughput --events 200000 --rounds 1
    python -m bench.throughput --no-scanner    # watcher on msgspec alone (installed without a compiler)
    python -m bench.throughput --otlp-turns 300000   # also the same traffic as OTLP spans (0: not)

1. Start the embedded broker and produce N realistic telemetry events (~400 bytes of JSON each,
   from the simulator: several turns per conversation, 3 segment keys, a canary rollout running).
2. Each round, in fresh processes (so memory and warm caches do not carry over), consume them all:
   - baseline: a plain aiokafka consumer, ``getmany`` until every message is read, bytes only;
   - watcher:  ``KafkaSource`` + ``Engine.process`` (decode, validate, dedup, route to rollouts,
     per-series state with segments and sketches, the canary judge and drift detectors) + commit.
3. Report events per second of wall time and of the consumer's own CPU time, the ratio watcher /
   baseline, and each process's peak RSS. Medians over the rounds. Both clocks start when the first
   batch arrives: joining the consumer group (seconds on Tansu, and watcher's source connects lazily,
   inside ``batches()``) is not consumption.
4. OTLP (``--otlp-turns``): the same scenario as ``watcher simulate --format otlp`` writes it to Kafka
   (each turn an invoke_agent span with a model call and a tool call, batched per agent version like
   the SDK: up to 170 turns a message), to a topic of its own; the same two consumers read it, and
   rates are per turn. Its baseline is plain consumption of those bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

PARTITIONS = 1  # one partition, one consumer: the "one core" figure
FETCH_BYTES = 8 * 1024 * 1024  # watcher's default kafka.max_partition_fetch_bytes, for both consumers


def _scenario(events: int) -> Any:
    from watcher.sim.presets import PRESETS

    # ~3.7 turns per conversation; 200 conversations/s is a busy contact center (~740 turns/s)
    conversations_per_s = 200.0
    duration = events / (conversations_per_s * 3.7) * 0.97  # ~3.85 turns per conversation here
    return dataclasses.replace(
        PRESETS["healthy"],
        seed=7,
        duration_s=duration,
        conversations_per_s=conversations_per_s,
        daily_cycle=False,
    )


async def _produce(bootstrap: str, topic: str, events: int, fmt: str = "json") -> int:
    """Events (turns and markers) sent; ``fmt`` otlp: as trace requests."""
    from watcher.kafka.embedded import TopicSpec, create_topics
    from watcher.sim.simulate import produce

    await create_topics(bootstrap, [TopicSpec(topic, PARTITIONS)])
    return await produce(_scenario(events), bootstrap, topic, fmt=fmt)


def _usage() -> tuple[float, int]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024


async def _plain(bootstrap: str, topic: str, expected: int) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"plain-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=FETCH_BYTES,
    )
    await consumer.start()
    n = 0
    size = 0
    cpu0, t0 = 0.0, 0.0
    while n < expected or expected < 0:
        batch = await consumer.getmany(timeout_ms=500, max_records=2000)
        if batch and not n:  # the clocks start at the first batch (joining the group is not consumption)
            cpu0, _ = _usage()
            t0 = time.perf_counter()
        for tp, records in batch.items():
            n += len(records)
            size += sum(len(r.value) for r in records)
            if expected < 0:  # read to the end of the topic (one partition)
                expected = consumer.highwater(tp)
        if batch:
            await consumer.commit()
    wall = time.perf_counter() - t0
    cpu1, rss = _usage()
    await consumer.stop()
    return {
        "events": n,
        "wall_s": wall,
        "cpu_s": cpu1 - cpu0,
        "peak_rss": rss,
        "mean_bytes": size / max(n, 1),
    }


async def _watcher(bootstrap: str, topic: str, expected: int) -> dict[str, Any]:
    from watcher.config.settings import load_settings
    from watcher.engine.engine import Engine
    from watcher.kafka import KafkaSource, MessageBatch, Origins

    settings = load_settings(environ={})
    engine = Engine(settings)
    source = KafkaSource(
        bootstrap,
        [topic],
        f"watcher-{uuid.uuid4().hex[:8]}",
        max_records=2000,
        client_options={"max_partition_fetch_bytes": FETCH_BYTES},
    )
    await source.start()
    n = 0
    turns = 0
    cpu0, t0 = 0.0, 0.0
    async for batch in source.batches():
        if not n:  # as for the baseline: from the first batch on
            cpu0, _ = _usage()
            t0 = time.perf_counter()
        # MessageBatch.values: the values without a Message per record (the daemon's path once it
        # reads them too); Origins formats only the rejected messages' origins
        values = batch.values if isinstance(batch, MessageBatch) else [m.value for m in batch]
        result = engine.process(values, origins=Origins(batch))
        await source.commit(batch)
        n += len(batch)
        turns += result.turns
        if n >= expected if expected >= 0 else not any(source.lag().values()):
            break
    wall = time.perf_counter() - t0
    cpu1, rss = _usage()
    await source.stop()
    series = len(engine.state.keys())
    return {
        "events": n,
        "turns": turns,
        "wall_s": wall,
        "cpu_s": cpu1 - cpu0,
        "peak_rss": rss,
        "series": series,
        "rollouts": len(engine.registry.all()),
    }


def _child(role: str, bootstrap: str, topic: str, expected: int, no_scanner: bool = False) -> dict[str, Any]:
    env = {**os.environ}
    cmd = [
        sys.executable,
        "-m",
        "bench.throughput",
        "--role",
        role,
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--events",
        str(expected),
        *(["--no-scanner"] if no_scanner else []),
    ]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=900)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _table(results: dict[str, list[dict[str, Any]]], otlp_events: int = 0) -> str:
    """JSON rows per event (message); OTLP rows per turn (event), its own plain consumption the base."""

    def rate(r: dict[str, Any], clock: str, per: int | None) -> float:
        return (per if per is not None else r["events"]) / r[clock]

    rows = []
    groups = [("", None, "")]
    if results.get("otlp-plain"):
        groups.append(("otlp-", otlp_events, "OTLP: "))
    for prefix, per, title in groups:
        base = f"{prefix}plain"
        base_wall = statistics.median(rate(r, "wall_s", per) for r in results[base])
        base_cpu = statistics.median(rate(r, "cpu_s", per) for r in results[base])
        for role, label in (
            (base, f"{title}plain aiokafka getmany (bytes only)"),
            (f"{prefix}watcher", f"{title}watcher: source + decode + state + segments + sketches + judge"),
        ):
            wall = statistics.median(rate(r, "wall_s", per) for r in results[role])
            cpu = statistics.median(rate(r, "cpu_s", per) for r in results[role])
            rss = statistics.median(r["peak_rss"] for r in results[role]) / 2**20
            rows.append(
                f"| {label} | {wall:,.0f} | {cpu:,.0f} | {wall / base_wall:.2f} | {cpu / base_cpu:.2f} | "
                f"{rss:,.0f} MiB |"
            )
    head = (
        "| pipeline | events/s (wall) | events per CPU-s | ratio (wall) | ratio (CPU) | peak RSS |\n"
        "|---|---|---|---|---|---|"
    )
    return head + "\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument(
        "--otlp-turns",
        type=int,
        default=300_000,
        help="also the same traffic as OTLP trace requests, this many turns (0: not; default %(default)s)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--role", choices=("plain", "watcher"), help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument(
        "--no-scanner",
        action="store_true",
        help="watcher without its C scanner (msgspec alone), as installed without a compiler",
    )
    args = parser.parse_args(argv)

    if args.role:
        # both consumers run with the collector threshold the daemon sets (watcher.cli.process.tune_gc)
        from watcher.cli.main import tune_gc

        tune_gc()
        if args.no_scanner:
            from watcher.contract import columnar as decode_columnar

            decode_columnar._native = None
        run = _plain if args.role == "plain" else _watcher
        print(json.dumps(asyncio.run(run(args.bootstrap, args.topic, args.events))))
        return 0

    from watcher.kafka.embedded import EmbeddedBroker

    async def setup(broker: EmbeddedBroker) -> tuple[int, int]:
        await broker.start()
        sent = await _produce(broker.bootstrap_servers, "bench", args.events)
        otlp = (
            await _produce(broker.bootstrap_servers, "bench-otlp", args.otlp_turns, "otlp")
            if args.otlp_turns
            else 0
        )
        return sent, otlp

    broker = EmbeddedBroker()
    loop = asyncio.new_event_loop()
    try:
        t0 = time.perf_counter()
        sent, otlp = loop.run_until_complete(setup(broker))
        print(
            f"produced {sent:,} events and {otlp:,} as OTLP spans in {time.perf_counter() - t0:.1f} s "
            f"to {broker.bootstrap_servers}",
            file=sys.stderr,
        )
        results: dict[str, list[dict[str, Any]]] = {}
        runs = [("plain", "bench", sent), ("watcher", "bench", sent)]
        if otlp:  # read to the end: the topic's message count is the high watermark
            runs += [("otlp-plain", "bench-otlp", -1), ("otlp-watcher", "bench-otlp", -1)]
        for i in range(args.rounds):
            for name, topic, expected in runs:
                role = name.removeprefix("otlp-")
                r = _child(role, broker.bootstrap_servers, topic, expected, args.no_scanner)
                results.setdefault(name, []).append(r)
                events = otlp if topic == "bench-otlp" else r["events"]
                print(
                    f"round {i + 1} {name:12s} {events / r['wall_s']:>10,.0f} ev/s wall "
                    f"{events / r['cpu_s']:>10,.0f} ev/CPU-s  rss {r['peak_rss'] / 2**20:,.0f} MiB",
                    file=sys.stderr,
                )
    finally:
        loop.run_until_complete(broker.stop())
        loop.close()
    print(_table(results, otlp))
    w = results["watcher"][0]
    print(
        f"\n{sent:,} events of ~{results['plain'][0]['mean_bytes']:.0f} bytes; {w['series']} series; "
        f"{args.rounds} rounds, medians; Python {sys.version.split()[0]}"
    )
    if otlp:
        p, o = results["otlp-plain"][0], results["otlp-watcher"][0]
        json_cpu = statistics.median(r["events"] / r["cpu_s"] for r in results["watcher"])
        otlp_cpu = statistics.median(otlp / r["cpu_s"] for r in results["otlp-watcher"])
        print(
            f"OTLP: {otlp:,} turns in {p['events']:,} trace requests of ~{p['mean_bytes'] / 1024:.0f} KiB "
            f"(~{p['mean_bytes'] * p['events'] / otlp:.0f} bytes a turn, 3 spans); {o['turns']:,} turns "
            f"judged; per turn, the OTLP path runs at {otlp_cpu / json_cpu:.2f} of the JSON path's rate (CPU)"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
