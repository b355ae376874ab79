"""``watcher simulate``: a scenario's telemetry to a JSON Lines file or to Kafka, optionally paced.

The simulator's core is seven modules: ``watcher.sim.scenario`` (what a stream is made of),
``watcher.sim.traffic`` (the seeded generator), ``watcher.sim.plan`` (its tables and JSON encoding),
``watcher.sim.presets`` (named scenarios), ``watcher.sim.platform`` (many agents: Zipf traffic, rollouts
of every strategy, churn), ``watcher.sim.output`` (files and Kafka) and this one (the command line).
Their public names are re-exported here: ``from watcher.sim.simulate import PRESETS, generate``.
"""

from __future__ import annotations

import argparse
import calendar
import functools
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from watcher.clock import Clock, SystemClock
from watcher.config import parse_bootstrap_servers
from watcher.errors import ConfigError
from watcher.sim.output import (
    FORMATS,
    messages,
    produce,
    produce_platform,
    write_jsonl,
    write_paced,
    write_platform_jsonl,
)
from watcher.sim.platform import Platform
from watcher.sim.platform import events as platform_events
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
    "Platform",
    "STRATEGIES",
    "STRATEGY_PRESETS",
    "Regression",
    "Scenario",
    "Shape",
    "FORMATS",
    "add_arguments",
    "blocks",
    "expected_outcome",
    "generate",
    "messages",
    "parse_mix",
    "parse_regression",
    "platform_from_args",
    "produce",
    "produce_platform",
    "run",
    "scenario_from_args",
    "write_jsonl",
    "write_paced",
    "write_platform_jsonl",
]


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
    sc.add_argument(
        "--shadow-share",
        type=float,
        metavar="SHARE",
        help="shadow: the share of live conversations mirrored, in (0, 1] (default 1); the marker "
        "carries it as canary_weight, so the judge also tests the shadow's rates against the live "
        "answers not mirrored (docs/strategies/shadow.md)",
    )
    sc.add_argument("--seed", type=int)
    sc.add_argument("--duration", type=float, metavar="SECONDS", help="simulated seconds")
    sc.add_argument("--conversations-per-second", type=float)
    sc.add_argument("--canary-weight", type=float)
    sc.add_argument("--start", metavar="TS", help="start time: RFC 3339, Unix seconds or 'now'")
    sc.add_argument("--agent-id")
    sc.add_argument("--environment", help="the events' environment (default prod)")
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
    pf = parser.add_argument_group(
        "platform: many agents (--agents; --seed, --duration, --start, --canary-weight, --no-markers, "
        "--implicit-arms apply, --conversations-per-second is the whole platform's, --strategy fixes "
        "every rollout's strategy, --regression replaces the regressions drawn)"
    )
    pf.add_argument("--agents", type=int, metavar="N", help="simulate N agents (docs/simulator.md)")
    pf.add_argument("--zipf", type=float, help="traffic of the agent of rank k ~ k^-S (default 1.0)")
    pf.add_argument("--rollout-share", type=float, help="share of agents in a rollout at a time (0.1)")
    pf.add_argument("--rollout-minutes", type=float, help="mean length of a rollout (30)")
    pf.add_argument(
        "--strategy-mix",
        type=parse_mix,
        metavar="MIX",
        help="rollout strategies and weights, e.g. canary=0.55,flag=0.2,blue_green=0.15,shadow=0.1",
    )
    pf.add_argument("--regression-share", type=float, help="share of rollouts that regress (0.2)")


def parse_mix(text: str) -> dict[str, float]:
    """``canary=0.6,flag=0.4``: strategy weights of the platform's rollouts."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in STRATEGIES:
            raise argparse.ArgumentTypeError(
                f"bad part {part!r} in {text!r}: expected STRATEGY=WEIGHT with STRATEGY one of "
                f"{', '.join(STRATEGIES)}"
            )
        try:
            mix[name] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad weight {value!r} in {text!r}") from None
    return mix


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
        ("environment", "environment"),
        ("conversations_per_second", "conversations_per_s"),
        ("canary_weight", "canary_weight"),
        ("shadow_share", "shadow_share"),
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


_SINGLE_AGENT = (
    ("preset", "--preset"),
    ("agent_id", "--agent-id"),
    ("switch", "--switch"),
    ("shadow_share", "--shadow-share"),
)
_PLATFORM_ONLY = (
    ("zipf", "--zipf"),
    ("rollout_share", "--rollout-share"),
    ("rollout_minutes", "--rollout-minutes"),
    ("strategy_mix", "--strategy-mix"),
    ("regression_share", "--regression-share"),
)


def platform_from_args(args: argparse.Namespace, clock: Clock | None = None) -> Platform:
    """The ``--agents`` platform; raises ConfigError naming an option that does not apply to it."""
    for attr, option in _SINGLE_AGENT:
        if getattr(args, attr, None) is not None:
            raise ConfigError(f"simulate.{attr}", f"{option} describes one agent: not with --agents")
    if getattr(args, "strategy", None) and getattr(args, "strategy_mix", None):
        raise ConfigError("simulate.strategy", "give --strategy or --strategy-mix, not both")
    kw: dict[str, Any] = {"agents": args.agents}
    for attr, name in (
        ("seed", "seed"),
        ("duration", "duration_s"),
        ("conversations_per_second", "conversations_per_s"),
        ("canary_weight", "canary_weight"),
        ("zipf", "zipf"),
        ("rollout_share", "rollout_share"),
        ("regression_share", "regression_share"),
        ("strategy_mix", "strategies"),
    ):
        if getattr(args, attr, None) is not None:
            kw[name] = getattr(args, attr)
    if getattr(args, "rollout_minutes", None) is not None:
        kw["rollout_s"] = args.rollout_minutes * 60
    if getattr(args, "strategy", None):
        kw["strategies"] = {args.strategy: 1.0}
    if getattr(args, "regression", None):
        kw["regressions"] = tuple(args.regression)
    if getattr(args, "start", None):
        kw["start_ts"] = _parse_start(args.start, clock or SystemClock())
    if getattr(args, "no_markers", False):
        kw["emit_markers"] = False
    if getattr(args, "implicit_arms", False):
        kw["explicit_arms"] = False
    try:
        return Platform(**kw)
    except ConfigError as e:  # name the option the person typed, not the model's field
        name = e.field.removeprefix("platform.")
        attr, option = _OPTION_OF.get(name, (name, "--" + name.replace("_", "-")))
        raise ConfigError(f"simulate.{attr}", f"{option} {e.message}") from None


# Platform's fields that an option of `watcher simulate --agents` sets: (the option's dest, its spelling)
_OPTION_OF = {
    "agents": ("agents", "--agents"),
    "duration_s": ("duration", "--duration"),
    "conversations_per_s": ("conversations_per_second", "--conversations-per-second"),
    "canary_weight": ("canary_weight", "--canary-weight"),
    "zipf": ("zipf", "--zipf"),
    "rollout_share": ("rollout_share", "--rollout-share"),
    "rollout_s": ("rollout_minutes", "--rollout-minutes"),
    "regression_share": ("regression_share", "--regression-share"),
    "strategies": ("strategy_mix", "--strategy-mix"),
    "regressions": ("regression", "--regression"),
}


async def _run_platform(args: argparse.Namespace) -> int:
    platform = platform_from_args(args)
    fmt = getattr(args, "format", "json")
    started = time.monotonic()
    n, where = await _emit(
        args,
        fmt,
        lines=lambda: platform_events(platform),
        write=functools.partial(write_platform_jsonl, platform),
        send=functools.partial(produce_platform, platform),
    )
    print(
        f"simulate: {n} events of {platform.agents} agents (seed {platform.seed}) to {where} "
        f"in {time.monotonic() - started:.1f}s",
        file=sys.stderr,
    )
    return 0


async def _emit(
    args: argparse.Namespace,
    fmt: str,
    *,
    lines: Callable[[], Iterable[tuple[list[str], list[str], set[int]]]],
    write: Callable[[str, str], int],
    send: Callable[..., Awaitable[int]],
) -> tuple[int, str]:
    """Where ``watcher simulate`` sends its stream (a file, paced or not, or Kafka): the events sent
    and where they went. ``lines`` are the keyed blocks the paced writer takes."""
    if args.out:
        if args.rate:
            return await write_paced(lines(), args.out, args.rate, SystemClock(), fmt), args.out
        return write(args.out, fmt), args.out
    n = await send(
        args.bootstrap_servers, args.topic, rate=args.rate, deployments_topic=args.deployments_topic, fmt=fmt
    )
    return n, f"{args.bootstrap_servers}/{args.topic}"


def _check_writable(path: Path) -> None:
    """Before the work: a file in a folder that exists, not a folder."""
    if not str(path) or path.is_dir():
        raise ConfigError("--out", f"{str(path)!r} is a directory, not a file")
    if not path.parent.is_dir():
        raise ConfigError("--out", f"{path}: folder {path.parent} does not exist")


async def run(args: argparse.Namespace) -> int:
    """``watcher simulate``: returns the process exit code. Raises ConfigError on a bad combination."""
    if (args.out is None) == (args.bootstrap_servers is None):  # "" is a mistake, not "not given"
        raise ConfigError("simulate.output", "give exactly one of --out FILE or --bootstrap-servers")
    if args.bootstrap_servers is not None:
        parse_bootstrap_servers(args.bootstrap_servers, "--bootstrap-servers")
    else:
        _check_writable(Path(args.out))
    if args.rate is not None and args.rate <= 0:
        raise ConfigError("simulate.rate", "must be > 0")
    if getattr(args, "agents", None) is not None:
        return await _run_platform(args)
    for attr, option in _PLATFORM_ONLY:
        if getattr(args, attr, None) is not None:
            raise ConfigError(f"simulate.{attr}", f"{option} describes a platform: give --agents N")
    scenario = scenario_from_args(args)
    fmt = getattr(args, "format", "json")
    started = time.monotonic()
    n, where = await _emit(
        args,
        fmt,
        lines=lambda: (([scenario.agent_id] * len(b), b, m) for b, m in blocks(scenario)),
        write=functools.partial(write_jsonl, scenario),
        send=functools.partial(produce, scenario),
    )
    elapsed = time.monotonic() - started
    print(
        f"simulate: {n} events ({scenario.name}, seed {scenario.seed}, expected {expected_outcome(scenario)})"
        f" to {where} in {elapsed:.1f}s",
        file=sys.stderr,
    )
    return 0
