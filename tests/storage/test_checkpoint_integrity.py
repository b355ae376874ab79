"""State is never forgotten silently (issue #15, 4): checkpoints carry a SHA-256, the last generations
are kept, an unreadable one falls back to the one before, is kept aside and never overwritten, and a
checkpoint that was written but cannot be read at all is ``CheckpointLost`` (never "none yet")."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from watcher.errors import CheckpointLost
from watcher.storage.checkpoint import Checkpoint, encode
from watcher.storage.sqlite_checkpoints import SqliteCheckpointStore


def _cp(n: int) -> Checkpoint:
    return Checkpoint({"turns": n}, {("t", 0): n}, float(n), "g")


def _store(path: Path, saves: int = 3) -> SqliteCheckpointStore:
    store = SqliteCheckpointStore(path)
    for n in range(1, saves + 1):
        store.save(_cp(n * 100))
    return store


def _sql(path: Path, stmt: str, *args: object) -> None:
    db = sqlite3.connect(path)
    db.execute(stmt, args)
    db.commit()
    db.close()


def _flip_bit(path: Path, generation: int) -> None:
    db = sqlite3.connect(path)
    (doc,) = db.execute(
        "SELECT document FROM checkpoint_generations WHERE generation=?", (generation,)
    ).fetchone()
    doc = bytearray(doc)
    doc[len(doc) // 2] ^= 0x04
    db.execute("UPDATE checkpoint_generations SET document=? WHERE generation=?", (bytes(doc), generation))
    db.commit()
    db.close()


def test_keeps_the_last_generations_each_with_a_checksum(tmp_path: Path) -> None:
    store = _store(tmp_path / "cp.sqlite", saves=5)
    assert store.generations() == [5, 4, 3]  # keep=3
    cp = store.load()
    assert cp is not None and (cp.engine, cp.generation, cp.skipped) == ({"turns": 500}, 5, ())


@pytest.mark.parametrize(
    "damage",
    [
        "bit flip",
        "truncated",
        "tampered count",  # an edited document whose checksum was not updated
        "wrong version",  # with a matching checksum: the bytes are intact, the format is not ours
        "deleted row",
    ],
)
def test_an_unreadable_newest_generation_falls_back_to_the_one_before(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "cp.sqlite"
    _store(path).close()
    if damage == "bit flip":
        _flip_bit(path, 3)
    elif damage == "truncated":
        _sql(path, "UPDATE checkpoint_generations SET document=substr(document, 1, 20) WHERE generation=3")
    elif damage == "tampered count":
        doc = encode(_cp(300)).replace(b'"turns":300', b'"turns":999')
        _sql(path, "UPDATE checkpoint_generations SET document=? WHERE generation=3", doc)
    elif damage == "wrong version":
        doc = json.dumps({**json.loads(encode(_cp(300))), "v": 7}).encode()
        sha = hashlib.sha256(doc).hexdigest()
        _sql(path, "UPDATE checkpoint_generations SET document=?, sha256=? WHERE generation=3", doc, sha)
    else:
        _sql(path, "DELETE FROM checkpoint_generations WHERE generation=3")

    store = SqliteCheckpointStore(path)
    cp = store.load()
    assert cp is not None and cp.engine == {"turns": 200} and cp.offsets == {("t", 0): 200}
    assert cp.generation == 2 and len(cp.skipped) == 1
    expected = {
        "bit flip": "checksum mismatch",
        "truncated": "checksum mismatch",
        "tampered count": "checksum mismatch",
        "wrong version": "version 7",
        "deleted row": "generation 3 is missing",
    }[damage]
    assert expected in cp.skipped[0]
    if damage != "deleted row":  # the unreadable row is kept aside, with why
        ((generation, reason),) = store.quarantined()
        assert generation == 3 and expected in reason
    # the next save is a new generation: nothing overwrites what could not be read
    store.save(_cp(400))
    assert store.generations()[0] == 4
    assert [g for g, _ in store.quarantined()] == ([3] if damage != "deleted row" else [])
    again = store.load()
    assert again is not None and again.engine == {"turns": 400} and again.skipped == ()


def test_no_readable_generation_is_lost_not_none_and_stays_lost(tmp_path: Path) -> None:
    path = tmp_path / "cp.sqlite"
    _store(path).close()
    for generation in (1, 2, 3):
        _flip_bit(path, generation)
    store = SqliteCheckpointStore(path)
    with pytest.raises(CheckpointLost) as info:
        store.load()
    assert info.value.scope == "all" and len(info.value.reasons) == 3 and str(path) in str(info.value)
    assert [g for g, _ in store.quarantined()] == [3, 2, 1]
    store.close()
    # read again (a restart without --reset-state): still lost, not "no checkpoint yet"
    store = SqliteCheckpointStore(path)
    with pytest.raises(CheckpointLost, match="generation 3 is missing"):
        store.load()
    # a fresh state's first save (--reset-state) takes a new number; the quarantine is untouched
    store.save(_cp(1))
    assert store.generations() == [4] and [g for g, _ in store.quarantined()] == [3, 2, 1]


def test_every_row_deleted_is_lost_not_a_fresh_start(tmp_path: Path) -> None:
    path = tmp_path / "cp.sqlite"
    _store(path).close()
    _sql(path, "DELETE FROM checkpoint_generations")
    with pytest.raises(CheckpointLost, match="generation 3 is missing"):
        SqliteCheckpointStore(path).load()


def test_other_scopes_are_not_touched(tmp_path: Path) -> None:
    path = tmp_path / "cp.sqlite"
    store = _store(path)
    store.save(_cp(7), scope="partition-1")
    store.close()
    _flip_bit(path, 3)  # generation 3 exists only in scope "all"
    store = SqliteCheckpointStore(path)
    cp = store.load("partition-1")
    assert cp is not None and cp.engine == {"turns": 7} and cp.skipped == ()


def test_a_schema_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE checkpoint_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute(
        "CREATE TABLE checkpoints (scope TEXT PRIMARY KEY, version INTEGER NOT NULL, "
        "written_at REAL NOT NULL, document BLOB NOT NULL)"
    )
    db.execute("INSERT INTO checkpoint_meta VALUES ('schema_version', '1')")
    db.execute("INSERT INTO checkpoints VALUES ('all', 1, 5.0, ?)", (encode(_cp(5)),))
    db.commit()
    db.close()
    store = SqliteCheckpointStore(path)
    cp = store.load()
    assert cp is not None and cp.engine == {"turns": 5} and cp.generation == 1
    store.save(_cp(6))
    assert store.generations() == [2, 1]
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM checkpoint_meta WHERE key='schema_version'").fetchone() == ("2",)
    assert db.execute("SELECT COUNT(*) FROM checkpoints").fetchone() == (0,)
