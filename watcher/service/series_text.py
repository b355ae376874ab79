"""The per-series families of ``/metrics``, kept as text and redone only where the state changed.

At a thousand agents the state holds ~7,600 series and their families are ~150,000 lines (24 MB):
computing every series' snapshots and formatting every line at each scrape held the event loop for
seconds (issue #13). ``SeriesText`` keeps each series' lines, one piece per family, and redoes only
the series of the (agent, environment)s the state reports changed since the last scrape
(``take_dirty``: a batch touched them, a version left, their cumulative part was reset, or data left
their recent window), one agent per step, so a caller can hand the event loop back between steps.
An agent is the unit because its ``traffic_share_ratio`` lines depend on all of its versions.

The text is exactly what prometheus-client's ``generate_latest`` wrote for the same families (the
families in order of first appearance over the series, each series' lines in the state's order, label
pairs sorted by name, values through ``floatToGoString``); tests/service/test_exposition.py holds it
to a reference built with prometheus-client's own families.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Literal

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from watcher.contract import SERIES_FAMILIES, Family, MetricDef

if TYPE_CHECKING:
    from watcher.engine import EngineView, SeriesView
    from watcher.state import SeriesKey, SeriesSnapshot

__all__ = ["Rendered", "Selection", "SeriesText", "metrics_chunks", "render_metrics"]

log = logging.getLogger(__name__)

VERSION_LABELS = ("agent", "environment", "version", "arm")
SEGMENT_LABELS = (*VERSION_LABELS, "segment_key", "segment_value")
Window = Literal["cumulative", "recent"]
Selection = Literal["auto", "all", "rollouts"]  # telemetry.series
WINDOWS: tuple[Window, ...] = ("cumulative", "recent")
QUANTILES = (("0.5", "latency_p50_ms"), ("0.95", "latency_p95_ms"), ("0.99", "latency_p99_ms"))

HYSTERESIS = 0.9  # auto: limited beyond the limit, every agent again at or below 0.9 of it
STEP_SERIES = 32  # series of one agent per step of ``steps()``
CHUNK_SERIES = 1000  # series per piece of text (a few hundred KB): see ``metrics_chunks``
Agent = tuple[str, str]
Row = tuple[bytes, ...]  # one series' lines per family slot (b"" where it has none)


class Rendered(Metric):
    """Families already in the text format, which ``metrics_chunks`` copies into the answer. It has
    no samples: prometheus-client's ``generate_latest`` (and ``get_sample_value``) do not see them."""

    def __init__(self, build: Callable[[], list[bytes]]) -> None:
        super().__init__("watcher_series", "pre-rendered per-series families", "unknown")
        self._build = build

    def chunks(self) -> list[bytes]:
        """The text, in pieces; built where it is read (``Exposition``: in a worker thread, holding
        its lock)."""
        return self._build()


class _One(Collector):
    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> list[Metric]:
        return [self._metric]


def metrics_chunks(registry: Collector) -> list[bytes]:
    """The Prometheus text of ``registry``, in pieces: prometheus-client's ``generate_latest`` for
    each family, the pieces of a ``Rendered`` one as they are. Pieces, not one string: joining tens
    of megabytes is one step that holds the interpreter (and so the event loop) throughout."""
    out: list[bytes] = []
    for m in registry.collect():
        if isinstance(m, Rendered):
            out.extend(m.chunks())
        else:
            out.append(generate_latest(_One(m)))
    return out


def render_metrics(registry: Collector) -> bytes:
    """The Prometheus text of ``registry`` in one piece (tests, tools)."""
    return b"".join(metrics_chunks(registry))


def _go(value: float) -> str:
    """``floatToGoString``, a third of the formatting's time: below a million (and not NaN or
    infinite) its answer is Python's ``repr`` of the float."""
    d = float(value)
    return repr(d) if -1e6 < d < 1e6 else floatToGoString(d)


def _escape(value: str) -> str:
    """A label value as the text format quotes it (prometheus-client's escaping)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


@dataclass(frozen=True)
class _Slot:
    """One family of the per-series exposition (``watcher_<family>`` or ``watcher_segment_<family>``)."""

    family: Family
    metric: MetricDef | None
    segmented: bool
    header: bytes  # the HELP and TYPE lines, as generate_latest writes them
    # a line up to its value, as a ``str.format`` template over the line's label values: the series'
    # labels, then the window (gauges), then the family's own (a quantile); pairs sorted by name
    template: str

    @classmethod
    def make(cls, f: Family, m: MetricDef | None, segmented: bool) -> _Slot:
        base = SEGMENT_LABELS if segmented else VERSION_LABELS
        names = [*base, *(() if f.type == "counter" else ("window",)), *f.labels]
        prefix = "watcher_segment_" if segmented else "watcher_"
        kind = CounterMetricFamily if f.type == "counter" else GaugeMetricFamily
        probe = kind(prefix + f.name, f.doc, labels=names)
        header = generate_latest(_One(probe))
        probe.add_metric(["x"] * len(names), 0.0)
        pairs = ",".join(f'{names[i]}="{{{i}}}"' for i in sorted(range(len(names)), key=names.__getitem__))
        return cls(f, m, segmented, header, f"{probe.samples[0].name}{{{{{pairs}}}}} ")

    def line(self, values: list[str], value: float) -> str:
        return self.template.format(*values) + _go(value) + "\n"


SLOTS: tuple[_Slot, ...] = tuple(
    _Slot.make(f, m, segmented)
    for segmented in (False, True)
    for f, m in SERIES_FAMILIES
    if not (segmented and f.stat == "share")  # a segment has no share of the agent's turns
)


def _stat(f: Family, m: MetricDef | None, snap: SeriesSnapshot) -> list[tuple[tuple[str, ...], float]]:
    """The samples of family ``f`` in one series' snapshot: (extra label values, value); none when the
    statistic has no value yet (no quality score, no latency, no turn)."""
    stat = f.stat
    if stat in ("turns", "conversations"):
        return [((), float(getattr(snap, stat)))]
    assert m is not None, f.name
    if stat == "events":
        return [((), float(snap.events[m.name]))]
    if stat == "rate":
        rate = snap.rates[m.name]
        return [] if rate is None else [((), rate)]
    if stat == "mean":  # the mean metric with a mean in the state: quality
        return [] if snap.quality_mean is None else [((), snap.quality_mean)]
    if stat == "stddev":
        return [] if snap.quality_mean is None else [((), snap.quality_std or 0.0)]
    if stat == "quantiles":  # latency, from the series' sketch, in seconds
        found = [(q, getattr(snap, attr)) for q, attr in QUANTILES]
        return [((q,), v / 1000.0) for q, v in found if v is not None]
    raise ValueError(f"no series statistic {stat!r} (family {f.name})")


def _row(
    key: SeriesKey,
    snaps: dict[Window, SeriesSnapshot],
    shares: dict[Window, dict[tuple[str, str], float]],
) -> Row:
    """One series' lines, per slot of ``SLOTS`` (cumulative before recent, as the windows go)."""
    agent, env, version, arm, seg_key, seg_value = key
    segmented = bool(seg_key)
    values = [_escape(v) for v in (agent, env, version, arm, *((seg_key, seg_value) if segmented else ()))]
    out: list[bytes] = []
    for slot in SLOTS:
        if slot.segmented != segmented:
            out.append(b"")
            continue
        f, m = slot.family, slot.metric
        lines: list[str] = []
        if f.type == "counter":  # cumulative, no window label
            lines.extend(slot.line([*values, *extra], v) for extra, v in _stat(f, m, snaps["cumulative"]))
        else:
            for window in WINDOWS:
                if f.stat == "share":
                    share = shares[window].get((version, arm))
                    if share is not None:
                        lines.append(slot.line([*values, window], share))
                    continue
                for extra, v in _stat(f, m, snaps[window]):
                    lines.append(slot.line([*values, window, *extra], v))
        out.append("".join(lines).encode())
    return tuple(out)


class SeriesText:
    """Every series' lines, redone per changed agent. ``steps()`` brings them up to date, one agent
    per step; ``rendered()`` is the text of the state as the last steps left it."""

    def __init__(self, engine: EngineView, series: Selection = "all", limit: int = 20_000) -> None:
        self._engine = engine
        self._selection = series
        self._limit = limit
        self._rows: dict[SeriesKey, Row] = {}
        self._of_agent: dict[Agent, set[SeriesKey]] = {}
        self._known: set[SeriesKey] = set()  # the keys in _of_agent: the state's at the last steps()
        self._present = [0] * len(SLOTS)  # per slot: the series with lines in it
        self._keys: list[SeriesKey] = []  # the state's series, in its order, at the last steps()
        self._pending: set[Agent] = set()  # agents to redo (reported dirty, not redone yet)
        self._shown: set[Agent] | None = None  # the agents exposed (None: every agent)
        self.redone = 0  # series whose lines the last steps() computed

    @property
    def exposed(self) -> int:
        """Series whose families the text carries (all of the state's unless limited)."""
        return len(self._rows)

    def _wanted(self, keys: list[SeriesKey]) -> set[Agent] | None:
        """The agents whose series are exposed, None for every agent: with ``rollouts`` (or ``auto``
        beyond the limit) those with an active rollout, the ones decisions are about. ``auto`` goes
        back to every agent only once the state is a tenth below the limit: a state that hovers at
        the limit would otherwise redo (and drop) every agent's lines at alternate scrapes."""
        if self._selection == "all":
            return None
        if self._selection == "auto":
            limit = self._limit if self._shown is None else int(self._limit * HYSTERESIS)
            if len(keys) <= limit:
                return None
        return {(r.agent_id, r.environment) for r in self._engine.registry.all() if r.active}

    def _select(self, keys: list[SeriesKey], dirty: set[Agent]) -> None:
        """Drop the rows of agents no longer exposed; mark the newly exposed ones to redo."""
        wanted, shown = self._wanted(keys), self._shown
        if wanted == shown:
            return
        everyone = set(self._of_agent)
        for agent in (everyone if shown is None else shown) - (everyone if wanted is None else wanted):
            for key in self._of_agent.get(agent, ()):
                row = self._rows.pop(key, None)
                if row is not None:
                    self._count(row, -1)
        dirty |= (everyone if wanted is None else wanted) - (everyone if shown is None else shown)
        self._shown = wanted

    def steps(self) -> Iterator[None]:
        """Bring the lines up to date: the series of every agent the state reports changed, and of
        every agent with series that appeared or left. Yields after each agent (and within a busy one)."""
        state = self._engine.state  # one view for the whole pass (a partition scope's caches where
        keys = state.keys()  # each series is)
        dirty = state.take_dirty()
        live = set(keys)
        known = self._known
        for key in known - live:
            self._drop(key)
            dirty.add(key[:2])
        for key in live - known:
            self._of_agent.setdefault(key[:2], set()).add(key)
            dirty.add(key[:2])
        self._known = live
        self._keys = keys
        self.redone = 0
        self._select(keys, dirty)
        shown = self._shown
        # an agent leaves the pending set once redone: a pass abandoned half-way (a cancelled scrape)
        # leaves the rest for the next, since take_dirty() will not report them again
        self._pending |= dirty
        for agent in list(self._pending):
            if shown is None or agent in shown:
                yield from self._redo(agent, state)
            self._pending.discard(agent)
            yield

    def _snapshots(self, key: SeriesKey, state: SeriesView) -> dict[Window, SeriesSnapshot] | None:
        try:
            return {w: state.snapshot(key, w) for w in WINDOWS}
        except KeyError:  # the series left since steps() began
            self._drop(key)
            return None

    def _drop(self, key: SeriesKey) -> None:
        row = self._rows.pop(key, None)
        if row is not None:
            self._count(row, -1)
        mine = self._of_agent.get(key[:2])
        if mine is not None:
            mine.discard(key)
            if not mine:
                del self._of_agent[key[:2]]

    def _count(self, row: Row, sign: int) -> None:
        for i, text in enumerate(row):
            if text:
                self._present[i] += sign

    def _redo(self, agent: Agent, state: SeriesView) -> Iterator[None]:
        """An agent's series; yields every ``STEP_SERIES`` of them (a busy agent has hundreds of
        segment series). Its overall series first, all from one look: their shares of the agent's
        turns need every version at once. Each series' lines come from one look at it."""
        keys = sorted(self._of_agent.get(agent, ()), key=lambda k: bool(k[4] or k[5]))
        overall = [k for k in keys if not k[4] and not k[5]]
        snaps = {k: s for k in overall if (s := self._snapshots(k, state)) is not None}
        shares: dict[Window, dict[tuple[str, str], float]] = {}
        for window in WINDOWS:
            turns = {(k[2], k[3]): s[window].turns for k, s in snaps.items()}
            total = sum(turns.values())
            shares[window] = {va: t / total for va, t in turns.items()} if total else {}
        for n, key in enumerate(keys, start=1):
            if n % STEP_SERIES == 0:
                yield
            s = snaps.get(key) if not key[4] and not key[5] else self._snapshots(key, state)
            if s is None:
                continue
            try:
                row = _row(key, s, shares)
            except Exception:  # a scrape must never take the daemon down; the log says why
                log.exception("exposing series %s failed", key)
                continue
            old = self._rows.get(key)
            if old is not None:
                self._count(old, -1)
            self._rows[key] = row
            self._count(row, +1)
            self.redone += 1

    def rendered(self) -> Rendered:
        """The state's sizes and every per-series family, as the last ``steps()`` left them: joined
        into text when read, which may be in a worker thread while the loop changes the state (the
        text reads only this object's rows, which only ``steps()`` changes: read it before the next)."""

        def build() -> list[bytes]:
            keys = self._keys
            rows = [r for r in map(self._rows.get, keys) if r is not None]
            parts = [_sizes(keys, len(rows))]
            for i in _first_appearance(rows, sum(1 for n in self._present if n)):
                parts.append(SLOTS[i].header)
                lines = itemgetter(i)
                for at in range(0, len(rows), CHUNK_SERIES):
                    parts.append(b"".join(map(lines, rows[at : at + CHUNK_SERIES])))
            return parts

        return Rendered(build)


def _first_appearance(rows: list[Row], families: int) -> list[int]:
    """The slots in the order generate_latest met them: by series, then by slot within a series."""
    seen: dict[int, None] = {}
    for row in rows:
        for i, text in enumerate(row):
            if text and i not in seen:
                seen[i] = None
        if len(seen) == families:
            break
    return list(seen)


def _sizes(keys: list[SeriesKey], exposed: int) -> bytes:
    """What the state holds: series, versions and agents (retired and idle versions leave it), and
    how many of the series the per-series families carry (``telemetry.series``)."""
    versions = {k[:3] for k in keys}
    families = [
        GaugeMetricFamily(name, doc, value=value)
        for name, doc, value in (
            (
                "watcher_state_series",
                "series in the state (one per version, arm and segment value)",
                len(keys),
            ),
            ("watcher_state_versions", "(agent, environment, version)s in the state", len(versions)),
            ("watcher_state_agents", "(agent, environment)s in the state", len({k[:2] for k in versions})),
            (
                "watcher_state_series_exposed",
                "series whose families this answer carries (telemetry.series: all, or the active rollouts')",
                exposed,
            ),
        )
    ]
    return b"".join(generate_latest(_One(f)) for f in families)
