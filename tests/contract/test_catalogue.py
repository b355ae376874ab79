"""The metric catalogue is the one definition of a metric: everything that names metrics agrees with it.

Each test names the place that would disagree: the event contract and its columns, the C scanner, the
policy and its defaults, the state, the judges' layouts, the drift monitor, and the docs' tables.
(The Prometheus exposition: tests/service/test_telemetry.py; the dashboards: tests/ops.)
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

import msgspec
import pytest

from watcher.contract import (
    CATALOGUE,
    MEAN_METRICS,
    RATE_METRICS,
    SERIES_FAMILIES,
    Kind,
    ToleranceMode,
    Turn,
    TurnColumns,
    metric_def,
    metric_names,
)
from watcher.contract.columnar import reference_scan
from watcher.errors import ConfigError
from watcher.judges import load_policy
from watcher.judges.drift import METRICS as DRIFT_METRICS
from watcher.state import F_RATE, MEAN_AT, N_FIELDS, MetricsState
from watcher.stats import MEAN_FIELDS

ROOT = Path(__file__).resolve().parents[2]


def test_entries_are_well_formed() -> None:
    names = [m.name for m in CATALOGUE]
    assert len(set(names)) == len(names)
    for m in CATALOGUE:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", m.name) and m.doc and m.unit
        assert (m.tolerance_mode is ToleranceMode.RELATIVE) == (m.tolerance > 0)  # ratios are > 0
        assert m.on_regression in ("pause", "rollback")
        assert (m.kind is Kind.TAIL) == (m.tail_of is not None) == (m.quantile is not None)
        if m.tail_of is not None:
            assert metric_def(m.tail_of).kind is Kind.MEAN and metric_def(m.tail_of).field == m.field
            assert m.name == f"{m.tail_of}_p{round(m.quantile * 100)}"  # type: ignore[operator]
        for f in m.families:
            assert re.fullmatch(r"[a-z][a-z0-9_]*", f.name) and f.type in ("counter", "gauge")
    assert metric_names() == ("quality", "latency", "latency_pNN", "escalation", "error", "compliance")
    assert metric_def("latency_p999").quantile == 0.999 and metric_def("latency_p999").tail_of == "latency"
    for bad in ("cost", "quality_p95", "latency_p9", "escalation_p95"):
        with pytest.raises(KeyError, match="unknown metric"):
            metric_def(bad)


def test_every_metric_reads_a_turn_field_of_its_type_through_a_column() -> None:
    hints = typing.get_type_hints(Turn)
    fields = {f.name for f in msgspec.structs.fields(Turn)}
    turn = Turn(
        event_id="e", ts=0.0, agent_id="a", version="v", conversation_id="c", latency_ms=812.5,
        quality=0.5, escalated=True, error=False, compliance_violation=True,
    )  # fmt: skip
    cols = TurnColumns([turn])
    for m in CATALOGUE:
        assert m.field in fields, f"{m.name}: the contract has no turn field {m.field}"
        if m.kind is Kind.RATE:
            assert hints[m.field] is bool, m.name
            assert cols.event(m.name).tolist() == [getattr(turn, m.field)]
        else:
            assert getattr(cols, m.column).tolist() == [getattr(turn, m.field)]


def test_the_c_scanner_packs_the_rate_metrics_events_in_catalogue_order() -> None:
    """The scanner names the contract's fields itself (watcher/contract/_turnscan.c): its event bits
    must be the catalogue's rate metrics, in order (``columnar`` unpacks bit i as the i-th)."""
    source = (ROOT / "watcher" / "contract" / "_turnscan.c").read_text()
    keywords = set(re.findall(r'IS\("([a-z_]+)"\)', source))
    assert {m.field for m in CATALOGUE} <= keywords
    flat = re.sub(r'\\n"\s*"', " ", source)
    bits = re.search(r"bits: n uint8 \(([^)]*)\)", flat)
    assert bits is not None
    documented = [(int(v), name) for v, name in re.findall(r"(\d+) ([a-z_]+)", bits.group(1))]
    assert documented == [(1 << i, m.field) for i, m in enumerate(RATE_METRICS)]
    # and the Python reference scanner packs them the same way
    raw = msgspec.json.encode(
        {"event_id": "e", "ts": 0, "agent_id": "a", "version": "v", "conversation_id": "c",
         **{m.field: i % 2 == 0 for i, m in enumerate(RATE_METRICS)}}
    )  # fmt: skip
    packed = reference_scan([raw], 65_536)[5][0]
    assert packed == sum(1 << i for i in range(len(RATE_METRICS)) if i % 2 == 0)


def test_the_bundled_policy_judges_every_catalogue_metric_with_its_defaults() -> None:
    policy = load_policy(None).default
    assert [m.name for m in policy.metrics] == [m.name for m in CATALOGUE]
    for got, want in zip(policy.metrics, CATALOGUE):
        assert (got.kind, got.direction, got.tolerance_mode) == (
            want.kind,
            want.direction,
            want.tolerance_mode,
        )
        assert (got.tolerance, got.promote_tolerance, got.min_samples) == (
            want.tolerance,
            want.promote_tolerance,
            want.min_samples,
        )
        assert (got.on_regression.value, got.critical, got.quantile) == (
            want.on_regression,
            want.critical,
            want.quantile,
        )


def test_a_policy_naming_a_metric_outside_the_catalogue_is_refused_with_the_known_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("defaults:\n  metrics:\n    cost: {tolerance: 1.1}\n")
    with pytest.raises(ConfigError) as err:
        load_policy(path)
    assert err.value.field == "defaults.metrics.cost"
    assert "quality, latency, latency_pNN, escalation, error, compliance" in err.value.message
    path.write_text("defaults:\n  metrics:\n    latency_p99: {tolerance: 1.3}\n")
    p99 = load_policy(path).default.metric("latency_p99")
    assert p99 is not None and p99.kind is Kind.TAIL and p99.quantile == 0.99


def test_the_state_and_the_judges_lay_out_every_metric_of_the_catalogue() -> None:
    snap = MetricsState()
    assert MEAN_AT == {m.name: 1 + j * MEAN_FIELDS for j, m in enumerate(MEAN_METRICS)}  # history
    assert list(F_RATE) == [m.name for m in RATE_METRICS]
    assert N_FIELDS == 1 + len(MEAN_METRICS) * MEAN_FIELDS + len(RATE_METRICS)
    turn = Turn(event_id="e", ts=0.0, agent_id="a", version="v", conversation_id="c", escalated=True)
    snap.update([turn], ["live"])
    got = snap.snapshot(("a", "prod", "v", "live", "", ""))
    assert list(got.events) == list(got.rates) == [m.name for m in RATE_METRICS]
    assert got.events["escalation"] == 1 and got.rates["escalation"] == 1.0
    assert set(DRIFT_METRICS) == {m.name for m in CATALOGUE if m.kind is not Kind.TAIL}


# -- the docs' tables --------------------------------------------------------------------------------
def _section(path: Path, heading: str) -> str:
    text = path.read_text(encoding="utf-8")
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end > 0 else None]


def test_docs_metrics_per_version_table_is_the_catalogues_families() -> None:
    section = _section(ROOT / "docs" / "metrics.md", "## Per version")
    documented: dict[str, str] = {}
    for row in re.findall(r"^\| (`watcher_.*?) \| (\w+) \|", section, re.M):
        for name in re.findall(r"`(watcher_[a-z_]+)", row[0]):
            documented[name] = row[1]
    want = {f"watcher_{f.name}{'_total' if f.type == 'counter' else ''}": f.type for f, _ in SERIES_FAMILIES}
    assert documented == want


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:g}"


def test_docs_statistics_lists_each_metric_with_its_defaults() -> None:
    """docs/statistics.md's table of the metrics, row for row what the catalogue says (the test's
    failure message is the row to write)."""
    section = _section(ROOT / "docs" / "statistics.md", "## Policy file reference")
    for m in CATALOGUE:
        row = (
            f"| `{m.name}` | {m.kind.value} | {m.direction.value} | {m.tolerance_mode.value} "
            f"| {_fmt(m.tolerance)} | {_fmt(m.promote_tolerance)} | {m.min_samples} | {m.on_regression}"
            f"{' (critical)' if m.critical else ''} | {m.doc} |"
        )
        assert row in section, row
    rows = re.findall(r"^\| `([a-z0-9_]+)` \| (mean|rate|tail) \|", section, re.M)
    assert [name for name, _ in rows] == [m.name for m in CATALOGUE]
