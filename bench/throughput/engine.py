"""The engine alone (no Kafka): the columnar decode path against the object path, same events.

    python -m bench.throughput.engine                  # 300,000 events, 2,000 per batch, 5 rounds
    python -m bench.throughput.engine --events 100000 --rounds 3

Both sides run ``Engine.process`` over the same realistic simulator events (the throughput bench's
scenario: a canary rollout, three segment keys, ~3.7 turns per conversation), in batches as the
daemon gets them, from a fresh ``Engine`` each round:

* object: ``decode_batch`` builds a msgspec ``Turn`` per event and the columns from them;
* columnar: the C scanner (``watcher.contract._turnscan``) writes the columns, ``Turn``s are never built.

Rounds alternate the two sides in one process; the figure per side is its best round (the VM's speed
varies by +-20 % from minute to minute). Needs the C scanner (``pip install`` with a C compiler).
"""

from __future__ import annotations

import argparse
import gc
import time

from watcher.cli.main import tune_gc
from watcher.config.settings import load_settings
from watcher.contract import columnar as decode_columnar
from watcher.engine.engine import Engine


def _events(n: int) -> list[bytes]:
    from bench.throughput.__main__ import _scenario
    from watcher.sim.traffic import generate

    out: list[bytes] = []
    for raw in generate(_scenario(n)):
        out.append(raw)
        if len(out) >= n:
            break
    return out


def _round(batches: list[list[bytes]], columnar: bool) -> float:
    native = decode_columnar._native
    if not columnar:
        decode_columnar._native = None
    try:
        engine = Engine(load_settings(environ={}))
        gc.collect()
        t0 = time.process_time()
        for batch in batches:
            engine.process(batch)
        return time.process_time() - t0
    finally:
        decode_columnar._native = native


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput.engine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if not decode_columnar.available():
        parser.error("the C scanner watcher.contract._turnscan is not built (pip install with a C compiler)")
    tune_gc()
    events = _events(args.events)
    batches = [events[i : i + args.batch] for i in range(0, len(events), args.batch)]
    best = {"object": float("inf"), "columnar": float("inf")}
    for _ in range(args.rounds):
        for side in ("object", "columnar"):
            best[side] = min(best[side], _round(batches, side == "columnar"))
    n = len(events)
    print("| engine path | µs of CPU per event | events per CPU-s |")
    print("|---|---|---|")
    for side, seconds in best.items():
        print(f"| {side} | {seconds / n * 1e6:.2f} | {n / seconds:,.0f} |")
    print(
        f"\n{n:,} events in batches of {args.batch:,}; best of {args.rounds} alternating rounds; "
        f"columnar is {best['object'] / best['columnar']:.2f}x the object path"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
