"""``watcher simulate --format otlp``: the same traffic as GenAI spans, read back to the same turns and the
same decisions."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support.otlp import otlp_json
from watcher.cli.main import main
from watcher.contract import OTLP_JSON, OTLP_PROTO, OtlpDecoder, Turn
from watcher.service.replay import replay
from watcher.sim import simulate as sim
from watcher.sim.presets import PRESETS, STRATEGY_PRESETS

TURN = msgspec.json.Decoder(Turn)


def _turn_values(raw: bytes) -> tuple[Any, ...]:
    t = TURN.decode(raw)
    if t.ts.__class__ is not float:
        t.ts = t.ts.timestamp()  # type: ignore[attr-defined]
    values = msgspec.structs.asdict(t)
    if t.trace_id is None:  # a JSON turn: its trace in OTLP is derived from its event id
        values["trace_id"] = hashlib.blake2b(t.event_id.encode(), digest_size=40).digest()[:16].hex()
    del values["event_id"]  # a span id in OTLP
    return tuple(sorted((k, repr(v)) for k, v in values.items()))


@pytest.mark.parametrize("preset", ["demo", "shadow_quality_down", "blue_green_errors_x4", "flag_errors_x4"])
@pytest.mark.parametrize("encoding", [OTLP_PROTO, OTLP_JSON])
def test_every_turn_reads_back_with_the_json_streams_values(preset: str, encoding: str) -> None:
    base = {**PRESETS, **STRATEGY_PRESETS}[preset]
    scenario = replace(base, duration_s=60.0, **({"switch_s": 20.0} if base.strategy == "blue_green" else {}))
    want = sorted(_turn_values(v) for b in sim.messages(scenario) for v, marker, _ in b if not marker)
    got: list[tuple[Any, ...]] = []
    markers = 0
    decoder = OtlpDecoder()
    for block in sim.messages(scenario, encoding):
        for value, marker, events in block:
            if marker:
                markers += 1
                continue
            out = decoder.read(value, encoding)
            assert out.error is None and out.rejected == [] and len(out.turns) == events
            assert out.spans == 3 * events  # each turn with a model call and a tool call
            got += map(_turn_values, out.turns)
    assert got and sorted(got) == want
    assert markers == sum(1 for b in sim.messages(scenario) for _, marker, _ in b if marker)


def test_the_hand_encoded_protobuf_is_what_the_official_classes_read() -> None:
    scenario = replace(PRESETS["demo"], duration_s=30.0)
    proto = [v for b in sim.messages(scenario, OTLP_PROTO) for v, marker, _ in b if not marker]
    js = [v for b in sim.messages(scenario, OTLP_JSON) for v, marker, _ in b if not marker]
    assert len(proto) == len(js) > 1
    for p, j in zip(proto, js):
        parsed = ExportTraceServiceRequest.FromString(p)
        assert parsed.SerializeToString() == p  # canonical: what the SDK itself would write
        assert msgspec.json.decode(otlp_json(parsed)) == msgspec.json.decode(j)
        spans = parsed.resource_spans[0].scope_spans[0].spans
        assert len(spans) <= 512  # the SDK's batch size


def test_the_same_regression_gives_the_same_decision_in_both_formats(tmp_path: Path) -> None:
    scenario = replace(PRESETS["demo"], duration_s=330.0)  # quality falls for intent=billing at 120 s
    decisions = {}
    for fmt in ("json", "otlp"):
        path = tmp_path / f"{fmt}.jsonl"
        sim.write_jsonl(scenario, path, fmt)
        report, _ = replay(path)
        assert report.turns > 10_000 and not report.rejected
        decisions[fmt] = report.decisions
    assert decisions["json"], "the regression must be caught"
    for a, b in zip(decisions["json"], decisions["otlp"], strict=True):
        assert (a["action"], a["cause"], a["trigger"], a["decision_id"]) == (
            b["action"],
            b["cause"],
            b["trigger"],
            b["decision_id"],
        )
        assert abs(a["ts_unix"] - b["ts_unix"]) <= 10.0  # one look of the judge at most
    # the examples of the OTLP decision point at the traces of their conversations' turns; JSON
    # turns (without a trace_id) give examples without one
    traces: dict[str, set[str]] = {}
    for line in (tmp_path / "json.jsonl").read_bytes().splitlines():
        t = msgspec.json.decode(line)
        if t.get("schema") == "watcher.turn/v1":
            trace = hashlib.blake2b(t["event_id"].encode(), digest_size=40).digest()[:16].hex()
            traces.setdefault(t["conversation_id"], set()).add(trace)
    examples = [x for d in decisions["otlp"] for x in d["examples"]]
    assert examples and all(x["trace_id"] in traces[x["conversation_id"]] for x in examples)
    assert all(x["trace_id"] is None for d in decisions["json"] for x in d["examples"])


def test_cli_writes_otlp_json_lines_and_refuses_protobuf_in_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "spans.jsonl"
    assert (
        main(["simulate", "--preset", "demo", "--duration", "20", "--format", "otlp", "--out", str(out)]) == 0
    )
    lines = out.read_bytes().splitlines()
    kinds = [("resourceSpans" in json.loads(line)) for line in lines]
    assert kinds[0] is False and any(kinds)  # the rollout's start marker, then trace requests
    assert main(["simulate", "--duration", "5", "--format", "otlp_proto", "--out", str(out)]) == 2
    assert "simulate.format: protobuf has no line framing" in capsys.readouterr().err
