"""Chaos: a deployer's webhook that fails in every way for a while, and a daemon SIGKILLed meanwhile.

Real processes, the real broker, loopback only. Three agents' canaries regress (three rollback
decisions). While the receiver answers 429 with ``Retry-After: 1``, 500, hangs past the sink's
timeout and resets connections, in turn, the daemon (``watcher run``) is SIGKILLed and restarted.
Then the receiver recovers. Every decision of the uninterrupted reference run must reach it (at
least once, keyed), soon after the recovery; none may end ``failed``; the counts must equal the
reference's.

CI profile (the default, about a minute): 25 s of faults, a SIGKILL every 12 s (two). Long profile
(``CHAOS_PROFILE=long``): 180 s of faults, a SIGKILL every 30 s; its figures are in
docs/guarantees.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sqlite3
import time
from itertools import cycle
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.support.processes import api_port, metric_samples, start_watcher, watcher_env
from tests.support.receivers import Receiver
from watcher.kafka.embedded import TopicSpec, create_topics
from watcher.service.replay import replay
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

LONG = os.environ.get("CHAOS_PROFILE") == "long"
FAULT_S = 180.0 if LONG else 25.0
KILL_EVERY_S = 30.0 if LONG else 12.0
SINK_TIMEOUT_S = 2.0
HANG_S = 3.0  # longer than the sink's timeout: a lost response
# after the recovery: the receiver's backoff is capped at 60 s, plus a request's timeout and slack
DELIVERED_WITHIN_S = 80.0


class FaultyReceiver(Receiver):
    """Until ``healthy`` is set, each request gets the next fault of the cycle."""

    def __init__(self) -> None:
        super().__init__()
        self.healthy = False
        self.modes = cycle(["429", "500", "hang", "reset"])
        self.injected: dict[str, int] = {}

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.healthy:
            return await super()._handle(request)
        await request.read()
        mode = next(self.modes)
        self.injected[mode] = self.injected.get(mode, 0) + 1
        if mode == "429":
            return web.Response(status=429, text="slow down", headers={"Retry-After": "1"})
        if mode == "500":
            return web.Response(status=500, text="injected")
        if mode == "hang":
            await asyncio.sleep(HANG_S)
            return web.Response(status=503, text="too late")
        assert request.transport is not None
        request.transport.abort()  # a connection reset
        return web.Response(status=500)


def _lines() -> list[bytes]:
    lines: list[bytes] = []
    for i in range(3):
        scenario = dataclasses.replace(
            PRESETS["demo"], seed=100 + i, agent_id=f"bot-{i}", id_prefix=f"c{i}", duration_s=600.0
        )
        lines.extend(generate(scenario))
    return lines


def _logged(path: Path) -> list[str]:
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            return [r[0] for r in db.execute("SELECT decision_id FROM decisions")]
        finally:
            db.close()
    except sqlite3.Error:
        return []


async def test_every_decision_reaches_a_receiver_that_failed_in_every_way_across_sigkills(
    broker, unique_topic, produce, tmp_path
) -> None:
    lines = _lines()
    source = tmp_path / "input.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    reference, engine = replay(source)
    expected = {d["decision_id"] for d in reference.decisions}
    assert len(expected) >= 3, [d["action"] for d in reference.decisions]
    turns = sum(
        s.turns
        for k, s in ((k, engine.state.snapshot(k, "cumulative")) for k in engine.state.keys())
        if not k[4]
    )

    topic = unique_topic("chaos")
    await create_topics(
        broker.bootstrap_servers,
        [TopicSpec(topic, 1), TopicSpec(topic + "-deployments"), TopicSpec(topic + "-deadletter")],
    )
    await produce(topic, lines, partitions=1, key=b"agents")
    receiver = await FaultyReceiver().start()
    config = tmp_path / "watcher.yaml"
    config.write_text(
        json.dumps(
            {
                "sinks": [
                    {
                        "name": "deployer",
                        "type": "webhook",
                        "url": receiver.url + "/rollback",
                        "timeout_s": SINK_TIMEOUT_S,
                        "hmac_secret": "chaos-secret",
                    }
                ]
            }
        )
    )
    env = watcher_env(broker, tmp_path, topic) | {"WATCHER_CONFIG": str(config)}
    decisions_file = tmp_path / "decisions.sqlite"
    kills = 0
    proc = None
    started = time.monotonic()
    try:
        run = 0
        proc = await start_watcher(env, tmp_path / f"run-{run}.log")
        next_kill = started + KILL_EVERY_S
        while time.monotonic() - started < FAULT_S:
            if time.monotonic() >= next_kill:
                proc.send_signal(signal.SIGKILL)
                assert await asyncio.wait_for(proc.wait(), 10) == -signal.SIGKILL
                kills += 1
                run += 1
                proc = await start_watcher(env, tmp_path / f"run-{run}.log")
                next_kill += KILL_EVERY_S
            assert proc.returncode is None, (tmp_path / f"run-{run}.log").read_text()[-3000:]
            await asyncio.sleep(0.2)
        assert set(_logged(decisions_file)) == expected  # decided while the receiver failed
        assert not receiver.accepted
        receiver.healthy = True
        recovered = time.monotonic()

        def delivered() -> set[str]:
            return {b["decision_id"] for b in receiver.bodies() if isinstance(b, dict) and "decision_id" in b}

        while delivered() != expected:
            assert time.monotonic() - recovered < DELIVERED_WITHIN_S, (delivered(), expected)
            await asyncio.sleep(0.1)
        last = max(a.t for v in receiver.accepted.values() for a in v if a.json and "decision_id" in a.json)
        port = await api_port(tmp_path / f"run-{run}.log", proc)
        async with aiohttp.ClientSession() as http:
            failed = await (await http.get(f"http://127.0.0.1:{port}/v1/deliveries?state=failed")).json()
            samples = metric_samples(await (await http.get(f"http://127.0.0.1:{port}/metrics")).text())
        assert failed["deliveries"] == []
        counted = sum(v for (n, _), v in samples.items() if n == "watcher_turns_total")
        assert counted == turns
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await receiver.stop()
    assert kills >= 1
    print(
        f"\nreceiver chaos: {FAULT_S:.0f} s of faults {receiver.injected}, {kills} SIGKILL(s); "
        f"{len(lines)} events, {turns} turns counted once; {len(expected)} decisions all delivered, "
        f"the last {last - recovered:.1f} s after the receiver recovered; none failed"
    )
