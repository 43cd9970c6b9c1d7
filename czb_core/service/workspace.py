"""Datasets on disk, content-addressed, and the SQLite file they share with the job store.

An uploaded or derived file is stored once as `datasets/<sha256>.<suffix>`: the same bytes uploaded twice
are one dataset, and a job's cache key can name its input by hash. Big files already on the server are
registered where they lie (under allow-listed roots only) instead of being copied. Records live in the
`datasets` table of `<root>/czb.sqlite`, the file the job store uses too (see `database`).
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Sequence

import anndata as ad

from czb_core.config import get_settings
from czb_core.errors import InputError
from czb_core.io.hashing import sha256_file
from czb_core.io.reading import check_readable
from czb_core.models.record import utc_now
from czb_core.service.database import DB_NAME, add_missing_column, init_db, open_db

CHUNK_BYTES = 8 << 20


SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    sha256 TEXT NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_at TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    parent_sha256 TEXT,
    note TEXT NOT NULL DEFAULT '',
    organism TEXT,
    PRIMARY KEY (sha256, owner)
);
"""
COLUMNS = "sha256, name, path, owner, created_at, size_bytes, parent_sha256, note, organism"


@dataclass
class DatasetRecord:
    sha256: str
    name: str
    path: Path
    owner: str
    created_at: str
    size_bytes: int
    parent_sha256: Optional[str] = None  # the dataset this version was derived from
    note: str = ""  # what made this version, e.g. "symbols mapped to Ensembl ids"
    organism: Optional[str] = None  # set by the user for this dataset (else detected from its genes)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "DatasetRecord":
        return cls(**{**dict(row), "path": Path(row["path"])})


class Workspace:
    """Datasets under `<root>/datasets`, records in `<root>/czb.sqlite`: a file per content hash, a record per
    (content hash, owner), so two users' identical uploads share the bytes but not the record.

    Methods taking `scope` see only that owner's records (None: every owner's; see `access.py`)."""

    def __init__(self, root: Optional[Path] = None):
        self.root = Path(root) if root is not None else get_settings().workspace
        self.datasets_dir = self.root / "datasets"
        self.datasets_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / DB_NAME
        init_db(self.db_path, SCHEMA)
        add_missing_column(self.db_path, "datasets", "organism", "TEXT")  # workspaces made before it existed
        key_by_owner(self.db_path)

    # -- adding ------------------------------------------------------------------------------------

    def add_file(
        self, src: Path, name: Optional[str] = None, owner: Optional[str] = None,
        parent_sha256: Optional[str] = None, note: str = "",
    ) -> DatasetRecord:
        """Copy a readable file into the workspace; a file with known content returns its existing record."""
        src = check_readable(src)
        sha = sha256_file(src)
        dest = self._stored_path(sha, src.suffix)
        if not dest.exists():
            with self._incoming() as incoming:
                tmp = incoming / src.name
                shutil.copyfile(src, tmp)
                tmp.replace(dest)
        return self._register(sha, name or src.name, dest, owner, parent_sha256, note)

    def add_stream(
        self, fileobj: BinaryIO, name: str, owner: Optional[str] = None, max_bytes: Optional[int] = None,
    ) -> DatasetRecord:
        """Stream an upload to disk while hashing, so the caller can drop its in-memory copy.

        `max_bytes` defaults to the configured upload cap (`CZB_MAX_UPLOAD_MB`). An oversized or
        unreadable upload leaves no file behind.
        """
        name = Path(name).name  # a browser-supplied name must not pick the directory
        if max_bytes is None:
            max_bytes = get_settings().max_upload_mb << 20
        seekable = getattr(fileobj, "seekable", None)
        if seekable and seekable():
            fileobj.seek(0)  # a page may have read the upload already
        digest, size = hashlib.sha256(), 0
        with self._incoming() as incoming:
            tmp = incoming / name  # check_readable's messages then name the user's file
            with open(tmp, "wb") as out:
                while block := fileobj.read(CHUNK_BYTES):
                    size += len(block)
                    if size > max_bytes:
                        raise InputError(f"{name} is larger than the {max_bytes / (1 << 20):,.4g} MB upload cap")
                    digest.update(block)
                    out.write(block)
            check_readable(tmp)
            sha = digest.hexdigest()
            dest = self._stored_path(sha, tmp.suffix)
            if not dest.exists():
                tmp.replace(dest)
        return self._register(sha, name, dest, owner, None, "")

    def add_anndata(
        self, adata: ad.AnnData, name: str, owner: Optional[str] = None,
        parent_sha256: Optional[str] = None, note: str = "",
    ) -> DatasetRecord:
        """Store a new version produced by a fix; files are named by content, so nothing is overwritten."""
        name = Path(name).name
        if not name.endswith(".h5ad"):
            name += ".h5ad"
        with self._incoming() as incoming:
            tmp = incoming / name
            adata.write_h5ad(tmp)
            sha = sha256_file(tmp)
            dest = self._stored_path(sha, ".h5ad")
            if not dest.exists():
                tmp.replace(dest)
        return self._register(sha, name, dest, owner, parent_sha256, note)

    def add_server_path(self, path: str | Path, owner: Optional[str] = None) -> DatasetRecord:
        """Register a file under an allowed data root where it lies, without copying it.

        The file is still read once to hash it (about 1-2 s per GB on a local disk, longer on network
        storage), because jobs, caching and run records name datasets by content. If the file is later
        changed in place, `dataset_path` refuses it.
        """
        src = check_readable(self.resolve_server_path(str(path)))
        return self._register(sha256_file(src), src.name, src, owner, None, "")

    def resolve_server_path(self, path: str, roots: Optional[Sequence[Path]] = None) -> Path:
        """The resolved path if it lies under an allowed root; `..` and escaping symlinks are resolved first."""
        roots = tuple(Path(r).resolve() for r in (get_settings().data_roots if roots is None else roots))
        if not roots:
            raise InputError(
                "opening files by server path is disabled; an administrator can allow folders by setting "
                "CZB_DATA_ROOTS (directories separated by ':') before starting the app"
            )
        resolved = Path(path).expanduser().resolve()
        if not any(resolved.is_relative_to(root) for root in roots):
            raise InputError(
                f"{path} is outside the allowed data folders: {', '.join(str(r) for r in roots)}"
            )
        return resolved

    # -- reading -----------------------------------------------------------------------------------

    def get(self, sha256: str, scope: Optional[str] = None) -> DatasetRecord:
        """The record of `sha256` visible in `scope`; KeyError ("not found") otherwise."""
        query, args = "SELECT * FROM datasets WHERE sha256 = ?", [sha256]
        if scope is not None:
            query, args = query + " AND owner = ?", args + [scope]
        with open_db(self.db_path) as conn:
            row = conn.execute(query + " ORDER BY rowid LIMIT 1", args).fetchone()
        if row is None:
            raise KeyError(f"dataset {sha256[:12]}... not found; add it again")
        return DatasetRecord.from_row(row)

    def set_organism(self, sha256: str, organism: Optional[str], scope: Optional[str] = None) -> DatasetRecord:
        """The organism a user set for this dataset (None: detect it from the genes again)."""
        record = self.get(sha256, scope)
        with open_db(self.db_path) as conn:
            conn.execute("UPDATE datasets SET organism = ? WHERE sha256 = ? AND owner = ?",
                         (organism, sha256, record.owner))
        return self.get(sha256, record.owner)

    def list(self, owner: Optional[str] = None) -> list[DatasetRecord]:
        """Newest first; every owner's datasets when `owner` is None."""
        query, args = "SELECT * FROM datasets", ()
        if owner is not None:
            query, args = query + " WHERE owner = ?", (owner,)
        with open_db(self.db_path) as conn:
            rows = conn.execute(query + " ORDER BY created_at DESC, rowid DESC", args).fetchall()
        return [DatasetRecord.from_row(r) for r in rows]

    def dataset_path(self, sha256: str, scope: Optional[str] = None) -> Path:
        """The file to run on; a server file that vanished or changed size since it was hashed is refused."""
        record = self.get(sha256, scope)
        if not record.path.exists():
            raise InputError(f"{record.name}: the file {record.path} is gone; add the dataset again")
        if record.path.stat().st_size != record.size_bytes:
            raise InputError(
                f"{record.name}: {record.path} changed since it was added (size differs); add it again so its "
                "hash, and the results cached for it, match its content"
            )
        return record.path

    # -- internals ---------------------------------------------------------------------------------

    def _stored_path(self, sha: str, suffix: str) -> Path:
        return self.datasets_dir / f"{sha}{suffix.lower()}"

    @contextmanager
    def _incoming(self) -> Iterator[Path]:
        """A private directory for one write, removed with whatever is left in it (a rejected upload).

        It lies inside `datasets/`, so moving the finished file in is an atomic rename on one filesystem.
        """
        path = self.datasets_dir / ".incoming" / uuid.uuid4().hex
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def _register(
        self, sha: str, name: str, path: Path, owner: Optional[str], parent_sha256: Optional[str], note: str,
    ) -> DatasetRecord:
        """Insert unless this owner has the content already (their first record of it is kept)."""
        owner = owner or get_settings().user
        with open_db(self.db_path) as conn:
            conn.execute(
                "INSERT OR IGNORE INTO datasets (sha256, name, path, owner, created_at, size_bytes, parent_sha256, "
                "note) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (sha, name, str(path), owner, utc_now(), path.stat().st_size, parent_sha256, note),
            )
        return self.get(sha, owner)


def key_by_owner(db_path: Path) -> None:
    """Rebuild a datasets table keyed by content hash alone (made before owners were kept apart) as one
    keyed by (hash, owner), keeping every record."""
    with open_db(db_path, immediate=True) as conn:
        key = [row["name"] for row in conn.execute("PRAGMA table_info(datasets)") if row["pk"]]
        if key != ["sha256"]:
            return
        conn.execute("ALTER TABLE datasets RENAME TO datasets_by_hash")
        conn.execute(SCHEMA.strip().rstrip(";"))
        conn.execute(f"INSERT INTO datasets ({COLUMNS}) SELECT {COLUMNS} FROM datasets_by_hash")
        conn.execute("DROP TABLE datasets_by_hash")
