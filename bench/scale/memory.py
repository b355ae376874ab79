"""Where the memory of many agents goes: ``python -m bench.scale.memory`` (issue #13).

    python -m bench.scale.memory --agents 1000               # bench.scale's 1,000-agent platform
    python -m bench.scale.memory --agents 10000 --minutes 10

The platform of ``bench.scale`` (``watcher simulate --agents N``'s model, same seed, rate and minutes)
goes through one ``Engine`` in this process, in batches of 2,000 messages as the daemon reads them
(no broker, no HTTP, no checkpoints: what the engine itself keeps). Then every live allocation
(``tracemalloc``) is charged to the watcher module nearest to where it was made, and the modules are
grouped into the components below, with bytes per agent; ``MetricsState`` also reports its series,
how many hold dense sketch rows, and its own estimate (``nbytes``). Peak RSS is the process's
(``ru_maxrss``), the platform's encoded messages included, so read the tracemalloc table for the
engine's share. ``--no-trace`` skips tracemalloc (which slows the run ~2x) for the RSS and CPU alone.
"""

from __future__ import annotations

import argparse
import gc
import resource
import time
import tracemalloc
from collections import defaultdict

from bench.scale.__main__ import _platform
from watcher.cli.main import tune_gc
from watcher.config.settings import load_settings
from watcher.engine.engine import Engine
from watcher.sim.platform import events as platform_events

# component <- watcher modules (path fragments, first match wins); the rest is "other watcher"
COMPONENTS = [
    (
        "per-series statistics (MetricsState: counters, window ring, latency sketches)",
        ("state/metrics", "state/sketches"),
    ),
    ("judges' conversation tables and segment slices", ("judges/tables", "state/slices", "state/tracker")),
    ("drift detectors (river)", ("judges/drift",)),
    ("version history (blue-green's reference)", ("state/history",)),
    (
        "judges and evidence (canary, shadow, blue-green, policy)",
        ("judges/", "engine/history", "engine/coverage"),
    ),
    ("dedup window (event ids)", ("contract/dedup",)),
    ("the batch being decoded", ("contract/",)),
    ("rollouts, lateness, engine bookkeeping", ("state/rollouts", "state/lateness", "engine/")),
]


def _component(trace: tracemalloc.Trace) -> str:
    for frame in reversed(trace.traceback):  # the most recent frame first
        name = frame.filename
        if "/watcher/" in name and "/site-packages/" not in name:
            module = name.rsplit("/watcher/", 1)[1]
            for label, parts in COMPONENTS:
                if any(module.startswith(p) for p in parts):
                    return label
            return "other watcher"
    return "libraries and code (imports, caches)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale.memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=10.0, help="simulated minutes (%(default)s)")
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--no-trace", action="store_true", help="RSS and CPU only (no tracemalloc)")
    args = parser.parse_args(argv)
    tune_gc()
    platform = _platform(args.agents, args.minutes)  # bench.scale's platform of that size
    msgs = [line.encode() for _, lines, _ in platform_events(platform) for line in lines]
    if not args.no_trace:
        tracemalloc.start(12)
    engine = Engine(load_settings(environ={}))
    t0 = time.process_time()
    for i in range(0, len(msgs), args.batch):
        engine.process(msgs[i : i + args.batch])
    cpu = time.process_time() - t0
    gc.collect()
    st, n = engine.state, args.agents
    print(f"{n:,} agents, {args.minutes:g} simulated minutes: {len(msgs):,} messages, {cpu:.1f} s of CPU")
    rollouts = len(engine.registry.active_rollouts())
    print(f"series {len(st.keys()):,}, {st.dense_series():,} of them with dense sketch rows")
    print(f"rollouts running {rollouts:,}, judges {len(engine.judges):,}")
    print(f"MetricsState.nbytes {st.nbytes / 2**20:.1f} MiB")
    print(f"peak RSS of the process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.no_trace:
        return 0
    traces = tracemalloc.take_snapshot().traces
    tracemalloc.stop()
    size: dict[str, int] = defaultdict(int)
    for trace in traces:
        size[_component(trace)] += trace.size
    total = sum(size.values())
    print("\n| component | MiB | KiB per agent | share |\n|---|---|---|---|")
    for label, b in sorted(size.items(), key=lambda kv: -kv[1]):
        print(f"| {label} | {b / 2**20:.1f} | {b / 1024 / n:.1f} | {b / total:.0%} |")
    print(f"| **traced in all** | {total / 2**20:.1f} | {total / 1024 / n:.1f} | 100% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
