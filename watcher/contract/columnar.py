"""The columnar fast path of ``decode_batch``: a batch of turn messages straight into ``TurnColumns``.

msgspec decodes a turn into a ``Turn`` object of ~16 Python objects, which every consumer then reads
back column by column; per event, building, reading and freeing them costs more than the rest of the
engine. The optional C scanner ``watcher.contract._turnscan`` reads the messages of the usual form (no escapes
in the contract's strings, plain numbers; fields outside the contract are skipped; docs/performance.md)
and writes their values straight into columns, interning the repeated strings (route keys, segments,
flags) once per batch.

Its one rule is soundness: a message it accepts is one ``msgspec.json.Decoder(Turn)`` accepts, with the
same values (tests/test_turnscan.py checks it differentially, over realistic, generated and mutated
messages). Everything else it lists as *slow*, and those messages take the per-message path that names
the reject reason. If a slow message turns out to be a valid turn (say, an id spelt with an escape),
the whole batch takes the object path: the fast path is an optimisation of the usual case, never a
second definition of the contract.

``Turn`` objects are still available (``DecodedBatch.turns``): a ``LazyTurns`` decodes them from their
bytes on first access, for the consumers that read whole events (the shadow judge, a late turn's
dead letter, an auto-started rollout's first timestamp).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import msgspec
import numpy as np

from watcher.contract.catalogue import RATE_METRICS
from watcher.contract.columns import TurnColumns, renumber
from watcher.contract.dedup import Deduplicator
from watcher.contract.schema import Turn

try:  # optional: built from watcher/contract/_turnscan.c when a compiler is present (pyproject.toml)
    from watcher.contract import _turnscan as _native
except ImportError:  # pragma: no cover - depends on the install
    _native = None  # type: ignore[assignment]

__all__ = ["LazyTurns", "ScanResult", "Scanned", "available", "reference_scan", "scan_turns", "turn_columns"]

_TURN_DECODER = msgspec.json.Decoder(Turn)

# (fast_index, slow, ts, latency, quality, bits, turn, event_id, conversation_id,
#  route_code, route_keys, segment_code, segments, flag_code, flag_dicts, trace_id); see
#  watcher/contract/_turnscan.c (trace_id: None when no turn of the batch has one).
# bit i of ``bits`` is the event of the catalogue's i-th rate metric (the scanner's order, checked by
# tests/contract/test_catalogue.py)
ScanResult = tuple[
    bytes,
    list[int],
    bytes,
    bytes,
    bytes,
    bytes,
    bytes,
    list[str],
    list[str],
    bytes,
    list[tuple[str, str, str, "str | None"]],
    bytes,
    list[dict[str, str]],
    bytes,
    list[dict[str, str]],
    "list[str | None] | None",
]
Scanner = Callable[[list[Any], int], ScanResult]


def available() -> bool:
    """True when the C scanner is built (``pip install`` with a C compiler)."""
    return _native is not None


def default_scanner() -> Scanner | None:
    return _native.scan if _native is not None else None


class LazyTurns(Sequence[Turn]):
    """The batch's turns as ``Turn`` objects, decoded from their bytes only when asked for.

    ``index[i]`` is the position in ``raws`` of turn ``i``; ``ts`` its float timestamp (the scanner's,
    equal to what the object path sets). A whole-list access decodes every turn once and keeps them.
    """

    __slots__ = ("_raws", "_index", "_ts", "_items")

    def __init__(self, raws: Sequence[Any], index: np.ndarray, ts: np.ndarray) -> None:
        self._raws = raws
        self._index = index
        self._ts = ts
        self._items: list[Turn] | None = None

    def __len__(self) -> int:
        return len(self._index)

    @overload
    def __getitem__(self, i: int) -> Turn: ...

    @overload
    def __getitem__(self, i: slice) -> LazyTurns: ...

    def __getitem__(self, i: int | slice) -> Turn | LazyTurns:
        if isinstance(i, slice):
            return LazyTurns(self._raws, self._index[i], self._ts[i])
        if self._items is not None:
            return self._items[i]
        n = len(self._index)
        if not -n <= i < n:
            raise IndexError("turn index out of range")
        return self._decode(int(self._index[i]), float(self._ts[i]))

    def __iter__(self) -> Iterator[Turn]:
        return iter(self.materialize())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (LazyTurns, list, tuple)):
            return self.materialize() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a mutable-view sequence, like list

    def __repr__(self) -> str:
        return f"LazyTurns({len(self)} turns)"

    def take(self, pos: np.ndarray) -> LazyTurns:
        """The turns at positions ``pos`` (decoded objects are shared, not decoded again)."""
        sub = LazyTurns(self._raws, self._index[pos], self._ts[pos])
        if self._items is not None:
            sub._items = [self._items[i] for i in pos.tolist()]
        return sub

    def materialize(self) -> list[Turn]:
        if self._items is None:
            self._items = list(map(self._decode, self._index.tolist(), self._ts.tolist()))
        return self._items

    def _decode(self, j: int, ts: float) -> Turn:
        turn = _TURN_DECODER.decode(self._raws[j])
        turn.ts = ts  # the contract's float (an RFC 3339 ts decodes as a datetime)
        return turn


@dataclass(frozen=True, slots=True)
class Scanned:
    """A batch the scanner read: its turn columns (``ScanResult``) and the messages it left (``slow``),
    none of which is a valid turn."""

    result: ScanResult

    @property
    def slow(self) -> list[int]:
        return self.result[1]


def scan_turns(raws: list[Any], max_bytes: int, scanner: Scanner | None = None) -> Scanned | None:
    """The batch through the scanner, or None when it must take the object path: no scanner, or a
    message it left is a valid turn (the object path keeps message order)."""
    scan = scanner if scanner is not None else default_scanner()
    if scan is None:
        return None
    result = scan(raws, max_bytes)
    for i in result[1]:  # the common slow case is a valid turn: checked first, cheaply
        try:
            _TURN_DECODER.decode(raws[i])
            return None
        except Exception:
            pass
    return Scanned(result)


def turn_columns(
    scanned: Scanned, raws: list[Any], dedup: Deduplicator
) -> tuple[LazyTurns, TurnColumns, int]:
    """The scanned turns without duplicates (recorded in ``dedup``): lazy ``Turn``s, their columns and
    how many duplicates left."""
    (
        fast_index,
        _,
        ts_b,
        lat_b,
        q_b,
        bits_b,
        turn_b,
        event_ids,
        conv_ids,
        rcode_b,
        route_keys,
        scode_b,
        segments,
        fcode_b,
        flag_dicts,
        trace_ids,
    ) = scanned.result
    index = np.frombuffer(fast_index, np.int64)
    # copies: views of the scanner's bytes would be read-only, unlike the object path's columns
    ts = np.frombuffer(ts_b, np.float64).copy()
    latency = np.frombuffer(lat_b, np.float64).copy()
    quality = np.frombuffer(q_b, np.float64).copy()
    bits = np.frombuffer(bits_b, np.uint8)
    turn_no = np.frombuffer(turn_b, np.int64)
    rcode = np.frombuffer(rcode_b, np.int64).astype(np.intp)
    scode = np.frombuffer(scode_b, np.int64).copy()
    fcode = np.frombuffer(fcode_b, np.int64).copy()
    duplicates = 0
    unique = dedup._add_batch(event_ids) if event_ids else None
    if unique is not None:  # duplicates leave the batch: keep the first of each, in order
        keep = np.flatnonzero(np.fromiter(unique, bool, len(unique)))
        duplicates = len(unique) - len(keep)
        index, ts, latency, quality, bits = index[keep], ts[keep], latency[keep], quality[keep], bits[keep]
        turn_no, rcode, scode, fcode = turn_no[keep], rcode[keep], scode[keep], fcode[keep]
        conv_ids = [conv_ids[i] for i in keep.tolist()]
        if trace_ids is not None:
            trace_ids = [trace_ids[i] for i in keep.tolist()]
        rcode, route_keys = renumber(rcode, route_keys)
        scode, segments = renumber(scode, segments)  # only the segments still in the batch
        fcode, flag_dicts = renumber(fcode, flag_dicts)
    turns = LazyTurns(raws, index, ts)
    cols = TurnColumns.from_arrays(
        turns,
        ts=ts,
        latency=latency,
        quality=quality,
        **{m.column: (bits & (1 << i)).astype(bool) for i, m in enumerate(RATE_METRICS)},
        first_turn=turn_no == 0,
        conversation_id=conv_ids,
        trace_id=trace_ids,
        segment_code=scode,
        segment_table=segments,
        flag_code=fcode,
        flag_table=flag_dicts,
        route_code=rcode,
        route_keys=route_keys,
    )
    return turns, cols, duplicates


# ---- the reference scanner: the contract of watcher.contract._turnscan, in Python -------------------------


def reference_scan(values: list[Any], max_bytes: int) -> ScanResult:
    """What ``watcher.contract._turnscan.scan`` returns, built with msgspec: every message msgspec decodes
    as a ``Turn`` is fast. Slow (it decodes every turn), sound by construction: the tests run the
    integration with it where the C scanner is absent, and compare the C scanner's rows with it."""
    fast: list[int] = []
    slow: list[int] = []
    rows: list[Turn] = []
    for i, raw in enumerate(values):
        try:
            if not isinstance(raw, bytes) or len(raw) > max_bytes:
                raise ValueError
            t = _TURN_DECODER.decode(raw)
        except Exception:
            slow.append(i)
            continue
        if t.ts.__class__ is not float:
            t.ts = t.ts.timestamp()  # type: ignore[attr-defined]
        fast.append(i)
        rows.append(t)

    def interned(items: Iterator[Any]) -> tuple[bytes, list[Any]]:
        codes: dict[Any, int] = {}
        out: list[int] = []
        table: list[Any] = []
        for key, value in items:
            c = codes.get(key)
            if c is None:
                c = codes[key] = len(table)
                table.append(value)
            out.append(c)
        return np.array(out, np.int64).tobytes(), table

    route_b, route_keys = interned(
        (k, k) for k in ((t.agent_id, t.environment, t.version, t.arm) for t in rows)
    )
    seg_b, segs = interned((tuple(t.segment.items()), t.segment) for t in rows)
    flag_b, flags = interned((tuple(t.flags.items()), t.flags) for t in rows)
    f64 = lambda xs: np.array([math.nan if x is None else x for x in xs], np.float64).tobytes()
    fields = [m.field for m in RATE_METRICS]
    traces = [t.trace_id for t in rows]
    bits = np.array([sum(int(getattr(t, f)) << i for i, f in enumerate(fields)) for t in rows], np.uint8)
    return (
        np.array(fast, np.int64).tobytes(),
        slow,
        f64(t.ts for t in rows),
        f64(t.latency_ms for t in rows),
        f64(t.quality for t in rows),
        bits.tobytes(),
        np.array([t.turn for t in rows], np.int64).tobytes(),
        [t.event_id for t in rows],
        [t.conversation_id for t in rows],
        route_b,
        route_keys,
        seg_b,
        segs,
        flag_b,
        flags,
        traces if traces.count(None) < len(traces) else None,
    )
