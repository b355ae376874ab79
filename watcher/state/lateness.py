"""Allowed lateness: turns far behind their agent's event time leave the batch as ``too_late``.

Event time drives everything downstream (windows, the judges' epochs, decisions), so a turn that
arrives long after the events around it would be counted against a period that was already judged,
or against a rollout that was not running when it happened (a producer replaying yesterday's spool,
a client with a wrong clock). Turns within ``allowed_s`` of the watermark are applied normally, in
any order (``MetricsState`` and the judges are order-independent); older ones are dead-lettered with
their original bytes and counted in ``watcher_events_rejected_total{reason="too_late"}``.

The watermark is per ``agent_id``, the partition key: one agent's events share a partition and its
order, so a partition that lags behind the others (catching up after a restart) is not judged
against their event time. Within a batch the watermark advances turn by turn (a running maximum), so
the turns rejected do not depend on how the stream was cut into batches: replay and the daemon agree.
The watermarks are part of the engine's checkpoint: a restart rejects what the first run rejected.

**Too early.** One turn from a producer whose clock runs far ahead (a year 2099 timestamp) would move
its agent's watermark there, and every later turn of that agent would be too late: one bad message
would silence the agent. A turn more than ``max_future_s`` ahead of *both* watcher's clock and the
latest event time the filter accepted (from any agent) is dead-lettered as ``too_early`` instead and
moves nothing. Both references are needed: the clock alone would refuse a replay of data stamped in
the future of a machine whose clock is behind, or a demo whose event time runs faster than the clock;
the event time alone would refuse every turn after a long silence of the whole stream. (The first
batch, with no accepted event time yet, is compared with its own median.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import numpy as np

from watcher.contract import DecodedBatch, Rejected, RejectReason, Turn, encode_turn, rfc3339

__all__ = ["LatenessFilter", "LATENESS_STATE_VERSION"]

LATENESS_STATE_VERSION = 1


class _EventId(msgspec.Struct):
    event_id: Any = None


_ID_DECODER = msgspec.json.Decoder(_EventId)


class LatenessFilter:
    """Per-agent event-time watermarks and the too-late cut. ``allowed_s=None`` accepts everything.

    ``max_agents`` bounds the table: beyond it the agents with the oldest watermarks are forgotten
    (an agent quiet for that long has nothing its next events could be late against).
    """

    def __init__(
        self,
        allowed_s: float | None = 3600.0,
        *,
        max_agents: int = 100_000,
        max_future_s: float | None = None,
    ) -> None:
        if allowed_s is not None and not 0 <= allowed_s < math.inf:
            raise ValueError(f"allowed_s must be >= 0 or None, got {allowed_s}")
        if max_future_s is not None and not 0 <= max_future_s < math.inf:
            raise ValueError(f"max_future_s must be >= 0 or None, got {max_future_s}")
        self.allowed_s = allowed_s
        self.max_future_s = max_future_s
        self.max_agents = max_agents
        self.marks: dict[str, float] = {}  # agent_id -> max event ts seen
        self.latest: float | None = None  # the latest event time accepted, from any agent

    def apply(
        self,
        batch: DecodedBatch,
        raws: Sequence[Any],
        origins: Sequence[str] | None = None,
        *,
        now: float | None = None,
    ) -> int:
        """Move the batch's too-early and too-late turns to ``batch.rejected`` (in place); returns how
        many. ``now``: watcher's clock (None: event time alone bounds the future).

        ``raws``/``origins`` are what ``decode_batch`` was given: the rejected records carry the
        original bytes and origin of each turn taken out.
        """
        if not batch.turns:
            return 0
        early = self._early(batch, raws, origins, now) if self.max_future_s is not None else 0
        late = self._late(batch, raws, origins) if self.allowed_s is not None and batch.turns else 0
        if batch.turns:
            top = float(batch.columns.ts.max())
            if math.isfinite(top):
                self.latest = top if self.latest is None else max(self.latest, top)
        return early + late

    def _early(
        self, batch: DecodedBatch, raws: Sequence[Any], origins: Sequence[str] | None, now: float | None
    ) -> int:
        assert self.max_future_s is not None
        ts = batch.columns.ts
        base = self.latest if self.latest is not None else float(np.median(ts))
        if now is not None:
            base = max(base, now)
        limit = base + self.max_future_s
        if not float(ts.max()) > limit:  # the usual case: one reduction
            return 0
        early = ts > limit

        def why(turn: Turn, i: int) -> str:
            return (
                f"event time {rfc3339(turn.ts)} is {turn.ts - base:.0f} s ahead of watcher's clock and "
                f"of the latest event time accepted ({rfc3339(base)}); the bound is {self.max_future_s:g} s "
                "(state.max_future_s): a producer's clock runs ahead"
            )

        return _take_out(batch, raws, origins, early, RejectReason.TOO_EARLY, why)

    def _late(self, batch: DecodedBatch, raws: Sequence[Any], origins: Sequence[str] | None) -> int:
        cols = batch.columns
        ts = cols.ts
        keys = cols.route_keys  # (agent, env, version, arm) per code; shared with routing, not extra work
        agents = [k[0] for k in keys]
        late: np.ndarray | None
        marks: np.ndarray | None = None
        if len(set(agents)) == 1:  # the usual case: one agent per partition and batch
            late, marks = self._advance(agents[0], ts)
        else:
            names = list(dict.fromkeys(agents))
            pos = {a: i for i, a in enumerate(names)}
            agent_code = np.array([pos[a] for a in agents], np.intp)[cols.route_code]
            late = None
            for j, agent in enumerate(names):
                idx = np.flatnonzero(agent_code == j)
                sub_late, sub_marks = self._advance(agent, ts[idx])
                if sub_late is not None:
                    if late is None:
                        late, marks = np.zeros(len(ts), bool), np.zeros(len(ts))
                    assert marks is not None
                    late[idx] = sub_late
                    marks[idx] = sub_marks
        if len(self.marks) > self.max_agents:
            self._prune()
        if late is None:
            return 0
        assert marks is not None
        watermarks = marks

        def why(turn: Turn, i: int) -> str:
            wm = float(watermarks[i])
            return (
                f"event time {rfc3339(turn.ts)} is {wm - turn.ts:.0f} s behind agent {turn.agent_id}'s "
                f"watermark {rfc3339(wm)}; allowed lateness is {self.allowed_s:g} s"
            )

        return _take_out(batch, raws, origins, late, RejectReason.TOO_LATE, why)

    def _advance(self, agent: str, ts: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """(late mask or None, the watermark each turn was compared with) for one agent's turns."""
        prev = self.marks.get(agent, -math.inf)
        assert self.allowed_s is not None
        top = max(prev, float(ts.max()))
        if float(ts.min()) >= top - self.allowed_s:  # the usual case: nothing can be late, two reductions
            if math.isfinite(top):
                self.marks[agent] = top
            return None, ts
        run = np.fmax.accumulate(ts)  # event by event, so batch boundaries do not matter
        np.fmax(run, prev, out=run)
        top = float(run[-1])
        if math.isfinite(top):
            self.marks[agent] = top
        late = ts < run - self.allowed_s
        return (late if late.any() else None), run

    def _prune(self) -> None:
        keep = sorted(self.marks.items(), key=lambda kv: kv[1], reverse=True)[: self.max_agents // 2]
        self.marks = dict(keep)

    # -- checkpoint -----------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {"v": LATENESS_STATE_VERSION, "marks": dict(self.marks), "latest": self.latest}

    def load_state(self, d: dict[str, Any]) -> None:
        """Replace the watermarks by a ``to_state()`` dict (ValueError/KeyError/TypeError if malformed)."""
        if d.get("v") != LATENESS_STATE_VERSION:
            raise ValueError(f"unknown lateness state version {d.get('v')!r}")
        self.marks = {str(a): float(t) for a, t in d["marks"].items()}
        latest = d.get("latest")  # absent in checkpoints before the future bound
        self.latest = float(latest) if latest is not None else None


def _take_out(
    batch: DecodedBatch,
    raws: Sequence[Any],
    origins: Sequence[str] | None,
    mask: np.ndarray,
    reason: RejectReason,
    why: Callable[[Turn, int], str],
) -> int:
    """The turns of ``mask`` leave the batch as rejected records with their original bytes."""
    gone = np.flatnonzero(mask)
    turns = batch.turns
    out = [turns[i] for i in gone.tolist()]
    for i, turn, j in zip(gone.tolist(), out, _locate(raws, out), strict=True):
        detail = why(turn, i)
        if j is None:  # not found among the raws (an id the encoder escaped oddly): the turn re-encoded
            raw, origin = encode_turn(turn), ""
            detail += " (bytes re-encoded)"
        else:
            raw, origin = _bytes(raws[j]), _origin(origins, j)
        batch.rejected.append(Rejected(reason, detail, raw, origin))
    kept = batch.columns.take(np.flatnonzero(~mask))
    # the columns already extracted are sliced, not re-read; DecodedBatch.columns serves them
    batch.turns = kept.turns
    batch._columns = kept
    return len(gone)


def _locate(raws: Sequence[Any], late: list[Turn]) -> list[int | None]:
    """Index in ``raws`` of each late turn. Turns keep the order of their messages (decode_batch),
    so one forward walk finds them all: O(len(raws)) per batch, with a C-level substring test before
    the event id is decoded for certain."""
    out: list[int | None] = []
    start, n = 0, len(raws)
    for turn in late:
        found = _find(raws, start, n, turn.event_id, _needle(turn.event_id))
        if found is None:  # escaped differently in the JSON: decode every remaining candidate
            found = _find(raws, start, n, turn.event_id, None)
        out.append(found)
        if found is not None:
            start = found + 1
    return out


def _needle(event_id: str) -> bytes | None:
    plain = event_id.isascii() and event_id.isprintable() and not any(c in event_id for c in '"\\/')
    return event_id.encode() if plain else None


def _find(raws: Sequence[Any], start: int, n: int, event_id: str, needle: bytes | None) -> int | None:
    for j in range(start, n):
        raw = raws[j]
        if not isinstance(raw, (bytes, bytearray)):
            continue
        if needle is not None and needle not in raw:
            continue
        try:
            if _ID_DECODER.decode(raw).event_id == event_id:
                return j
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
    return None


def _bytes(raw: Any) -> bytes:
    return bytes(raw) if isinstance(raw, (bytes, bytearray, memoryview)) else b""


def _origin(origins: Sequence[str] | None, i: int) -> str:
    if origins is None:
        return ""
    try:
        return str(origins[i])
    except Exception:
        return ""
