"""OTLP/HTTP in (``POST /v1/traces``): the specification's answers, and the real SDK exporter end to end.

The receiver's HTTP answers are checked against a real aiohttp server with an in-memory turn writer;
the end-to-end test runs the daemon on the real broker and exports with the OpenTelemetry Python
SDK's own OTLP/HTTP exporter (protobuf), the way an instrumented agent would.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tests.support.daemon import consume_all, daemon_settings, daemon_topics, until
from tests.support.otlp import otlp_json, sdk_request, turn_attributes
from watcher.config import HttpSettings, load_settings
from watcher.contract import OtlpCounts, OtlpDecoder, Rejected
from watcher.errors import SourceError
from watcher.http import OtlpReceiver, auth
from watcher.service.compose import build_daemon

PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}


class MemoryWriter:
    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []
        self.fail = False

    async def start(self) -> None:
        return None

    async def write(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        if self.fail:
            raise SourceError("broker unreachable")
        self.records += records

    async def stop(self) -> None:
        return None


@pytest.fixture
async def receiver() -> Any:
    writer = MemoryWriter()
    seen: list[tuple[OtlpCounts, list[Rejected]]] = []

    async def observe(counts: OtlpCounts, rejected: list[Rejected]) -> None:
        seen.append((counts, rejected))

    app = web.Application()
    app.add_routes(OtlpReceiver(OtlpDecoder(max_message_bytes=200_000), writer, observe).routes())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/traces"
    async with aiohttp.ClientSession() as http:
        yield http, url, writer, seen
    await runner.cleanup()


async def test_protobuf_and_json_requests_are_taken_keyed_by_agent(receiver: Any) -> None:
    http, url, writer, seen = receiver
    request = sdk_request([{"score": 0.9}, {}])
    r = await http.post(url, data=request.SerializeToString(), headers=PROTOBUF)
    assert (r.status, r.content_type, await r.read()) == (200, "application/x-protobuf", b"")
    assert [k for k, _ in writer.records] == [b"support-bot", b"support-bot"]
    assert json.loads(writer.records[0][1])["quality"] == 0.9
    assert seen[0][0].spans == 6 and seen[0][0].turns == 2 and seen[0][1] == []
    r = await http.post(url, data=otlp_json(request), headers=JSON)
    assert (r.status, r.content_type, await r.json()) == (200, "application/json", {})
    assert len(writer.records) == 4  # the client's retry of the same spans: the consumer drops duplicates


async def test_rejected_spans_get_a_partial_success_and_a_dead_letter(receiver: Any) -> None:
    http, url, writer, seen = receiver
    no_conversation = turn_attributes(1, **{"gen_ai.conversation.id": None})
    bad_arm = turn_attributes(2, **{"watcher.arm": "blue"})
    request = sdk_request([{}, {"attrs": no_conversation}, {"attrs": bad_arm}])
    r = await http.post(url, data=request.SerializeToString(), headers=PROTOBUF)
    assert r.status == 200
    answer = ExportTraceServiceResponse.FromString(await r.read())
    assert answer.partial_success.rejected_spans == 2
    message = answer.partial_success.error_message
    assert (
        message.startswith("2 spans rejected (missing_field: span ") and "gen_ai.conversation.id" in message
    )
    assert "invalid_value: arm" in message  # the contract's own check, after the mapping
    assert len(writer.records) == 1  # the good turn was written
    _, rejected = seen[-1]
    assert [r.reason.value for r in rejected] == ["missing_field", "invalid_value"]
    assert {r.origin for r in rejected} == {"POST /v1/traces"}
    r = await http.post(url, data=otlp_json(request), headers=JSON)
    body = await r.json()
    assert body["partialSuccess"]["rejectedSpans"] == "2"  # int64 as a string, as protobuf's JSON writes it


async def test_failures_answer_with_the_specifications_codes(receiver: Any) -> None:
    http, url, writer, _ = receiver
    good = sdk_request([{}]).SerializeToString()
    r = await http.post(url, data=b"\x0a\xff\x01", headers=PROTOBUF)
    assert r.status == 400
    assert "not a readable protobuf ExportTraceServiceRequest" in Status.FromString(await r.read()).message
    r = await http.post(url, data=b'{"resourceSpans": 3}', headers=JSON)
    assert r.status == 400 and "OTLP/JSON" in (await r.json())["message"]
    r = await http.post(url, data=good, headers={"Content-Type": "text/plain"})
    assert r.status == 415
    r = await http.post(url, data=b"x" * 200_001, headers=PROTOBUF)
    assert r.status == 413
    bomb = gzip.compress(b"\x0a" * 300_000)  # small on the wire, over the limit once inflated
    r = await http.post(url, data=bomb, headers={**PROTOBUF, "Content-Encoding": "gzip"})
    assert r.status == 413 and "otlp.max_message_bytes" in Status.FromString(await r.read()).message
    async with aiohttp.ClientSession() as once:  # aiohttp closes a connection whose body it cannot decode
        r = await once.post(url, data=b"not gzip", headers={**PROTOBUF, "Content-Encoding": "gzip"})
        assert r.status == 400
    r = await http.post(url, data=gzip.compress(good), headers={**PROTOBUF, "Content-Encoding": "gzip"})
    assert r.status == 200 and len(writer.records) == 1
    writer.fail = True
    r = await http.post(url, data=good, headers=PROTOBUF)
    assert (r.status, r.headers["Retry-After"]) == (503, "5")  # retryable: nothing was taken
    assert "broker unreachable" in Status.FromString(await r.read()).message


def test_the_otlp_token_opens_v1_traces_and_nothing_else() -> None:
    class Req:
        def __init__(self, path: str, method: str = "POST") -> None:
            self.path, self.method = path, method

    http = HttpSettings(otlp_token="t" * 16, auth_token="a" * 16)
    assert auth.required(Req("/v1/traces"), http) == (("t" * 16,), False)  # type: ignore[arg-type]
    assert auth.required(Req("/v1/deployments"), http) == (("a" * 16,), True)  # type: ignore[arg-type]
    # no OTLP token: the rule of every other POST (auth_token, or loopback without one)
    assert auth.required(Req("/v1/traces"), HttpSettings()) == ((None,), True)  # type: ignore[arg-type]


async def test_the_sdk_exporter_sends_to_watcher_and_the_daemon_judges_it(
    broker, unique_topic, tmp_path
) -> None:
    """An instrumented agent's spans, exported by the OpenTelemetry SDK's OTLP/HTTP exporter straight
    to watcher: written to the telemetry topic keyed by agent, consumed, counted."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    topics = await daemon_topics(broker, unique_topic)
    settings = daemon_settings(broker, tmp_path, topics, **{"http.otlp_token": "otlp-secret-0123456789"})
    daemon = build_daemon(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await until(lambda: daemon.port is not None and daemon.readiness()[0])
        endpoint = f"http://127.0.0.1:{daemon.port}/v1/traces"
        resource = Resource.create({"service.name": "support-bot", "service.version": "v42"})
        provider = TracerProvider(resource=resource)
        exporter = OTLPSpanExporter(
            endpoint=endpoint, headers={"Authorization": "Bearer otlp-secret-0123456789"}
        )
        provider.add_span_processor(BatchSpanProcessor(exporter))
        tracer = provider.get_tracer("support_bot")
        for i in range(12):
            with tracer.start_as_current_span("invoke_agent support-bot") as span:
                span.set_attributes(turn_attributes(i))
                span.add_event(
                    "gen_ai.evaluation.result",
                    {"gen_ai.evaluation.name": "quality", "gen_ai.evaluation.score.value": 0.75},
                )
                with tracer.start_as_current_span("chat gpt-4o") as call:
                    call.set_attribute("gen_ai.operation.name", "chat")
        # the exporter's HTTP client blocks: it runs in a thread while this loop serves the daemon
        assert await asyncio.to_thread(provider.force_flush, 10_000)
        await asyncio.to_thread(provider.shutdown)
        turns = lambda: sum(
            daemon.engine.state.snapshot(k, "cumulative").turns
            for k in daemon.engine.state.keys()
            if not k[4]
        )
        await until(lambda: turns() >= 12)
        async with aiohttp.ClientSession() as http:
            denied = await http.post(endpoint, data=b"", headers=PROTOBUF)
            assert denied.status == 401  # a token is set: none, no entry
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0
    assert turns() == 12
    records = await consume_all(broker.bootstrap_servers, topics["telemetry"], 12)
    assert len(records) == 12 and all(json.loads(v)["agent_id"] == "support-bot" for v in records)


def test_otlp_settings() -> None:
    settings = load_settings(environ={}, overrides={"otlp.http_topic": "spans-in"})
    assert settings.otlp.http_topic == "spans-in"
