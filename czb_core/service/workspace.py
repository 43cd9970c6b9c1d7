"""Datasets on disk, content-addressed, and the SQLite file they share with the job store.

An uploaded or derived file is stored once as `datasets/<sha256>.<suffix>`: the same bytes uploaded twice
are one dataset, and a job's cache key can name its input by hash. Big files already on the server are
registered where they lie (under allow-listed roots only) instead of being copied. Records live in the
`datasets` table of `<root>/czb.sqlite`, the file the job store uses too (see `database`). Deleting a record
removes its stored file only once no record points at that file any more.
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
from czb_core.errors import ConfigError, InputError
from czb_core.io.hashing import sha256_file
from czb_core.io.reading import check_dataset_file, check_suffix
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
        src = check_dataset_file(src)
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

        `max_bytes` defaults to the configured upload cap (`CZB_MAX_UPLOAD_MB`). An upload with a wrong
        name is refused before it is read; an oversized or unreadable one leaves no file behind. An
        in-memory upload (a BytesIO, as Streamlit's) is written from its buffer without another copy.
        """
        name = Path(str(name).replace("\\", "/")).name  # a browser-supplied name must not pick the directory
        if not name:
            raise InputError("the upload has no file name; name the file NAME.h5ad or NAME.h5 and upload it again")
        check_suffix(name)
        if max_bytes is None:
            max_bytes = get_settings().max_upload_mb << 20
        digest, size = hashlib.sha256(), 0
        with self._incoming() as incoming:
            tmp = incoming / f"upload{Path(name).suffix.lower()}"  # any name the browser sends is a valid path
            with open(tmp, "wb") as out:
                for block in upload_blocks(fileobj):
                    size += len(block)
                    if size > max_bytes:
                        raise InputError(f"{name} is larger than the {max_bytes / (1 << 20):,.4g} MB upload cap")
                    digest.update(block)
                    out.write(block)
            check_dataset_file(tmp, name)
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
        src = check_dataset_file(self.resolve_server_path(str(path)))
        return self._register(sha256_file(src), src.name, src, owner, None, "")

    def resolve_server_path(self, path: str, roots: Optional[Sequence[Path]] = None) -> Path:
        """The resolved path if it lies under an allowed root; `..` and escaping symlinks are resolved first."""
        roots = tuple(Path(r).resolve() for r in (get_settings().data_roots if roots is None else roots))
        if not roots:
            raise InputError(
                "opening files by server path is disabled; an administrator can allow folders by setting "
                "CZB_DATA_ROOTS (directories separated by ':') before starting the app"
            )
        try:
            resolved = Path(path).expanduser().resolve()
        except (RuntimeError, OSError) as exc:  # a symlink loop: RuntimeError before Python 3.13, OSError after
            raise InputError(f"{path}: cannot be followed ({exc}); a symbolic link in it points back at itself, "
                             "ask an administrator to repair the link") from None
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

    # -- deleting ----------------------------------------------------------------------------------

    def delete_dataset(self, sha256: str, scope: Optional[str] = None) -> DatasetRecord:
        """Remove one owner's record of a dataset and that owner's runs on it (records, scores, share links,
        artifacts); the stored file goes only when no record is left that points at it.

        Another user's copy of the same upload is a record of its own and keeps the file; a file registered
        by server path belongs to the lab and is never removed; a version derived from this dataset is a
        file of its own and stays, still naming this one as its parent. Refused while a run of the dataset
        is queued or running (cancel it first), before anything is removed. KeyError ("not found") when
        `scope` has no record of it. Returns the removed record.
        """
        from czb_core.service.jobs.store import JobStore  # not at the top: the jobs package imports this module

        record = self.get(sha256, scope)
        store = JobStore(self.db_path)
        jobs = store.list(dataset_sha256=sha256, owner=record.owner)
        busy = [job.id for job in jobs if not job.is_finished]
        if busy:
            raise ConfigError(f"{record.name} has runs queued or running ({', '.join(busy)}); cancel them before "
                              "deleting the dataset")
        for job in jobs:
            store.delete_job(job.id, record.owner)
        with open_db(self.db_path, immediate=True) as conn:  # the write lock: no upload registers meanwhile
            conn.execute("DELETE FROM datasets WHERE sha256 = ? AND owner = ?", (sha256, record.owner))
            if self.is_stored_copy(record.path) and not self._points_at(conn, record.path):
                record.path.unlink(missing_ok=True)
        return record

    def is_stored_copy(self, path: Path) -> bool:
        """Whether `path` is one of the workspace's own copies (server files are the lab's, never removed)."""
        return path.parent.resolve() == self.datasets_dir.resolve()

    # -- internals ---------------------------------------------------------------------------------

    @staticmethod
    def _points_at(conn: sqlite3.Connection, path: Path) -> bool:
        return conn.execute("SELECT 1 FROM datasets WHERE path = ? LIMIT 1", (str(path),)).fetchone() is not None

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
        """Insert unless this owner has the content already (their first record of it is kept).

        Under the write lock, so a deletion cannot remove the file between this check and the insert.
        """
        owner = owner or get_settings().user
        with open_db(self.db_path, immediate=True) as conn:
            if not path.exists():
                raise InputError(f"{name}: its stored file was removed by a deletion while it was being added; "
                                 "add it again")
            conn.execute(
                "INSERT OR IGNORE INTO datasets (sha256, name, path, owner, created_at, size_bytes, parent_sha256, "
                "note) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (sha, name, str(path), owner, utc_now(), path.stat().st_size, parent_sha256, note),
            )
        return self.get(sha, owner)


def upload_blocks(fileobj: BinaryIO) -> Iterator[bytes | memoryview]:
    """The stream from its start in blocks of `CHUNK_BYTES`: views into an in-memory buffer (no copy),
    else reads (a page may have read the upload already, so a seekable stream is rewound first)."""
    getbuffer = getattr(fileobj, "getbuffer", None)
    if getbuffer is not None:
        with getbuffer() as view:
            for start in range(0, len(view), CHUNK_BYTES):
                yield view[start:start + CHUNK_BYTES]
        return
    seekable = getattr(fileobj, "seekable", None)
    if seekable and seekable():
        fileobj.seek(0)
    while block := fileobj.read(CHUNK_BYTES):
        yield block


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
