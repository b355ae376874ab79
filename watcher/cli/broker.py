"""``watcher broker``: the embedded Kafka-compatible broker for local use, with watcher's topics.

It listens where ``watcher run`` looks (``kafka.bootstrap_servers``: ``localhost:9092`` unless the
configuration or ``WATCHER_KAFKA__BOOTSTRAP_SERVERS`` says otherwise; ``--port`` picks another port
on loopback), creates the topics the same settings name — telemetry and deployments with
``--partitions`` each (co-partitioned, as several instances need), the dead-letter topic, the topics of
Kafka sinks and the compacted checkpoint topic when checkpoints live in Kafka — and runs until Ctrl-C
or SIGTERM. Data lives in memory only: stopping the broker loses it.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from typing import Any, TextIO

import msgspec

from watcher.cli import configured
from watcher.cli.parser import port, positive_int
from watcher.cli.process import install_stop_signals
from watcher.config import Settings, parse_bootstrap_servers
from watcher.errors import EmbeddedBrokerError
from watcher.kafka import EmbeddedBroker, TopicSpec, create_topics
from watcher.sinks import sink_settings

__all__ = ["add_broker_command", "local_topics", "run_broker"]

_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def add_broker_command(commands: Any) -> None:
    broker = commands.add_parser(
        "broker",
        help="a local Kafka-compatible broker with watcher's topics (memory only)",
        description="Start a Kafka-compatible broker (Tansu) on this machine where `watcher run` looks "
        "for one (kafka.bootstrap_servers, by default localhost:9092), create the topics the "
        "settings name, and run until Ctrl-C. Its data lives in memory only.",
    )
    broker.add_argument(
        "--port", type=port, default=None, help="listen on 127.0.0.1:PORT (default: kafka.bootstrap_servers)"
    )
    broker.add_argument(
        "--partitions",
        type=positive_int,
        default=3,
        help="partitions of the telemetry and deployments topics (default %(default)s)",
    )
    broker.set_defaults(handler=run_broker)


def local_topics(settings: Settings, partitions: int) -> list[TopicSpec]:
    """Every topic ``settings`` name, with the partition counts watcher expects."""
    kafka = settings.kafka
    specs: dict[str, TopicSpec] = {}
    for name in (*kafka.telemetry_topics, *kafka.deployments_topics):
        specs[name] = TopicSpec(name, partitions=partitions)
    names = [kafka.dead_letter_topic]
    for sink in sink_settings(settings.sinks):  # validated as start-up does
        if sink.__struct_config__.tag != "kafka":
            continue
        options = msgspec.structs.asdict(sink)
        if options["bootstrap_servers"] in (None, kafka.bootstrap_servers):
            names += [options["topic"], options["markers_topic"], options["drift_topic"] or options["topic"]]
    for name in names:
        specs.setdefault(name, TopicSpec(name))
    if settings.checkpoint.enabled and settings.checkpoint.store == "kafka":
        topic = settings.checkpoint.topic
        specs[topic] = TopicSpec(topic, configs={"cleanup.policy": "compact"})
    return list(specs.values())


def _address(settings: Settings, asked: int | None) -> tuple[str, int]:
    if asked:
        return "127.0.0.1", asked
    host, found = parse_bootstrap_servers(settings.kafka.bootstrap_servers)[0]
    if host not in _LOOPBACK:
        raise EmbeddedBrokerError(
            f"kafka.bootstrap_servers is {settings.kafka.bootstrap_servers}, not this machine: the "
            "embedded broker listens on loopback only (give --port, or point the setting at localhost)"
        )
    return ("::1" if host == "::1" else "127.0.0.1"), found


def _free(host: str, number: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, number))
        except OSError:
            return False
    return True


async def run_broker(args: argparse.Namespace, *, out: TextIO = sys.stdout) -> int:
    settings = configured.settings(args)  # the same settings `watcher run` reads
    host, number = _address(settings, args.port)
    if not _free(host, number):
        raise EmbeddedBrokerError(
            f"{host}:{number} is already in use (another broker?): stop it, or choose a port with "
            f"--port and give the same address to the other commands (--bootstrap-servers)"
        )
    stop = asyncio.Event()
    install_stop_signals(stop)
    broker = EmbeddedBroker(host=host, port=number)
    await broker.start()
    try:
        topics = local_topics(settings, args.partitions)
        await create_topics(broker.bootstrap_servers, topics)
        address = broker.bootstrap_servers if host != "::1" else f"[::1]:{number}"
        flag = "" if args.port is None else f" --bootstrap-servers {address}"
        out.write(
            f"watcher broker: Kafka-compatible broker (Tansu, memory only) on {address}\n"
            f"topics: {', '.join(f'{t.name} ({t.partitions})' for t in topics)}\n"
            "in other terminals:\n"
            f"  watcher run{flag}\n"
            f"  watcher simulate --preset demo --start now --rate 200 --bootstrap-servers {address}\n"
            "Ctrl-C stops the broker (its data is lost).\n"
        )
        out.flush()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                if not broker.running:
                    raise EmbeddedBrokerError(
                        f"the broker stopped by itself; log tail:\n{broker.log_tail()}"
                    ) from None
        return 0
    finally:
        await broker.stop()
