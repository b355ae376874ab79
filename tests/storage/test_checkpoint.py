"""Checkpoints: the format, the stores, the engine's state round trip and the daemon's protocol
(state and offsets saved together, committed after, restored and resumed) without a broker.
The same protocol against the real broker with SIGKILLs: tests/test_crash.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import pickle
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from watcher.clock import ManualClock
from watcher.config import Settings, load_settings
from watcher.engine import Engine
from watcher.errors import CheckpointError, ConfigError
from watcher.kafka import Message
from watcher.kafka.deadletter import NullDeadLetters
from watcher.kafka.rebalance import NULL_LISTENER, PartitionListener
from watcher.outbox import Outbox
from watcher.service.compose import build_daemon
from watcher.service.daemon import Daemon
from watcher.service.markers import NullMarkerPublisher
from watcher.service.replay import replay
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate
from watcher.storage.checkpoint import (
    Checkpoint,
    MemoryCheckpointStore,
    NullCheckpointStore,
    decode,
    decode_part,
    encode,
    encode_part,
)
from watcher.storage.checkpointer import Checkpointer
from watcher.storage.decisions import SqliteDecisionLog
from watcher.storage.sqlite_checkpoints import SqliteCheckpointStore


def _lines(strategy: str = "canary", duration_s: float = 600.0, rate: float = 8.0) -> list[bytes]:
    scenario = dataclasses.replace(
        PRESETS["demo"], duration_s=duration_s, conversations_per_s=rate, strategy=strategy
    )
    return list(generate(scenario))


def _normal(state: dict[str, Any]) -> dict[str, Any]:
    """An engine state as it reads back from a checkpoint (the dedup window is a set: its order is not
    meaningful)."""
    state = decode_part(encode_part(state))
    for part in ("dedup", "dedup-previous"):
        state[part]["ids"] = sorted(state[part]["ids"])
    return state  # type: ignore[no-any-return]


# -- the format ---------------------------------------------------------------------------------------
def test_encode_decode_round_trip_and_versioning() -> None:
    cp = Checkpoint(
        {"engine": {"v": 2}, "x": [1.5, None, "a"], "arr": {"raw": b"\x00\x01"}, "nan": float("nan")},
        {("t", 0): 12, ("t", 3): 0, ("u", 1): 7},
        1700.5,
        "g",
    )
    back = decode(encode(cp))
    assert math.isnan(back.engine.pop("nan")) and back == dataclasses.replace(
        cp, engine={k: v for k, v in cp.engine.items() if k != "nan"}
    )
    with pytest.raises(CheckpointError, match="changed parts only"):
        encode(dataclasses.replace(cp, kept=frozenset({"y"})))
    with pytest.raises(CheckpointError, match="malformed|not valid"):
        decode(encode(cp)[:-3])
    # never unpickled: a pickle is just invalid input
    with pytest.raises(CheckpointError):
        decode(pickle.dumps(cp.engine))


def test_a_checkpoint_of_before_13_one_json_document_is_still_read() -> None:
    doc = {"v": 1, "owner": "g", "written_at": 5.0, "offsets": {"t": {"0": 12}}, "engine": {"v": 1, "x": 2}}
    cp = decode(json.dumps(doc))
    assert cp == Checkpoint({"v": 1, "x": 2}, {("t", 0): 12}, 5.0, "g")
    with pytest.raises(CheckpointError, match="version 3"):
        decode(json.dumps({**doc, "v": 3}))
    with pytest.raises(CheckpointError, match="offset"):
        decode(json.dumps({**doc, "offsets": {"t": {"0": -1}}}))
    with pytest.raises(CheckpointError, match="malformed"):
        decode(json.dumps({k: v for k, v in doc.items() if k != "engine"}))


def test_a_state_msgpack_cannot_hold_fails_at_save_time() -> None:
    with pytest.raises(CheckpointError, match="cannot be encoded"):
        encode(Checkpoint({"v": 1, "value": object()}))


@pytest.mark.parametrize("make", [MemoryCheckpointStore, "sqlite"])
def test_stores_keep_unchanged_parts_replace_changed_ones_and_drop_the_rest(
    make: Any, tmp_path: Path
) -> None:
    store = SqliteCheckpointStore(tmp_path / "cp.sqlite") if make == "sqlite" else make()
    full = Checkpoint({"a": 1, "b": [2], "c": {"x": 3}}, {("t", 0): 5}, 1.0, "g")
    store.save(full)
    # only "b" changed, "c" is gone, "d" is new: "a" is kept as it was
    small = store.save(Checkpoint({"b": [20], "d": 4}, {("t", 0): 9}, 2.0, "g", kept=frozenset({"a"})))
    assert store.load() == Checkpoint({"a": 1, "b": [20], "d": 4}, {("t", 0): 9}, 2.0, "g")
    assert small < 100  # the changed parts and the manifest, not the whole state
    with pytest.raises(CheckpointError, match="kept parts"):
        store.save(Checkpoint({"b": [0]}, {("t", 0): 10}, 3.0, "g", kept=frozenset({"c"})))
    assert store.load() == Checkpoint({"a": 1, "b": [20], "d": 4}, {("t", 0): 9}, 2.0, "g")  # untouched
    assert store.load("other") is None
    store.close()


def test_sqlite_store_replaces_atomically_per_scope_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cp.sqlite"
    store = SqliteCheckpointStore(path)
    assert store.load() is None
    store.save(Checkpoint({"n": 1}, {("t", 0): 5}, 1.0, "g"))
    store.save(Checkpoint({"n": 2}, {("t", 0): 9}, 2.0, "g"))
    store.save(Checkpoint({"n": 99}, {("t", 1): 1}, 2.0, "g"), scope="t/1")
    store.close()

    again = SqliteCheckpointStore(path)
    assert again.load() == Checkpoint({"n": 2}, {("t", 0): 9}, 2.0, "g")
    assert again.load("t/1") == Checkpoint({"n": 99}, {("t", 1): 1}, 2.0, "g")
    again.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM checkpoints").fetchone() == (2,)  # one manifest per scope
    assert db.execute("SELECT COUNT(*) FROM checkpoint_parts").fetchone() == (2,)
    db.execute("UPDATE checkpoint_meta SET value='9' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(CheckpointError, match="newer"):
        SqliteCheckpointStore(path)


def test_sqlite_file_of_before_13_is_read_and_then_written_in_parts(tmp_path: Path) -> None:
    """A v1 file: schema 1, one JSON document per scope. Read as it is; the next save writes parts."""
    path = tmp_path / "cp.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE checkpoint_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute(
        "CREATE TABLE checkpoints (scope TEXT PRIMARY KEY, version INTEGER NOT NULL, "
        "written_at REAL NOT NULL, document BLOB NOT NULL)"
    )
    db.execute("INSERT INTO checkpoint_meta VALUES ('schema_version', '1')")
    doc = {"v": 1, "owner": "g", "written_at": 5.0, "offsets": {"t": {"0": 12}}, "engine": {"v": 1, "n": 7}}
    db.execute("INSERT INTO checkpoints VALUES ('all', 1, 5.0, ?)", (json.dumps(doc).encode(),))
    db.commit()
    db.close()
    store = SqliteCheckpointStore(path)
    assert store.load() == Checkpoint({"v": 1, "n": 7}, {("t", 0): 12}, 5.0, "g")
    store.save(Checkpoint({"engine": {"v": 2}}, {("t", 0): 13}, 6.0, "g"))
    assert store.load() == Checkpoint({"engine": {"v": 2}}, {("t", 0): 13}, 6.0, "g")
    store.close()


def test_config_section() -> None:
    s = load_settings(
        environ={
            "WATCHER_CHECKPOINT__ENABLED": "true",
            "WATCHER_CHECKPOINT__INTERVAL_S": "2.5",
            "WATCHER_CHECKPOINT__PATH": "/var/lib/watcher/cp.sqlite",
        }
    )
    assert (s.checkpoint.enabled, s.checkpoint.interval_s, s.checkpoint.path) == (
        True,
        2.5,
        "/var/lib/watcher/cp.sqlite",
    )
    with pytest.raises(ConfigError, match="checkpoint.interval_s"):
        load_settings(environ={}, overrides={"checkpoint.interval_s": -1})


# -- the engine's state --------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["canary", "shadow", "blue_green", "flag"])
def test_engine_restored_mid_stream_continues_exactly_like_an_uninterrupted_one(strategy: str) -> None:
    lines = _lines(strategy, duration_s=420.0, rate=6.0)
    settings = load_settings(environ={})
    batches = [lines[i : i + 500] for i in range(0, len(lines), 500)]
    cut = len(batches) // 2

    whole = Engine(settings)
    decisions = [d for b in batches for d in whole.process(b).decisions]

    first = Engine(settings)
    before = [d for b in batches[:cut] for d in first.process(b).decisions]
    saved = decode(encode(Checkpoint(first.to_state())))  # through the real format
    restored = Engine(settings)
    restored.load_state(saved.engine)
    assert _normal(restored.to_state()) == _normal(
        first.to_state()
    )  # restore, and evidence(), change nothing
    assert set(restored.evidence) == set(first.evidence)
    after = [d for b in batches[cut:] for d in restored.process(b).decisions]

    assert [d.to_dict() for d in before + after] == [d.to_dict() for d in decisions]
    assert restored.judges and set(restored.judges) == set(whole.judges)
    got, want = restored.to_state(), whole.to_state()
    if strategy == "shadow":
        # documented (docs/strategies/shadow.md): turns waiting for their pair are not checkpointed
        # and count as unpaired after a restart, a loss bounded by the pending pairs at the checkpoint
        ((rid, judge),) = first.judges.items()
        pending = len(judge.pending)  # type: ignore[attr-defined]
        g, w = got.pop(f"judge/{rid}")["counts"], want.pop(f"judge/{rid}")["counts"]
        assert 0 < w["paired"] - g["paired"] <= pending
        assert sum(g.values()) - sum(w.values()) == w["paired"] - g["paired"]  # lost pairs, counted once each
    assert _normal(got) == _normal(want)
    for key in whole.state.keys():
        assert restored.state.snapshot(key) == whole.state.snapshot(key)


def test_engine_refuses_an_unknown_or_broken_state_and_stays_as_it_was() -> None:
    engine = Engine(load_settings(environ={}))
    engine.process(_lines(duration_s=60.0)[:300])
    before = _normal(engine.to_state())
    state = engine.to_state()
    with pytest.raises(CheckpointError, match="version 7"):
        engine.load_state({**state, "engine": {**state["engine"], "v": 7}})
    with pytest.raises(CheckpointError, match="invalid engine state"):
        engine.load_state(
            {**state, "engine": {**state["engine"], "policy_states": {"r": {"action": "explode"}}}}
        )
    with pytest.raises(CheckpointError):
        engine.load_state({**state, "dedup": {"v": 1}})
    with pytest.raises(CheckpointError):
        engine.load_state({k: v for k, v in state.items() if k != "history"})
    assert _normal(engine.to_state()) == before


# -- when to checkpoint ---------------------------------------------------------------------------------
class _Target:
    def __init__(self) -> None:
        self.n = 0
        self.loaded: dict[str, Any] | None = None

    def to_state(self) -> dict[str, Any]:
        return {"v": 1, "n": self.n}

    def load_state(self, d: dict[str, Any]) -> None:
        self.loaded = d


def test_checkpointer_interval_positions_and_owner() -> None:
    clock = ManualClock(1000.0)
    store = MemoryCheckpointStore()
    cp = Checkpointer(store, _Target(), owner="group-a", interval_s=5.0, clock=clock)
    assert not cp.due()  # nothing new
    cp.advance({("t", 0): 10, ("t", 1): 4})
    cp.advance({("t", 0): 8})  # positions only move forwards
    assert cp.dirty and not cp.due()
    clock.advance(5.0)
    assert cp.due()
    assert cp.save() == {("t", 0): 10, ("t", 1): 4}
    assert not cp.dirty and not cp.due() and store.saves == 1
    cp.mark_dirty()  # an override over HTTP: at once, without new offsets
    assert cp.due()
    cp.save()
    assert store.saves == 2 and cp.resume_offset("t", 0) == 10 and cp.resume_offset("t", 2) is None

    other = _Target()
    mine = Checkpointer(store, other, owner="group-a")
    assert mine.restore() is not None and other.loaded == {"v": 1, "n": 0}
    assert mine.resume_offset("t", 1) == 4 and not mine.dirty
    stranger = _Target()
    assert Checkpointer(store, stranger, owner="group-b").restore() is None and stranger.loaded is None
    assert Checkpointer(NullCheckpointStore(), _Target()).restore() is None


# -- the daemon's protocol, with an in-memory partition ---------------------------------------------------
class ListSource:
    """One partition held in memory, with Kafka's semantics that matter here: a consumer starts at
    the partition listener's ``resume_offset`` if it gives one, else at the committed offset;
    ``crash_after`` batches the iterator stops dead (the process is gone: nothing after that point
    runs)."""

    def __init__(
        self, values: Sequence[bytes], *, batch: int, committed: int = 0, crash_after: int | None = None
    ) -> None:
        self.values, self.batch, self.committed, self.crash_after = (
            list(values),
            batch,
            committed,
            crash_after,
        )
        self.listener: PartitionListener = NULL_LISTENER
        self.commits: list[dict[tuple[str, int], int]] = []
        self.started_at: int | None = None

    async def start(self, listener: PartitionListener = NULL_LISTENER) -> None:
        self.listener = listener

    async def stop(self) -> None: ...

    async def batches(self) -> AsyncIterator[list[Message]]:
        start = self.listener.resume_offset("t", 0)
        pos = self.started_at = self.committed if start is None else start
        handed = 0
        while pos < len(self.values):
            if self.crash_after is not None and handed == self.crash_after:
                raise _Crash
            end = min(pos + self.batch, len(self.values))
            yield [Message(v, "t", 0, o) for o, v in zip(range(pos, end), self.values[pos:end])]
            handed += 1
            pos = end

    async def commit(self, batch: Sequence[Message]) -> bool:
        return await self.commit_offsets({("t", 0): max(m.offset for m in batch) + 1})

    async def commit_offsets(self, offsets: Mapping[tuple[str, int], int]) -> bool:
        self.commits.append(dict(offsets))
        self.committed = offsets[("t", 0)]
        return True

    def resume_partitions(
        self, partitions: Collection[int], resume_from: Callable[[str, int], int | None]
    ) -> None:
        raise AssertionError("one partition, never held")

    @property
    def ready(self) -> bool:
        return True

    def lag(self) -> dict[tuple[str, int], int]:
        return {}


class _Crash(Exception):
    """SIGKILL, as far as the daemon's loop can tell: it stops between two statements."""


def _daemon(settings: Settings, tmp_path: Path, source: ListSource, store: MemoryCheckpointStore) -> Daemon:
    return build_daemon(
        settings,
        registry=CollectorRegistry(),
        source=source,
        dead_letters=NullDeadLetters(),
        decision_log=SqliteDecisionLog(tmp_path / "decisions.sqlite"),
        marker_publisher=NullMarkerPublisher(),
        outbox=Outbox(str(tmp_path / "outbox.sqlite"), []),
        checkpoint_store=store,
    )


async def test_daemon_crash_between_checkpoints_rereads_into_the_checkpointed_state(tmp_path: Path) -> None:
    lines = _lines(duration_s=600.0, rate=8.0)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    reference, whole = replay(path)
    assert [d["action"] for d in reference.decisions] == ["rollback"]
    settings = load_settings(
        environ={}, overrides={"http.port": 0, "checkpoint.enabled": True, "checkpoint.interval_s": 3600}
    )
    store = MemoryCheckpointStore()

    # run 1: every batch handled, then a forced checkpoint at the 10th; it crashes at the 25th, after
    # the rollback (batch ~19) was logged but long before the next checkpoint was due
    source = ListSource(lines, batch=500)
    daemon = _daemon(settings, tmp_path, source, store)
    daemon.restore()
    handled = 0
    async for batch in source.batches():
        await daemon.handle(batch)
        handled += 1
        if handled == 10:
            assert await daemon.checkpoint(force=True)
        if handled == 25:
            break  # killed: no final checkpoint, no commit of batches 11..25
    daemon.decision_log.close()
    assert source.commits == [{("t", 0): 5000}]  # committed only with the checkpoint that covers them
    assert SqliteDecisionLog(tmp_path / "decisions.sqlite").list()[0]["action"] == "rollback"

    # run 2: restored at offset 5000 although Kafka's committed offset is older than that in this
    # run (a crash between the checkpoint and the commit): the checkpoint's offset wins
    source2 = ListSource(lines, batch=700, committed=0)  # other batch boundaries than run 1
    daemon2 = _daemon(settings, tmp_path, source2, store)
    assert daemon2.restore()
    assert await asyncio.wait_for(daemon2.run(asyncio.Event()), 60) == 0
    assert source2.started_at == 5000
    assert source2.commits[-1] == {("t", 0): len(lines)}  # the clean stop checkpointed and committed all

    for key in whole.state.keys():
        got, want = daemon2.engine.state.snapshot(key), whole.state.snapshot(key)
        assert (got.turns, got.conversations) == (want.turns, want.conversations), key
        assert got.quality_mean == pytest.approx(want.quality_mean, rel=1e-9)
    log = SqliteDecisionLog(tmp_path / "decisions.sqlite")
    assert [(d["decision_id"], d["action"]) for d in log.list(ascending=True)] == [
        (d["decision_id"], d["action"]) for d in reference.decisions
    ]  # re-made with the same id: once
    log.close()


async def test_daemon_without_checkpoints_commits_every_batch(tmp_path: Path) -> None:
    lines = _lines(duration_s=60.0)
    settings = load_settings(environ={}, overrides={"http.port": 0, "checkpoint.enabled": False})
    source = ListSource(lines, batch=400)
    store = MemoryCheckpointStore()
    daemon = _daemon(settings, tmp_path, source, store)
    assert daemon.checkpoints is None and source.listener.resume_offset("t", 0) is None
    assert await asyncio.wait_for(daemon.run(asyncio.Event()), 60) == 0
    assert len(source.commits) == -(-len(lines) // 400) and store.saves == 0


async def test_the_passes_over_every_version_are_built_in_the_writers_thread() -> None:
    """drift, history and dedup are one pass each over every version or event id: built where the
    checkpoint is written (a worker thread), not in one step of the event loop."""
    engine = Engine(load_settings(environ={}))
    lines = list(generate(dataclasses.replace(PRESETS["demo"], duration_s=300.0, conversations_per_s=3.0)))
    engine.process(lines)
    built: dict[str, str] = {}
    for name, part in (("drift", engine.drift), ("history", engine.history), ("dedup", engine.dedup)):
        method = "to_state" if name != "dedup" else "current_state"
        original = getattr(part, method)

        def spy(original: Callable[[], Any] = original, name: str = name) -> Any:
            built[name] = threading.current_thread().name
            return original()

        setattr(part, method, spy)
    store = MemoryCheckpointStore()
    cp = Checkpointer(store, engine, owner="g")
    cp.advance({("t", 0): len(lines)})
    await cp.save_async()
    loop_thread = threading.current_thread().name
    assert set(built) == {"drift", "history", "dedup"} and loop_thread not in built.values()
    restored = Engine(load_settings(environ={}))
    assert Checkpointer(store, restored, owner="g").restore() is not None
    assert restored.drift.to_state() == engine.drift.to_state()
    assert restored.history.to_state() == engine.history.to_state()
    assert set(restored.dedup.current_state()["ids"]) == set(engine.dedup.current_state()["ids"])
