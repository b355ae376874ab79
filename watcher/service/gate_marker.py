"""The gate's verdict as a deployment marker: what a version passed before it reached production.

A ``gated`` marker (``watcher.deployment/v1``) names the agent, the gate's environment, the candidate
(``canary_version``), the baseline and the verdict with its decision id. A running watcher that
receives it (Kafka deployments topic, or ``POST /v1/deployments``) keeps it with the version, and
``/v1/rollouts`` shows it on the rollout of that version later (``gates``). The marker's ``event_id``
comes from the decision id, so sending it twice records it once.

Targets (``--record``): ``http://host:port`` (watcher's API; bearer token from ``WATCHER_API_TOKEN``),
``kafka://host:port/topic`` (the deployments topic, keyed by agent), or a file (one JSON line appended).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from watcher.contract import Deployment, GateOutcome, encode_deployment
from watcher.errors import SinkError
from watcher.service.gate import GateRun

__all__ = ["gate_marker", "record_marker"]

TOKEN_ENV = "WATCHER_API_TOKEN"


def gate_marker(run: GateRun, now: float, actor: str = "watcher gate") -> Deployment:
    d = run.result.decision
    return Deployment(
        event_id=f"{d.decision_id}-gated",
        ts=now,
        agent_id=run.agent,
        environment=run.environment,
        action="gated",
        baseline_version=run.baseline,
        canary_version=run.candidate,
        gate=GateOutcome(verdict=run.result.verdict.value, decision_id=d.decision_id),  # type: ignore[arg-type]
        actor=actor,
        notes=d.reason[:1024],
    )


def record_marker(marker: Deployment, target: str, *, environ: Mapping[str, str] | None = None) -> str:
    """Send the marker to ``target``; returns where it went; raises ``SinkError`` when it did not."""
    env = os.environ if environ is None else environ
    scheme = urlsplit(target).scheme
    if scheme in ("http", "https"):
        return asyncio.run(_post(marker, target, env.get(TOKEN_ENV)))
    if scheme == "kafka":
        return asyncio.run(_produce(marker, target))
    path = Path(target)
    try:
        with path.open("ab") as fh:
            fh.write(encode_deployment(marker) + b"\n")
    except OSError as exc:
        raise SinkError(f"cannot append the marker to {path}: {exc.strerror or exc}") from exc
    return str(path)


async def _post(marker: Deployment, target: str, token: str | None) -> str:
    import aiohttp

    url = target.rstrip("/")
    if not url.endswith("/v1/deployments"):
        url += "/v1/deployments"
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            async with http.post(url, data=encode_deployment(marker), headers=headers) as r:
                body = await r.text()
                if r.status not in (200, 202):
                    raise SinkError(f"POST {url} answered {r.status}: {body[:300]}", permanent=r.status < 500)
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise SinkError(f"POST {url} failed: {exc or type(exc).__name__}") from exc
    return url


async def _produce(marker: Deployment, target: str) -> str:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    parts = urlsplit(target)
    topic = parts.path.strip("/") or "watcher.deployments"
    producer = AIOKafkaProducer(bootstrap_servers=parts.netloc, request_timeout_ms=10_000)
    try:
        await asyncio.wait_for(producer.start(), 30)
        await producer.send_and_wait(topic, encode_deployment(marker), key=marker.agent_id.encode())
    except (TimeoutError, KafkaError, OSError) as exc:
        raise SinkError(
            f"cannot produce the marker to {topic} at {parts.netloc}: {exc or type(exc).__name__}"
        ) from exc
    finally:
        await producer.stop()
    return f"kafka://{parts.netloc}/{topic}"
