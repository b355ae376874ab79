"""State is never forgotten silently (issue #15, 4): checkpoint rows carry a SHA-256; one that was
written but cannot be read (bit flip, truncation, an edited count, another version, rows deleted) is
``CheckpointLost``, never "no checkpoint yet", and its rows are kept aside, never overwritten."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from watcher.errors import CheckpointLost
from watcher.storage.checkpoint import Checkpoint, encode_part
from watcher.storage.sqlite_checkpoints import SqliteCheckpointStore


def _cp(n: int) -> Checkpoint:
    return Checkpoint(
        {"series:a": {"turns": n}, "registry": {"rollouts": ["r1"]}}, {("t", 0): n}, float(n), "g"
    )


def _sql(path: Path, stmt: str, *args: object) -> None:
    db = sqlite3.connect(path)
    db.execute(stmt, args)
    db.commit()
    db.close()


def _damage(path: Path, damage: str) -> str:
    """Damage the stored checkpoint; returns what the reason says."""
    if damage == "bit flip":
        db = sqlite3.connect(path)
        (data,) = db.execute("SELECT data FROM checkpoint_parts WHERE part='series:a'").fetchone()
        data = bytearray(data)
        data[len(data) // 2] ^= 0x04
        db.execute("UPDATE checkpoint_parts SET data=? WHERE part='series:a'", (bytes(data),))
        db.commit()
        db.close()
        return "does not match its SHA-256"
    if damage == "truncated manifest":
        _sql(path, "UPDATE checkpoints SET document=substr(document, 1, 10)")
        return "does not match its SHA-256"
    if damage == "tampered count":  # an edited part whose checksum was not updated
        _sql(path, "UPDATE checkpoint_parts SET data=? WHERE part='series:a'", encode_part({"turns": 999}))
        return "does not match its SHA-256"
    if damage == "wrong version":  # with a matching checksum: the bytes are intact, the format is not ours
        doc = b"WCP\x07" + encode_part({"v": 7})
        _sql(path, "UPDATE checkpoints SET document=?, sha256=?", doc, hashlib.sha256(doc).hexdigest())
        return "not a watcher checkpoint"
    if damage == "part deleted":
        _sql(path, "DELETE FROM checkpoint_parts WHERE part='series:a'")
        return "parts missing"
    assert damage == "row deleted"
    _sql(path, "DELETE FROM checkpoints")
    _sql(path, "DELETE FROM checkpoint_parts")
    return "its row is missing"


def test_rows_carry_their_checksum_and_round_trip(tmp_path: Path) -> None:
    store = SqliteCheckpointStore(tmp_path / "cp.sqlite")
    store.save(_cp(100))
    assert store.load() == _cp(100)
    assert store.load("partition-3") is None  # never written: nothing to restore, not lost
    db = sqlite3.connect(tmp_path / "cp.sqlite")
    for table, column in (("checkpoints", "document"), ("checkpoint_parts", "data")):
        for data, sha in db.execute(f"SELECT {column}, sha256 FROM {table}"):
            assert sha == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "damage",
    ["bit flip", "truncated manifest", "tampered count", "wrong version", "part deleted", "row deleted"],
)
def test_a_damaged_checkpoint_is_lost_kept_aside_and_never_overwritten(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "cp.sqlite"
    store = SqliteCheckpointStore(path)
    store.save(_cp(100))
    store.save(
        Checkpoint({"series:a": {"turns": 200}}, {("t", 0): 200}, 2.0, "g", kept=frozenset({"registry"}))
    )
    store.close()
    why = _damage(path, damage)

    store = SqliteCheckpointStore(path)
    with pytest.raises(CheckpointLost, match=why) as info:
        store.load()
    assert info.value.scope == "all" and str(path) in str(info.value)
    kept = store.quarantined()
    if damage != "row deleted":  # the damaged rows, bytes and reason, are in the quarantine
        assert ("", kept[0][1]) == kept[0] and why in kept[0][1]
        assert {p for p, _ in kept} >= {"", "registry"}
    # a restart without --reset-state is refused again: lost, not "no checkpoint yet"
    with pytest.raises(CheckpointLost):
        SqliteCheckpointStore(path).load()
    # a fresh state's saves (--reset-state) do not touch what was kept aside
    store.save(_cp(1))
    assert store.load() == _cp(1)
    assert store.quarantined() == kept


def test_a_file_written_before_checksums_is_read_and_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    store = SqliteCheckpointStore(path)
    store.save(_cp(5))
    store.close()
    db = sqlite3.connect(path)  # as schema 2 wrote it: no checksums
    db.execute("UPDATE checkpoints SET sha256=NULL")
    db.execute("UPDATE checkpoint_parts SET sha256=NULL")
    db.execute("UPDATE checkpoint_meta SET value='2' WHERE key='schema_version'")
    db.commit()
    db.close()
    store = SqliteCheckpointStore(path)
    assert store.load() == _cp(5)
    store.save(_cp(6))
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM checkpoint_meta WHERE key='schema_version'").fetchone() == ("3",)
    assert db.execute("SELECT COUNT(*) FROM checkpoint_parts WHERE sha256 IS NULL").fetchone() == (0,)


def test_an_unreadable_checkpoint_falls_back_to_the_newest_readable_backup(tmp_path: Path) -> None:
    path = tmp_path / "cp.sqlite"
    store = SqliteCheckpointStore(path, backups=2, backup_interval_s=0.0)  # a copy after every save
    for n in (100, 200, 300):
        store.save(_cp(n))
    store.close()
    assert (tmp_path / "cp.sqlite.1").exists() and (tmp_path / "cp.sqlite.2").exists()
    _damage(path, "bit flip")
    _damage(tmp_path / "cp.sqlite.1", "bit flip")  # the newest copy is damaged too: the next one

    store = SqliteCheckpointStore(path, backups=2, backup_interval_s=3600.0)
    cp = store.load()
    assert cp is not None and cp.engine == _cp(200).engine and cp.offsets == {("t", 0): 200}
    assert len(cp.skipped) == 2 and "SHA-256" in cp.skipped[0] and "cp.sqlite.1" in cp.skipped[1]
    assert [p for p, _ in store.quarantined()] != []  # the damaged rows are kept aside in the file
    # the store does not hold the restored parts: the next save is a whole one, and readable
    store.save(_cp(201))
    assert store.load() == _cp(201)


def test_without_a_readable_backup_the_checkpoint_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "cp.sqlite"
    store = SqliteCheckpointStore(path, backups=1, backup_interval_s=0.0)
    store.save(_cp(100))
    store.close()
    _damage(path, "bit flip")
    _damage(tmp_path / "cp.sqlite.1", "bit flip")
    with pytest.raises(CheckpointLost, match="backup .*cp.sqlite.1"):
        SqliteCheckpointStore(path, backups=1).load()


def test_backups_are_made_at_most_every_interval(tmp_path: Path) -> None:
    path = tmp_path / "cp.sqlite"
    store = SqliteCheckpointStore(path, backups=2, backup_interval_s=3600.0)
    store.save(_cp(100))
    store.save(_cp(200))
    assert SqliteCheckpointStore(tmp_path / "cp.sqlite.1").load() == _cp(100)  # the first save's copy
    assert not (tmp_path / "cp.sqlite.2").exists()
