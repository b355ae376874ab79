"""The embedded checkpoint store: one SQLite file (WAL), a manifest row and a row per part, checksummed.

Per scope a manifest row (``checkpoints``) and a row per part (``checkpoint_parts``), replaced
together in one transaction (``watcher.storage.checkpoint``: incremental, only the changed parts).
``synchronous=FULL``: the commit that makes a checkpoint current is on disk before the offsets it
covers are committed to Kafka (a power loss must not leave Kafka ahead of the file). The connection
may be used from the checkpointer's writer thread: a lock serialises its users.

**Never forgotten silently** (issue #15). Every manifest and part row carries the SHA-256 of its
bytes, and the file records that a scope was written (``written:<scope>`` in ``checkpoint_meta``).
A checkpoint whose bytes do not match (a flipped bit, a truncated or edited row: an edited count is
refused, not accepted), whose manifest or part does not decode (another version), whose parts or
whose row are missing, raises ``CheckpointLost``, never "no checkpoint yet": the daemon refuses to
start unless told to start fresh (``watcher run --reset-state``). Its rows are first moved, bytes
and reason, to ``checkpoint_quarantine``, so the fresh state's checkpoints never overwrite them.
Rows written before checksums existed (schema 2) have none and are read as they are.

**Backups to fall back to.** With ``backups`` > 0, at most every ``backup_interval_s`` a save ends
with an online copy of the whole file (SQLite's backup API) to ``<path>.1``, the older copies moving
to ``<path>.2``... A checkpoint that cannot be read in the file is then looked for in the copies,
newest first: the first readable one is restored, with its own (older) offsets, so the batches after
it are read again and every event still counts once. The returned checkpoint's ``skipped`` says why
the newer one was not used (the daemon counts it: ``watcher_checkpoint_fallbacks_total``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import sqlite3
import threading
import time

from watcher.errors import CheckpointError, CheckpointLost, CheckpointUnavailable
from watcher.storage.checkpoint import (
    CHECKPOINT_VERSION,
    SCOPE_ALL,
    Checkpoint,
    _manifest,
    _with_parts,
    decode,
    decode_part,
    encode_part,
    read_manifest,
)
from watcher.storage.sqlite import open_store

__all__ = ["SqliteCheckpointStore"]

log = logging.getLogger(__name__)

_DDL = (
    "CREATE TABLE IF NOT EXISTS checkpoint_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS checkpoints (scope TEXT PRIMARY KEY, version INTEGER NOT NULL, "
    "written_at REAL NOT NULL, document BLOB NOT NULL, sha256 TEXT)",
    "CREATE TABLE IF NOT EXISTS checkpoint_parts (scope TEXT NOT NULL, part TEXT NOT NULL, "
    "data BLOB NOT NULL, sha256 TEXT, PRIMARY KEY (scope, part))",
    # unreadable checkpoints, kept for an operator: part '' is the manifest
    "CREATE TABLE IF NOT EXISTS checkpoint_quarantine (scope TEXT NOT NULL, quarantined_at REAL NOT NULL, "
    "part TEXT NOT NULL, reason TEXT NOT NULL, data BLOB NOT NULL)",
)
# 2: parts in rows of their own (a v1 file gets the table; its v1 documents are read);
# 3: SHA-256 per row, the quarantine (a v2 file gets the columns; its rows are read unchecked)
_STORE_SCHEMA = 3


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class SqliteCheckpointStore:
    """``CheckpointStore`` in one SQLite file: incremental parts, checksums, quarantine (module docstring)."""

    def __init__(
        self, path: str | os.PathLike[str], *, backups: int = 0, backup_interval_s: float = 600.0
    ) -> None:
        self.path = str(path)
        self.backups = backups
        self.backup_interval_s = backup_interval_s
        self._backed_up_at: float | None = None  # time.monotonic() of the last copy (None: not yet)
        self._lock = threading.Lock()
        self._db = open_store(
            self.path,
            _DDL,
            meta_table="checkpoint_meta",
            schema_version=_STORE_SCHEMA,
            what="checkpoint file",
            synchronous="FULL",
        )
        with self._lock:
            try:
                for table in ("checkpoints", "checkpoint_parts"):
                    columns = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
                    if "sha256" not in columns:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN sha256 TEXT")
                self._db.execute(
                    "UPDATE checkpoint_meta SET value=? WHERE key='schema_version'", (str(_STORE_SCHEMA),)
                )
            except sqlite3.Error as exc:
                raise CheckpointError(
                    f"checkpoint file {self.path}: cannot upgrade the schema: {exc}"
                ) from exc

    def load(self, scope: str = SCOPE_ALL) -> Checkpoint | None:
        try:
            return self._load_locked(scope)
        except CheckpointLost as lost:
            return self._from_backup(scope, lost)

    def _from_backup(self, scope: str, lost: CheckpointLost) -> Checkpoint:
        """The newest readable copy's checkpoint of ``scope``; ``lost`` again when there is none."""
        reasons = list(lost.reasons)
        for i in range(1, self.backups + 1):
            copy = f"{self.path}.{i}"
            if not os.path.exists(copy):
                continue
            try:
                store = SqliteCheckpointStore(copy)
                try:
                    cp = store.load(scope)
                finally:
                    store.close()
            except CheckpointError as exc:
                reasons.append(f"backup {copy}: {exc}")
                continue
            if cp is None:
                reasons.append(f"backup {copy}: no checkpoint of {scope!r}")
                continue
            log.error(
                "checkpoint of %r in %s unreadable (%s): restored from %s", scope, self.path, lost, copy
            )
            return dataclasses.replace(cp, skipped=(*cp.skipped, *reasons))
        raise CheckpointLost(scope, reasons, where=self.path) from lost

    def _load_locked(self, scope: str) -> Checkpoint | None:
        with self._lock:
            try:
                return self._load(scope)
            except sqlite3.Error as exc:
                if isinstance(exc, sqlite3.OperationalError):  # locked, I/O: the file may be fine
                    raise CheckpointUnavailable(f"cannot read checkpoint file {self.path}: {exc}") from exc
                raise CheckpointError(f"cannot read checkpoint file {self.path}: {exc}") from exc

    def _load(self, scope: str) -> Checkpoint | None:
        db = self._db
        row = db.execute("SELECT document, sha256 FROM checkpoints WHERE scope=?", (scope,)).fetchone()
        if row is None:
            if db.execute("SELECT 1 FROM checkpoint_meta WHERE key=?", (f"written:{scope}",)).fetchone():
                self._lost(scope, "its row is missing (deleted?)")
            return None
        document, sha = bytes(row[0]), row[1]
        try:
            if sha is not None and _sha(document) != sha:
                raise CheckpointError("the manifest does not match its SHA-256")
            if document[:1] == b"{":
                return decode(document)
            cp, names = read_manifest(document)
            parts: dict[str, object] = {}
            rows = db.execute("SELECT part, data, sha256 FROM checkpoint_parts WHERE scope=?", (scope,))
            stored = {name: (bytes(data), digest) for name, data, digest in rows}
            missing = [n for n in names if n not in stored]
            if missing:
                raise CheckpointError(f"parts missing: {missing[:3]}")
            for name in names:
                data, digest = stored[name]
                if digest is not None and _sha(data) != digest:
                    raise CheckpointError(f"part {name!r} does not match its SHA-256")
                parts[name] = decode_part(data)
        except CheckpointError as exc:
            self._lost(scope, str(exc))
        return _with_parts(cp, parts)

    def _lost(self, scope: str, reason: str) -> None:
        """Move the scope's rows to the quarantine (a fresh state's saves cannot overwrite them), then
        raise ``CheckpointLost``."""
        db = self._db
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT INTO checkpoint_quarantine SELECT scope, ?, '', ?, document FROM checkpoints "
                "WHERE scope=?",
                (now, reason, scope),
            )
            db.execute(
                "INSERT INTO checkpoint_quarantine SELECT scope, ?, part, ?, data FROM checkpoint_parts "
                "WHERE scope=?",
                (now, reason, scope),
            )
            db.execute("DELETE FROM checkpoints WHERE scope=?", (scope,))
            db.execute("DELETE FROM checkpoint_parts WHERE scope=?", (scope,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        raise CheckpointLost(scope, [reason], where=self.path)

    def save(self, cp: Checkpoint, scope: str = SCOPE_ALL) -> int:
        fresh = {n: encode_part(v) for n, v in cp.engine.items()}
        names = sorted({*fresh, *cp.kept})
        manifest = _manifest(cp, names)
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    held = {
                        r[0] for r in db.execute("SELECT part FROM checkpoint_parts WHERE scope=?", (scope,))
                    }
                    if cp.kept - held:
                        raise CheckpointError(
                            f"checkpoint {scope}: kept parts not in {self.path}: {sorted(cp.kept - held)[:3]}"
                        )
                    db.executemany(
                        "INSERT INTO checkpoint_parts (scope, part, data, sha256) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (scope, part) DO UPDATE SET data=excluded.data, sha256=excluded.sha256",
                        [(scope, n, b, _sha(b)) for n, b in fresh.items()],
                    )
                    gone = held - set(names)
                    if gone:
                        db.executemany(
                            "DELETE FROM checkpoint_parts WHERE scope=? AND part=?",
                            [(scope, n) for n in gone],
                        )
                    db.execute(
                        "INSERT INTO checkpoints (scope, version, written_at, document, sha256) "
                        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (scope) DO UPDATE SET "
                        "version=excluded.version, written_at=excluded.written_at, "
                        "document=excluded.document, sha256=excluded.sha256",
                        (scope, CHECKPOINT_VERSION, cp.written_at, manifest, _sha(manifest)),
                    )
                    db.execute("INSERT OR IGNORE INTO checkpoint_meta VALUES (?, '1')", (f"written:{scope}",))
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise CheckpointError(f"cannot write checkpoint file {self.path}: {exc}") from exc
            self._back_up()
        return len(manifest) + sum(map(len, fresh.values()))

    def _back_up(self) -> None:
        """Copy the file to ``<path>.1`` (older copies move up) when ``backup_interval_s`` has passed.
        A copy that fails is logged, not raised: the checkpoint itself is written."""
        now = time.monotonic()
        if self.backups <= 0 or (
            self._backed_up_at is not None and now - self._backed_up_at < self.backup_interval_s
        ):
            return
        self._backed_up_at = now
        try:
            for i in range(self.backups, 1, -1):
                if os.path.exists(f"{self.path}.{i - 1}"):
                    os.replace(f"{self.path}.{i - 1}", f"{self.path}.{i}")
            target = sqlite3.connect(f"{self.path}.1.tmp")
            try:
                self._db.backup(target)
            finally:
                target.close()
            os.replace(f"{self.path}.1.tmp", f"{self.path}.1")
        except (OSError, sqlite3.Error) as exc:
            log.warning("checkpoint backup of %s failed (the checkpoint is written): %s", self.path, exc)

    def quarantined(self, scope: str = SCOPE_ALL) -> list[tuple[str, str]]:
        """The rows of ``scope`` kept aside as unreadable: (part, reason); part '' is a manifest."""
        with self._lock:
            rows = self._db.execute(
                "SELECT part, reason FROM checkpoint_quarantine WHERE scope=? ORDER BY quarantined_at, part",
                (scope,),
            ).fetchall()
        return [(p, r) for p, r in rows]

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:  # closing is best effort
                pass
