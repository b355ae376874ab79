"""The embedded checkpoint store: one SQLite file, the last few generations of each scope, checksummed.

Each save is a new *generation* of its scope (1, 2, 3...), a row with the document's SHA-256,
written in one transaction (WAL, ``synchronous=FULL``: on disk before the offsets it covers are
committed to Kafka). The newest ``keep`` generations are kept, so a checkpoint that cannot be read
(a flipped bit, a truncated or edited row, a version this watcher does not read, a deleted row) is
not the end of the state: ``load`` falls back to the newest readable generation, whose offsets are
older, and the daemon reads the batches after them again into the state (exactly once still holds:
the state and its offsets travel together). The checkpoint file also records the newest generation
written per scope, so rows deleted from under the daemon are noticed rather than read as "no
checkpoint yet".

An unreadable generation is never overwritten or pruned: it is moved, bytes and reason, to the
``checkpoint_quarantine`` table (the last ``QUARANTINE_KEEP`` per scope), where an operator can look
at it. When no generation of a scope that was written can be read, ``load`` raises
``CheckpointLost``, and the daemon does not start from a fresh state unless told to
(``watcher run --reset-state``).

Files of schema 1 (one row per scope, no checksum) are upgraded in place on open: their row becomes
generation 1, its checksum taken as it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sqlite3
import threading
import time

from watcher.errors import CheckpointError, CheckpointLost, CheckpointUnavailable
from watcher.storage.checkpoint import CHECKPOINT_VERSION, SCOPE_ALL, Checkpoint, decode, encode
from watcher.storage.sqlite import open_store

__all__ = ["DEFAULT_KEEP", "QUARANTINE_KEEP", "SqliteCheckpointStore"]

DEFAULT_KEEP = 3  # generations kept per scope: the newest and two to fall back to
QUARANTINE_KEEP = 20  # unreadable generations kept per scope for an operator to look at

_DDL = (
    "CREATE TABLE IF NOT EXISTS checkpoint_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # schema 1's one row per scope: read once, on upgrade
    "CREATE TABLE IF NOT EXISTS checkpoints (scope TEXT PRIMARY KEY, version INTEGER NOT NULL, "
    "written_at REAL NOT NULL, document BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS checkpoint_generations (scope TEXT NOT NULL, generation INTEGER NOT NULL, "
    "version INTEGER NOT NULL, written_at REAL NOT NULL, sha256 TEXT NOT NULL, document BLOB NOT NULL, "
    "PRIMARY KEY (scope, generation))",
    "CREATE TABLE IF NOT EXISTS checkpoint_quarantine (scope TEXT NOT NULL, generation INTEGER NOT NULL, "
    "reason TEXT NOT NULL, quarantined_at REAL NOT NULL, sha256 TEXT NOT NULL, document BLOB NOT NULL, "
    "PRIMARY KEY (scope, generation))",
)
_STORE_SCHEMA = 2


def _digest(document: bytes) -> str:
    return hashlib.sha256(document).hexdigest()


class SqliteCheckpointStore:
    """``CheckpointStore`` in one SQLite file: generations, checksums, quarantine (module docstring)."""

    def __init__(self, path: str | os.PathLike[str], *, keep: int = DEFAULT_KEEP) -> None:
        if keep < 2:
            raise CheckpointError(f"keep must be at least 2 generations (one to fall back to), got {keep}")
        self.path = str(path)
        self.keep = keep
        self._lock = threading.Lock()
        self._db = open_store(
            self.path,
            _DDL,
            meta_table="checkpoint_meta",
            schema_version=_STORE_SCHEMA,
            what="checkpoint file",
            synchronous="FULL",
        )
        self._upgrade()

    def _upgrade(self) -> None:
        """Schema 1 rows become generation 1 of their scope (trusted as they are: they had no checksum)."""
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    rows = self._db.execute("SELECT scope, version, written_at, document FROM checkpoints")
                    for scope, version, written_at, document in rows.fetchall():
                        data = bytes(document)
                        self._db.execute(
                            "INSERT OR IGNORE INTO checkpoint_generations VALUES (?, 1, ?, ?, ?, ?)",
                            (scope, version, written_at, _digest(data), data),
                        )
                        self._set_latest(scope, 1, only_if_higher=True)
                    self._db.execute("DELETE FROM checkpoints")
                    self._db.execute(
                        "UPDATE checkpoint_meta SET value=? WHERE key='schema_version'", (str(_STORE_SCHEMA),)
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise CheckpointError(f"checkpoint file {self.path}: cannot upgrade the schema: {exc}") from exc

    # -- CheckpointStore --------------------------------------------------------------------------
    def load(self, scope: str = SCOPE_ALL) -> Checkpoint | None:
        """The newest readable generation (``skipped`` says why newer ones were not); unreadable ones
        move to the quarantine. None when nothing was ever written; ``CheckpointLost`` when something
        was and none of it can be read."""
        with self._lock:
            try:
                return self._load(scope)
            except sqlite3.Error as exc:
                if isinstance(exc, sqlite3.OperationalError):  # locked, I/O: the file may be fine
                    raise CheckpointUnavailable(f"cannot read checkpoint file {self.path}: {exc}") from exc
                raise CheckpointError(f"cannot read checkpoint file {self.path}: {exc}") from exc

    def _load(self, scope: str) -> Checkpoint | None:
        latest = self._latest(scope)
        rows = self._db.execute(
            "SELECT generation, sha256, document FROM checkpoint_generations WHERE scope=? "
            "ORDER BY generation DESC",
            (scope,),
        ).fetchall()
        skipped: list[str] = []
        newest = rows[0][0] if rows else 0
        if latest > newest:
            skipped.append(f"generation {latest} is missing")
        for generation, sha256, document in rows:
            data = bytes(document)
            if _digest(data) != sha256:
                reason = "checksum mismatch"
            else:
                try:
                    cp = decode(data)
                except CheckpointError as exc:
                    reason = str(exc)
                else:
                    return dataclasses.replace(cp, generation=generation, skipped=tuple(skipped))
            self._quarantine(scope, generation, reason, sha256, data)
            skipped.append(f"generation {generation}: {reason}")
        if skipped:
            raise CheckpointLost(scope, skipped, where=self.path)
        return None

    def save(self, cp: Checkpoint, scope: str = SCOPE_ALL) -> int:
        data = encode(cp)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    (newest,) = self._db.execute(
                        "SELECT max(g) FROM (SELECT max(generation) AS g FROM checkpoint_generations "
                        "WHERE scope=? UNION ALL "
                        "SELECT max(generation) FROM checkpoint_quarantine WHERE scope=?)",
                        (scope, scope),
                    ).fetchone()
                    generation = max(newest or 0, self._latest(scope)) + 1  # never a number used before
                    self._db.execute(
                        "INSERT INTO checkpoint_generations VALUES (?, ?, ?, ?, ?, ?)",
                        (scope, generation, CHECKPOINT_VERSION, cp.written_at, _digest(data), data),
                    )
                    self._set_latest(scope, generation)
                    self._db.execute(
                        "DELETE FROM checkpoint_generations WHERE scope=? AND generation<=?",
                        (scope, generation - self.keep),
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise CheckpointError(f"cannot write checkpoint file {self.path}: {exc}") from exc
        return len(data)

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:  # closing is best effort
                pass

    # -- generations ------------------------------------------------------------------------------
    def generations(self, scope: str = SCOPE_ALL) -> list[int]:
        """The generations kept for ``scope``, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT generation FROM checkpoint_generations WHERE scope=? ORDER BY generation DESC",
                (scope,),
            ).fetchall()
        return [g for (g,) in rows]

    def quarantined(self, scope: str = SCOPE_ALL) -> list[tuple[int, str]]:
        """The unreadable generations kept aside for ``scope``: (generation, reason), newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT generation, reason FROM checkpoint_quarantine WHERE scope=? ORDER BY generation DESC",
                (scope,),
            ).fetchall()
        return [(g, r) for g, r in rows]

    def _latest(self, scope: str) -> int:
        row = self._db.execute(
            "SELECT value FROM checkpoint_meta WHERE key=?", (f"latest:{scope}",)
        ).fetchone()
        return int(row[0]) if row is not None else 0

    def _set_latest(self, scope: str, generation: int, *, only_if_higher: bool = False) -> None:
        if only_if_higher and self._latest(scope) >= generation:
            return
        self._db.execute(
            "INSERT INTO checkpoint_meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value=excluded.value",
            (f"latest:{scope}", str(generation)),
        )

    def _quarantine(self, scope: str, generation: int, reason: str, sha256: str, data: bytes) -> None:
        """Move an unreadable generation aside (kept, never overwritten); the oldest beyond
        ``QUARANTINE_KEEP`` per scope go."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "INSERT OR IGNORE INTO checkpoint_quarantine VALUES (?, ?, ?, ?, ?, ?)",
                (scope, generation, reason, time.time(), sha256, data),
            )
            self._db.execute(
                "DELETE FROM checkpoint_generations WHERE scope=? AND generation=?", (scope, generation)
            )
            self._db.execute(
                "DELETE FROM checkpoint_quarantine WHERE scope=? AND generation NOT IN (SELECT generation "
                "FROM checkpoint_quarantine WHERE scope=? ORDER BY generation DESC LIMIT ?)",
                (scope, scope, QUARANTINE_KEEP),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
