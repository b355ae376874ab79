"""What one ``/metrics`` scrape costs, and how long it holds the event loop (issue #13).

    python -m bench.scale.exposition                       # 1,000 agents, 10 simulated minutes
    python -m bench.scale.exposition --agents 100,1000 --rounds 3

For each size, ``bench.scale``'s platform (``watcher simulate --agents N``: Zipf traffic, 10 % of the
agents in rollouts) goes through one engine, all but its last simulated minute. Then, in one process:

* **all at once** (the baseline of the same run): the whole registry written on the event loop in one
  piece by a fresh collector, every series' snapshots and lines computed (what a scrape did before
  #13, with today's formatting);
* **first scrape**: ``Exposition.render`` of a fresh collector (every series redone, in slices);
* **unchanged**: a second scrape, nothing changed since the first;
* **after a minute**: a scrape after the platform's last simulated minute went through the engine
  (the agents it touched, and those whose recent window lost a bucket, are redone).

Each reports the wall time of the scrape, the CPU time of the process during it (event loop and
worker thread together), the longest the event loop went without running a ticker task (its longest
step: what ``/healthz`` waits at worst), the series redone and the slices. Ratios are against "all
at once" of the same round; medians over ``--rounds``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from watcher.config import load_settings
from watcher.engine import Engine
from watcher.service.exposition import Exposition
from watcher.service.series_text import render_metrics
from watcher.service.telemetry import StateCollector, WatcherMetrics
from watcher.sim.platform import Platform, events

BATCH = 2000


@dataclass
class Figure:
    wall_s: float
    cpu_s: float
    longest_step_s: float
    redone: int
    slices: int
    size: int


def _platform(agents: int, minutes: float) -> Platform:
    """bench.scale's platform (same seed, rate and rollout share)."""
    return Platform(
        agents=agents,
        seed=13,
        duration_s=minutes * 60,
        conversations_per_s=max(20.0, 0.02 * agents),
        rollout_share=0.1,
    )


def _engine(agents: int, minutes: float) -> tuple[Engine, list[bytes]]:
    """An engine fed the platform's events but the last simulated minute's (the events are in event
    time, at an even rate); those, to feed later."""
    raws = [line.encode() for _, lines, _ in events(_platform(agents, minutes)) for line in lines]
    cut = round(len(raws) * (minutes - 1) / minutes)
    engine = Engine(load_settings(environ={}))
    for i in range(0, cut, BATCH):
        engine.process(raws[i : min(cut, i + BATCH)])
    return engine, raws[cut:]


async def _measure(scrape: Any) -> tuple[Figure, bytes]:
    """Run ``scrape()`` while a ticker task notes the loop's longest step."""
    loop = asyncio.get_running_loop()
    longest = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal longest
        while not done.is_set():
            t = loop.time()
            await asyncio.sleep(0)
            longest = max(longest, loop.time() - t)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    wall, cpu = time.perf_counter(), time.process_time()
    body, redone, slices = await scrape()
    figure = Figure(time.perf_counter() - wall, time.process_time() - cpu, 0.0, redone, slices, len(body))
    done.set()
    await task
    figure.longest_step_s = longest
    return figure, body


def _round(agents: int, minutes: float) -> dict[str, Figure]:
    engine, last = _engine(agents, minutes)
    out: dict[str, Figure] = {}

    async def run() -> None:
        registry = CollectorRegistry()
        WatcherMetrics(registry)  # watcher's own metrics too, as the daemon exposes them
        state = StateCollector(engine)
        registry.register(state)

        async def at_once() -> tuple[bytes, int, int]:
            body = render_metrics(registry)  # on the loop, in one piece, every series computed
            return body, state.series.redone, 0

        out["all at once"], reference = await _measure(at_once)
        registry.unregister(state)
        state = StateCollector(engine)
        registry.register(state)
        exposition = Exposition(registry, state)

        async def scrape() -> tuple[bytes, int, int]:
            body = b"".join(await exposition.render())
            return body, state.series.redone, exposition.slices

        out["first scrape"], body = await _measure(scrape)
        assert body == reference, "a scrape in slices must write what one piece does"
        out["unchanged"], _ = await _measure(scrape)
        for i in range(0, len(last), BATCH):
            engine.process(last[i : i + BATCH])
        out["after a minute"], _ = await _measure(scrape)

    asyncio.run(run())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale.exposition",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--agents", default="1000", help="platform sizes (default %(default)s)")
    parser.add_argument("--minutes", type=float, default=10.0, help="simulated minutes (%(default)s)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, medians reported")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # rollouts the platform leaves unjudged say so once each
    print(
        "| agents | scrape | wall | vs all at once | CPU | longest loop step | series redone | slices | MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for agents in (int(a) for a in args.agents.split(",")):
        rounds = [_round(agents, args.minutes) for _ in range(args.rounds)]
        for name in rounds[0]:

            def med(attr: str, name: str = name, rounds: list[dict[str, Figure]] = rounds) -> float:
                return statistics.median(getattr(r[name], attr) for r in rounds)

            base = statistics.median(r["all at once"].wall_s for r in rounds)
            f = rounds[0][name]
            print(
                f"| {agents:,} | {name} | {med('wall_s') * 1e3:,.1f} ms | {med('wall_s') / base:.3f} "
                f"| {med('cpu_s') * 1e3:,.1f} ms | {med('longest_step_s') * 1e3:,.1f} ms "
                f"| {f.redone:,} | {f.slices:,} | {f.size / 1e6:.1f} |"
            )
    print(f"\n{args.rounds} round(s), medians; Python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
