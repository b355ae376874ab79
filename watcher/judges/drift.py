"""Drift detectors on each version's own streams (no concurrent control).

A canary is judged against its baseline by the sequential tests of the judge. A version that runs
alone — live without a rollout, or promoted after one — has no control, so watcher watches its own
streams for change instead and raises a *drift signal* (``watcher.drift/v1``), never a rollback: a
traffic-mix change or the time of day moves a version's metrics too (STATISTICS.md).

What is fed (PERFORMANCE.md: per-event detector updates cost ~20 % of throughput):

* Each (agent, environment, version) × metric is a series. Observations are summed per key with
  numpy and cut into **fixed-size blocks** (``mean_block`` = 50 quality scores or log-latencies,
  ``rate_block`` = 100 turns for escalation / error / compliance); one detector update per block.
  Blocks are cut by observation count, not by batch, so the signals do not depend on how the input
  was batched (a replay gives the daemon's signals, up to float rounding).
* Block values are **standardised** before ADWIN with a scale learnt on the first
  ``warmup_blocks`` blocks. ADWIN's bound has a range term in data units (it assumes values in
  [0, 1]); block means have a far smaller spread, and without standardising ADWIN never fired on a
  0.05→0.08 rate shift in 60k turns. Rates use max(binomial, empirical) scale: conversations make
  turns correlated, and the empirical spread catches that.
* Rates use ADWIN on block rates, not a binary detector. Measured (river 0.26.1, per-event 0/1
  streams, 12 seeds, null 120k turns; shift 0.05→0.08 / 0.01→0.04 / 0.002→0.01): DDM alarmed in
  5–7 of 8 null runs at defaults and 1–8 of 12 even with warm_start=1000, drift_threshold=4; EDDM in
  nearly all; HDDM_W and FHDDM (Hoeffding bounds, blind to rare events) missed every shift; HDDM_A
  caught 0.05→0.08 in ~5k turns but missed 0.002→0.01 and costs 4–22 µs per update. ADWIN on
  standardised 100-turn block rates: 0–1 false alarm in 20 null runs of 300k turns, median delay
  2.2k / 0.9k / 1.5k turns, at one update per 100 turns. docs/decisions.md has the table.
* Latency is watched as log-latency (a +25 % change is a shift of ln 1.25 whatever the level);
  before/after are reported as geometric means in ms.

After a detection the series restarts (new detector, new warm-up on the new regime), and signals
of one series are at most one per ``cooldown_s`` of event time: one drift, one signal. river 0.26.1's
ADWIN resets itself on the update after a detection and never counts detections (``n_detections``
stays 0), so the monitor counts them itself.

State: river's ADWIN (a Rust object) is not serialised. ``to_state`` keeps the standardised values
fed since the last restart (at most ``history_blocks``) and ``from_state`` replays them into a fresh
detector: exact while a series has fed fewer blocks than that, otherwise the detector forgets the
oldest part of its window (documented loss; no pickle).
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from watcher.contract import CATALOGUE, Direction, Kind, MetricDef, TurnColumns, rfc3339

if TYPE_CHECKING:
    from river.drift import ADWIN

DRIFT_SCHEMA = "watcher.drift/v1"
STATE_VERSION = 1
# the catalogue's metrics of a version's own stream (a tail needs a control's quantile: not watched)
_DEFS: dict[str, MetricDef] = {m.name: m for m in CATALOGUE if m.kind is not Kind.TAIL}
METRICS: tuple[str, ...] = tuple(_DEFS)
DETECTOR = "adwin"

VersionKey = tuple[str, str, str]  # (agent_id, environment, version)


class TurnLike(Protocol):
    """The attributes of ``watcher.contract.Turn`` the monitor reads."""

    ts: float
    agent_id: str
    environment: str
    version: str
    latency_ms: float | None
    quality: float | None
    escalated: bool
    error: bool
    compliance_violation: bool


@dataclass(frozen=True, slots=True)
class DriftSignal:
    """A change in one version's own metric stream (``watcher.drift/v1``)."""

    signal_id: str
    ts: float  # event time of the block that triggered the detection
    agent_id: str
    environment: str
    version: str
    metric: str  # quality, latency, escalation, error, compliance
    detector: str  # "adwin"
    direction: str  # "up" or "down"
    worse: bool  # the change makes the metric worse (quality down, the others up)
    before: float  # estimate before the change (quality: mean; latency: geometric mean ms; rates: ratio)
    after: float  # estimate after the change, same unit
    change_ts: float | None  # event time where the change most likely started
    sequence: int  # n-th signal of this series, from 1
    reason: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ts"] = rfc3339(self.ts)
        d["ts_unix"] = self.ts
        d["change_ts"] = rfc3339(self.change_ts) if self.change_ts is not None else None
        d["change_ts_unix"] = self.change_ts
        return {"schema": DRIFT_SCHEMA, **d}


def signal_id(key: VersionKey, metric: str, sequence: int, ts: float) -> str:
    """Stable: the same stream replayed gives the same ids, so receivers can deduplicate."""
    text = f"{key[0]}|{key[1]}|{key[2]}|{metric}|{sequence}|{ts:.3f}"
    return "drift-" + hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass(slots=True)
class _Series:
    """One (version, metric) stream: pending block, warm-up, detector, recent history.

    The history is made at the first complete block and the detector with its record when the
    warm-up ends: on a platform of thousands of agents most versions never complete a block, and two
    bounded deques and an ADWIN cost ~2.5 KB per (version, metric) whatever the traffic.
    """

    rate: bool
    history_blocks: int
    pend_sum: float = 0.0
    pend_n: int = 0
    warm: list[float] = field(default_factory=list)
    mu: float | None = None
    sigma: float | None = None
    hist: deque[tuple[float, float]] | None = None  # (block ts, block value) since restart
    fed: deque[float] | None = None  # standardised values fed to the detector since restart
    detector: ADWIN | None = None
    cooldown_until: float | None = None
    signals: int = 0
    detections: int = 0

    def history(self) -> deque[tuple[float, float]]:
        if self.hist is None:
            self.hist = deque(maxlen=self.history_blocks)
        return self.hist

    def start_detector(self, delta: float) -> tuple[ADWIN, deque[float]]:
        self.detector = _new_detector(delta)
        self.fed = deque(maxlen=self.history_blocks)
        return self.detector, self.fed

    def restart(self) -> None:
        self.warm, self.mu, self.sigma = [], None, None
        self.hist = self.fed = self.detector = None


def _new_detector(delta: float = 0.002) -> ADWIN:
    # imported when the first detector is made: river (and the scipy.stats it loads) take seconds to
    # import, which commands that never watch a version (check-config, --help) should not pay
    from river.drift import ADWIN

    # clock=1: one update per block is already rare; checking every 32 blocks would add delay.
    return ADWIN(delta=delta, clock=1)


def _blocks(s: _Series, values: np.ndarray, ts: np.ndarray, size: int) -> list[tuple[float, float]]:
    """Cut ``values`` (in order) into complete blocks after the pending part: (block mean, last ts)."""
    need = size - s.pend_n
    if len(values) < need:
        s.pend_sum += float(values.sum())
        s.pend_n += len(values)
        return []
    out = [((s.pend_sum + float(values[:need].sum())) / size, float(ts[need - 1]))]
    rest, rest_ts = values[need:], ts[need:]
    m = len(rest) // size
    if m:
        means = rest[: m * size].reshape(m, size).mean(axis=1)
        out.extend(zip(means.tolist(), rest_ts[size - 1 : m * size : size].tolist()))
    tail = rest[m * size :]
    s.pend_sum, s.pend_n = float(tail.sum()), len(tail)
    return out


def _split(hist: Sequence[tuple[float, float]]) -> tuple[float, float, float | None]:
    """Most likely change point in the recent blocks: (before mean, after mean, change ts)."""
    if len(hist) < 2:
        v = hist[-1][1] if hist else float("nan")
        return v, v, None
    x = np.array([v for _, v in hist])
    n = len(x)
    c = np.cumsum(x)
    k = np.arange(1, n)
    before = c[:-1] / k
    after = (c[-1] - c[:-1]) / (n - k)
    score = np.abs(after - before) * np.sqrt(k * (n - k) / n)
    i = int(np.argmax(score))
    return float(before[i]), float(after[i]), hist[i + 1][0]


class DriftMonitor:
    """Per-version drift detection, fed per batch; ``update`` returns the new signals."""

    def __init__(
        self,
        *,
        metrics: Sequence[str] = METRICS,
        mean_block: int = 50,
        rate_block: int = 100,
        warmup_blocks: int = 30,
        delta: float = 0.002,
        cooldown_s: float = 1800.0,
        history_blocks: int = 512,
        auto_watch_live: bool = True,
    ) -> None:
        unknown = set(metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"unknown drift metrics {sorted(unknown)}; known: {METRICS}")
        if min(mean_block, rate_block, warmup_blocks, history_blocks) < 2:
            raise ValueError("block sizes, warmup_blocks and history_blocks must be >= 2")
        self.metrics = tuple(metrics)
        self.mean_block = mean_block
        self.rate_block = rate_block
        self.warmup_blocks = warmup_blocks
        self.delta = delta
        self.cooldown_s = cooldown_s
        self.history_blocks = history_blocks
        # A turn on the "live" arm is a version running without a rollout: watch it without being
        # told. Versions in a rollout carry baseline/canary arms and are left to the judge.
        self.auto_watch_live = auto_watch_live
        self._watched: set[VersionKey] = set()
        self._series: dict[tuple[VersionKey, str], _Series] = {}

    # -- what to watch --

    def watch(self, agent_id: str, environment: str, version: str) -> None:
        self._watched.add((agent_id, environment, version))

    def unwatch(self, agent_id: str, environment: str, version: str) -> None:
        """Stop watching and forget the series: after a rollout the version starts afresh."""
        key = (agent_id, environment, version)
        self._watched.discard(key)
        for metric in self.metrics:
            self._series.pop((key, metric), None)

    def watched(self) -> list[VersionKey]:
        return sorted(self._watched)

    def watches(self, key: VersionKey) -> bool:
        """Whether ``key`` is watched (per route of every batch: a set lookup, not the sorted list)."""
        return key in self._watched

    # -- the hot path --

    def update(
        self, turns: Sequence[TurnLike], arms: Sequence[str], columns: TurnColumns | None = None
    ) -> list[DriftSignal]:
        """Feed one batch; ``columns`` (``DecodedBatch.columns``, routed) skip the per-turn loop."""
        if columns is not None and columns.routed is not None and columns.routed[0] is arms:
            groups = self._groups(columns)
        else:
            groups = [(key, _matrix(group)) for key, group in self._group_turns(turns, arms).items()]
        signals: list[DriftSignal] = []
        for key, matrix in groups:
            for metric in self.metrics:
                values, ts = _column(matrix, metric)
                if len(values):
                    signals.extend(self._feed(key, metric, values, ts))
        # Event-time order, whatever the batching (within a batch, series are visited key by key).
        signals.sort(key=lambda s: (s.ts, s.agent_id, s.environment, s.version, s.metric))
        return signals

    def _groups(self, cols: TurnColumns) -> list[tuple[VersionKey, np.ndarray]]:
        """What ``_group_turns`` + ``_matrix`` give, per route key instead of per turn: the turns of
        each fed version in order, versions in order of their first fed turn."""
        assert cols.routed is not None
        resolved = cols.routed[1]
        keys, first, code = cols.route_keys, cols.route_first.tolist(), cols.route_code
        watched, auto = self._watched, self.auto_watch_live
        per_version: dict[VersionKey, list[int]] = {}
        for c, (a, e, v, _) in enumerate(keys):
            per_version.setdefault((a, e, v), []).append(c)
        found: list[tuple[int, VersionKey, np.ndarray]] = []
        for vk, codes in per_version.items():
            fed = [c for c in codes if resolved[c] != "shadow"]
            if not fed:
                continue
            if vk in watched:
                start = 0
            else:
                live = [first[c] for c in fed if resolved[c] == "live"]
                if not (auto and live):
                    continue
                start = min(live)  # the turn loop starts watching at the version's first live turn
                watched.add(vk)
            lut = np.zeros(len(keys), bool)
            lut[fed] = True
            idx = np.flatnonzero(lut[code])
            if start:
                idx = idx[idx >= start]
            if len(idx):
                found.append((int(idx[0]), vk, idx))
        found.sort(key=lambda f: f[0])
        out = []
        for _, vk, idx in found:
            columns = [
                (cols.event(d.name) if d.kind is Kind.RATE else getattr(cols, d.column))[idx]
                for d in _DEFS.values()
            ]
            matrix = np.column_stack((cols.ts[idx], *columns)).astype(float, copy=False)
            out.append((vk, matrix))
        return out

    def _group_turns(
        self, turns: Sequence[TurnLike], arms: Sequence[str]
    ) -> dict[VersionKey, list[TurnLike]]:
        by_key: dict[VersionKey, list[TurnLike]] = {}
        watched, auto = self._watched, self.auto_watch_live
        for t, arm in zip(turns, arms):
            if arm == "shadow":
                continue  # a shadow's answers never reach customers: not the version's live stream
            key = (t.agent_id, t.environment, t.version)
            if key not in watched:
                if not (auto and arm == "live"):
                    continue
                watched.add(key)
            group = by_key.get(key)
            if group is None:
                by_key[key] = group = []
            group.append(t)
        return by_key

    def _feed(self, key: VersionKey, metric: str, values: np.ndarray, ts: np.ndarray) -> list[DriftSignal]:
        s = self._series.get((key, metric))
        if s is None:
            s = _Series(rate=_DEFS[metric].kind is Kind.RATE, history_blocks=self.history_blocks)
            self._series[(key, metric)] = s
        size = self.rate_block if s.rate else self.mean_block
        out: list[DriftSignal] = []
        for value, bts in _blocks(s, values, ts, size):
            s.history().append((bts, value))
            if s.mu is None or s.sigma is None:
                s.warm.append(value)
                if len(s.warm) >= self.warmup_blocks:
                    s.mu, s.sigma = _scale(s.warm, size if s.rate else None)
                continue
            detector, fed = s.detector, s.fed
            if detector is None or fed is None:
                detector, fed = s.start_detector(self.delta)
            z = (value - s.mu) / s.sigma
            fed.append(z)
            detector.update(z)
            if not detector.drift_detected:
                continue
            s.detections += 1
            if s.cooldown_until is None or bts >= s.cooldown_until:
                out.append(self._signal(key, metric, s, bts))
                s.cooldown_until = bts + self.cooldown_s
            s.restart()
        return out

    def _signal(self, key: VersionKey, metric: str, s: _Series, ts: float) -> DriftSignal:
        before, after, change_ts = _split(list(s.history()))
        s.signals += 1
        up = after > before
        d = _DEFS[metric]
        worse = (not up) if d.direction is Direction.LOWER_IS_WORSE else up
        if d.log_scale:
            before, after = math.expm1(before), math.expm1(after)
            shown = (
                f"{before:.0f} {d.unit} -> {after:.0f} {d.unit} ({(after / before - 1) * 100:+.0f} %, "
                "geometric mean)"
            )
        elif s.rate:
            shown = f"{before:.2%} -> {after:.2%}"
        else:
            shown = f"{before:.3f} -> {after:.3f}"
        since = f" since ~{rfc3339(change_ts)}" if change_ts is not None else ""
        size = self.rate_block if s.rate else self.mean_block
        reason = (
            f"{metric} of {key[0]}/{key[1]} {key[2]} drifted {'up' if up else 'down'}{since}: {shown} "
            f"(ADWIN on {size}-observation blocks, delta={self.delta})"
        )
        return DriftSignal(
            signal_id=signal_id(key, metric, s.signals, ts),
            ts=ts,
            agent_id=key[0],
            environment=key[1],
            version=key[2],
            metric=metric,
            detector=DETECTOR,
            direction="up" if up else "down",
            worse=worse,
            before=before,
            after=after,
            change_ts=change_ts,
            sequence=s.signals,
            reason=reason,
        )

    def detections(self, agent_id: str, environment: str, version: str, metric: str) -> int:
        """Detector firings of a series (within a cooldown they are counted but not signalled)."""
        s = self._series.get(((agent_id, environment, version), metric))
        return s.detections if s else 0

    # -- state --

    def to_state(self) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "watched": [list(k) for k in sorted(self._watched)],
            "series": [
                {
                    "key": list(key),
                    "metric": metric,
                    "pend_sum": s.pend_sum,
                    "pend_n": s.pend_n,
                    "warm": list(s.warm),
                    "mu": s.mu,
                    "sigma": s.sigma,
                    "hist": [[t, v] for t, v in s.hist or ()],
                    "fed": list(s.fed or ()),
                    "cooldown_until": s.cooldown_until,
                    "signals": s.signals,
                    "detections": s.detections,
                }
                for (key, metric), s in sorted(self._series.items())
            ],
        }

    @classmethod
    def from_state(cls, d: dict[str, Any], **config: Any) -> DriftMonitor:
        """Restore; ``config`` are the constructor's arguments (settings are not part of the state)."""
        if d.get("v") != STATE_VERSION:
            raise ValueError(f"unsupported drift state version {d.get('v')!r}")
        m = cls(**config)
        m._watched = {(a, e, v) for a, e, v in d["watched"]}
        for item in d["series"]:
            metric = item["metric"]
            if metric not in m.metrics:
                continue
            key = (item["key"][0], item["key"][1], item["key"][2])
            s = _Series(rate=_DEFS[metric].kind is Kind.RATE, history_blocks=m.history_blocks)
            s.pend_sum, s.pend_n = float(item["pend_sum"]), int(item["pend_n"])
            s.warm = [float(v) for v in item["warm"]]
            s.mu, s.sigma = item["mu"], item["sigma"]
            if item["hist"]:
                s.history().extend((float(t), float(v)) for t, v in item["hist"])
            s.cooldown_until = item["cooldown_until"]
            s.signals, s.detections = int(item["signals"]), int(item["detections"])
            if s.mu is not None and s.sigma is not None:
                detector, fed = s.start_detector(m.delta)
                for z in item["fed"]:
                    fed.append(float(z))
                    detector.update(float(z))
                    if detector.drift_detected:  # only possible after a truncated history: start over
                        detector = s.detector = _new_detector(m.delta)
            m._series[(key, metric)] = s
        return m


def _scale(warm: list[float], rate_block: int | None) -> tuple[float, float]:
    x = np.asarray(warm)
    mu = float(x.mean())
    sd = float(x.std(ddof=1))
    if rate_block is not None:
        # At least the binomial spread, with the rate floored at half an event in the warm-up, so a
        # warm-up without events (rare compliance flags) does not make the first event a "drift".
        p = max(mu, 0.5 / (len(x) * rate_block))
        sd = max(sd, math.sqrt(p * (1 - p) / rate_block))
    return mu, max(sd, 1e-9)


_COLUMN = {name: 1 + i for i, name in enumerate(_DEFS)}  # of ``_matrix``: ts, then each metric
_FIELDS = operator.attrgetter("ts", *(d.field for d in _DEFS.values()))


def _matrix(group: Sequence[TurnLike]) -> np.ndarray:
    """One pass over the turns (the per-event cost: ~0.3 µs): ts and the metrics, None -> nan."""
    return np.array(list(map(_FIELDS, group)), dtype=float)


def _column(m: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    d = _DEFS[metric]
    values, ts = m[:, _COLUMN[metric]], m[:, 0]
    if d.kind is Kind.RATE:
        return values, ts
    ok = ~np.isnan(values)
    values, ts = values[ok], ts[ok]
    if d.log_scale:
        values = np.log1p(values)  # log1p: a 0 ms latency stays finite
    return values, ts


__all__ = ["DETECTOR", "DRIFT_SCHEMA", "METRICS", "DriftMonitor", "DriftSignal", "TurnLike", "signal_id"]
