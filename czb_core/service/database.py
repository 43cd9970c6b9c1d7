"""The SQLite file that datasets and jobs share: one connection per transaction.

Streamlit sessions and job workers are threads of one process (and the CLI another process); a
connection per call (WAL, busy timeout) is the simplest safe use of SQLite from all of them.
"""

from __future__ import annotations

import errno
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from czb_core.errors import StorageError

DB_NAME = "czb.sqlite"


@contextmanager
def open_db(db_path: Path, immediate: bool = False) -> Iterator[sqlite3.Connection]:
    """A connection for one transaction: committed on success, rolled back on error, always closed.

    `immediate` takes the write lock up front, for read-then-write steps (claiming a queued job) that
    must not interleave with another writer.
    """
    conn = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 30000")
    try:
        conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def storage_problem(exc: BaseException) -> Optional[str]:
    """What a failed write says about the server's storage, in words an admin acts on; None when `exc` is
    no storage failure (then it is the caller's own error)."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        return "the server's disk is full"
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        if "full" in text:
            return "the server's disk is full (the job database could not grow)"
        if "disk i/o" in text or "readonly" in text or "read-only" in text:
            return f"the server's disk refused a write to the job database ({exc})"
    return None


@contextmanager
def storage_errors(action: str) -> Iterator[None]:
    """Turn a full disk or a failing database during `action` into a `StorageError` that says so; any other
    error passes through unchanged."""
    try:
        yield
    except (OSError, sqlite3.OperationalError) as exc:
        problem = storage_problem(exc)
        if problem is None:
            raise
        raise StorageError(f"{action} failed: {problem}; nothing was kept. Ask an administrator to free "
                           "space on the server, then try again") from None


def init_db(db_path: Path, schema: str) -> None:
    """Create tables if missing; WAL lets pages read while a worker writes progress."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(schema)
    finally:
        conn.close()


def add_missing_column(db_path: Path, table: str, column: str, sql_type: str) -> None:
    """Add a column that a newer version of a table has, to a database made before it existed."""
    with open_db(db_path) as conn:
        columns = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in columns:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}")
