"""The SQLite file that datasets and jobs share: one connection per transaction.

Streamlit sessions and job workers are threads of one process (and the CLI another process); a
connection per call (WAL, busy timeout) is the simplest safe use of SQLite from all of them.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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
