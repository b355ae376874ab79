"""Opening watcher's SQLite files (decision log, outbox, checkpoints) the same way everywhere."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from watcher.errors import CheckpointError


def open_store(
    path: str | os.PathLike[str],
    ddl: Sequence[str],
    *,
    meta_table: str,
    schema_version: int,
    what: str,
    synchronous: str = "NORMAL",
) -> sqlite3.Connection:
    """A WAL-mode connection with the tables of ``ddl`` created and the schema version checked.

    ``isolation_level=None``: callers open their own transactions (one per batch). ``synchronous``
    NORMAL in WAL mode survives a process crash with one fsync per WAL checkpoint; FULL also survives
    a power loss at one fsync per commit (the engine checkpoint, written every few seconds, uses it).
    A file written by a newer watcher (a higher schema version) is refused, never rewritten.
    """
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(os.fspath(path), isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA busy_timeout=5000")
        for stmt in ddl:
            db.execute(stmt)
        row = db.execute(f"SELECT value FROM {meta_table} WHERE key='schema_version'").fetchone()
        if row is None:
            db.execute(
                f"INSERT INTO {meta_table} (key, value) VALUES ('schema_version', ?)", (str(schema_version),)
            )
        elif int(row[0]) > schema_version:
            raise CheckpointError(f"{what} {path} has schema {row[0]}, newer than {schema_version}")
    except (sqlite3.Error, OSError) as exc:
        raise CheckpointError(f"cannot open {what} {path}: {exc}") from exc
    return db
