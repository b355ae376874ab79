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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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

    def __init__(self, allowed_s: float | None = 3600.0, *, max_agents: int = 100_000) -> None:
        if allowed_s is not None and not 0 <= allowed_s < math.inf:
            raise ValueError(f"allowed_s must be >= 0 or None, got {allowed_s}")
        self.allowed_s = allowed_s
        self.max_agents = max_agents
        self.marks: dict[str, float] = {}  # agent_id -> max event ts seen

    def apply(self, batch: DecodedBatch, raws: Sequence[Any], origins: Sequence[str] | None = None) -> int:
        """Move the batch's too-late turns to ``batch.rejected`` (in place); returns how many.

        ``raws``/``origins`` are what ``decode_batch`` was given: the rejected records carry the
        original bytes and origin of each late turn.
        """
        if self.allowed_s is None or not batch.turns:
            return 0
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
        gone = np.flatnonzero(late)
        turns = batch.turns
        late_turns = [turns[i] for i in gone.tolist()]
        where = _locate(raws, late_turns)
        for i, turn, j in zip(gone.tolist(), late_turns, where):
            wm = float(marks[i])
            detail = (
                f"event time {rfc3339(turn.ts)} is {wm - turn.ts:.0f} s behind agent {turn.agent_id}'s "
                f"watermark {rfc3339(wm)}; allowed lateness is {self.allowed_s:g} s"
            )
            if j is None:  # not found among the raws (an id the encoder escaped oddly): the turn re-encoded
                raw, origin = encode_turn(turn), ""
                detail += " (bytes re-encoded)"
            else:
                raw, origin = _bytes(raws[j]), _origin(origins, j)
            batch.rejected.append(Rejected(RejectReason.TOO_LATE, detail, raw, origin))
        kept = cols.take(np.flatnonzero(~late))
        # the columns already extracted are sliced, not re-read; DecodedBatch.columns serves them
        batch.turns = kept.turns
        batch._columns = kept
        return len(gone)

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
        return {"v": LATENESS_STATE_VERSION, "marks": dict(self.marks)}

    def load_state(self, d: dict[str, Any]) -> None:
        """Replace the watermarks by a ``to_state()`` dict (ValueError/KeyError/TypeError if malformed)."""
        if d.get("v") != LATENESS_STATE_VERSION:
            raise ValueError(f"unknown lateness state version {d.get('v')!r}")
        self.marks = {str(a): float(t) for a, t in d["marks"].items()}


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
