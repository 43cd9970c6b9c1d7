"""Datasets on disk, each a record with an id and an owner, in the SQLite file they share with the job store.

A dataset is a record (`DatasetRecord.id`), owned by the user who added it; every lookup names a record
id and the caller's scope (`access.py`), so one user's click can only ever reach their own record, and an
admin acts on exactly the record shown on their screen. An uploaded or derived file is stored once as
`datasets/<sha256>.<suffix>`: the same bytes added by two users are two records sharing one file. The
content hash is a cache key only (jobs, the PCA baseline), valid because the bytes read are proven to be
the hashed ones: a file registered by server path stays where the lab keeps it, and its identity (size,
mtime, inode, a hash of its edges; `czb_core.io.file_identity`) is checked before every read, with a full
re-hash when any part changed; a changed file is refused. Deleting a record removes its stored file only
once no record points at that file any more.
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
from czb_core.io.file_identity import FileIdentity
from czb_core.io.hashing import sha256_file
from czb_core.io.reading import check_dataset_file, check_suffix
from czb_core.models.record import utc_now
from czb_core.service.database import DB_NAME, init_db, open_db, storage_errors

CHUNK_BYTES = 8 << 20
INCOMING = ".incoming"


SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_at TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    parent_sha256 TEXT,
    note TEXT NOT NULL DEFAULT '',
    organism TEXT,
    mtime_ns INTEGER,
    inode INTEGER,
    edges_sha256 TEXT,
    UNIQUE (sha256, owner)
);
"""
LEGACY_COLUMNS = "sha256, name, path, owner, created_at, size_bytes, parent_sha256, note"


@dataclass
class DatasetRecord:
    id: str
    sha256: str
    name: str
    path: Path
    owner: str
    created_at: str
    size_bytes: int
    parent_sha256: Optional[str] = None  # the dataset this version was derived from (the same owner's)
    note: str = ""  # what made this version, e.g. "symbols mapped to Ensembl ids"
    organism: Optional[str] = None  # set by the user for this dataset (else detected from its genes)
    identity: Optional[FileIdentity] = None  # the file as it was when hashed

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "DatasetRecord":
        data = {k: row[k] for k in ("id", "sha256", "name", "owner", "created_at", "size_bytes", "parent_sha256",
                                    "note", "organism")}
        return cls(**data, path=Path(row["path"]), identity=FileIdentity.from_columns(row))


def owner_key(owner: str) -> str:
    """A file-name-safe key of an owner (an e-mail may hold any character): names their partial uploads."""
    return hashlib.sha256(owner.encode()).hexdigest()[:16]


class Workspace:
    """Datasets under `<root>/datasets`, records in `<root>/czb.sqlite`: a file per content hash, a record per
    (owner, content), so two users' identical uploads share the bytes but not the record.

    Methods taking `scope` see only that owner's records (None: every owner's, an admin; see `access.py`)."""

    def __init__(self, root: Optional[Path] = None):
        self.root = Path(root) if root is not None else get_settings().workspace
        self.datasets_dir = self.root / "datasets"
        self.datasets_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / DB_NAME
        init_db(self.db_path, "")
        migrate_to_record_ids(self.db_path)
        init_db(self.db_path, SCHEMA)

    # -- adding ------------------------------------------------------------------------------------

    def add_file(
        self, src: Path, name: Optional[str] = None, owner: Optional[str] = None,
        parent_sha256: Optional[str] = None, note: str = "",
    ) -> DatasetRecord:
        """Copy a readable file into the workspace; content this owner has already returns their record."""
        src = check_dataset_file(src)
        owner = owner or get_settings().user
        sha = sha256_file(src)
        dest = self._stored_path(sha, src.suffix)
        with self._incoming(owner, "adding the file") as incoming:
            if not dest.exists():
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
        in-memory upload (a BytesIO, as Streamlit's) is written from its buffer without another copy. While
        it is written it lies in the owner's folder of `.incoming/`, where their disk quota counts it.
        """
        name = Path(str(name).replace("\\", "/")).name  # a browser-supplied name must not pick the directory
        if not name:
            raise InputError("the upload has no file name; name the file NAME.h5ad or NAME.h5 and upload it again")
        check_suffix(name)
        owner = owner or get_settings().user
        if max_bytes is None:
            max_bytes = get_settings().max_upload_mb << 20
        digest, size = hashlib.sha256(), 0
        with self._incoming(owner, f"storing {name}") as incoming:
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
        owner = owner or get_settings().user
        with self._incoming(owner, f"storing {name}") as incoming:
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
        return self._register(sha256_file(src), src.name, src, owner or get_settings().user, None, "")

    def resolve_server_path(self, path: str, roots: Optional[Sequence[Path]] = None) -> Path:
        """The resolved path if it lies under an allowed root and outside the workspace (other users' uploads
        live there); `..` and escaping symlinks are resolved first."""
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
        if not any(resolved.is_relative_to(root) for root in roots) or resolved.is_relative_to(self.root.resolve()):
            raise InputError(
                f"{path} is outside the allowed data folders: {', '.join(str(r) for r in roots)}"
            )
        return resolved

    def check_apart_from_data_roots(self) -> None:
        """Refuse (ConfigError) a workspace that lies inside a data root: users would reach other users'
        uploads and the job database by server path. The server checks it at start."""
        root = self.root.resolve()
        inside = [str(r) for r in get_settings().data_roots if root.is_relative_to(Path(r).resolve())]
        if inside:
            raise ConfigError(f"the workspace {root} lies inside the data folder {inside[0]} (CZB_DATA_ROOTS), where "
                              "users could open other users' files by path; move the workspace (CZB_HOME or "
                              "CZB_WORKSPACE) out of the data folders, or list narrower data folders")

    # -- reading -----------------------------------------------------------------------------------

    def get(self, dataset_id: str, scope: Optional[str] = None) -> DatasetRecord:
        """The record `dataset_id` if `scope` may see it; KeyError ("not found") otherwise, another owner's
        record included (its existence is not confirmed)."""
        query, args = "SELECT * FROM datasets WHERE id = ?", [str(dataset_id)]
        if scope is not None:
            query, args = query + " AND owner = ?", args + [scope]
        with open_db(self.db_path) as conn:
            row = conn.execute(query, args).fetchone()
        if row is None:
            raise KeyError(f"dataset {str(dataset_id)[:16]} not found; add it again")
        return DatasetRecord.from_row(row)

    def find(self, sha256: str, owner: str) -> Optional[DatasetRecord]:
        """`owner`'s record of this content, if they have one (each owner has at most one per content)."""
        with open_db(self.db_path) as conn:
            row = conn.execute("SELECT * FROM datasets WHERE sha256 = ? AND owner = ?", (sha256, owner)).fetchone()
        return DatasetRecord.from_row(row) if row else None

    def set_organism(self, dataset_id: str, organism: Optional[str], scope: Optional[str] = None) -> DatasetRecord:
        """The organism a user set for this dataset (None: detect it from the genes again)."""
        record = self.get(dataset_id, scope)
        with open_db(self.db_path) as conn:
            conn.execute("UPDATE datasets SET organism = ? WHERE id = ?", (organism, record.id))
        return self.get(record.id, scope)

    def list(self, owner: Optional[str] = None) -> list[DatasetRecord]:
        """Newest first; every owner's datasets when `owner` is None."""
        args: tuple[str, ...]
        query, args = "SELECT * FROM datasets", ()
        if owner is not None:
            query, args = query + " WHERE owner = ?", (owner,)
        with open_db(self.db_path) as conn:
            rows = conn.execute(query + " ORDER BY created_at DESC, rowid DESC", args).fetchall()
        return [DatasetRecord.from_row(r) for r in rows]

    def dataset_path(self, dataset_id: str, scope: Optional[str] = None) -> Path:
        """The file of record `dataset_id`, proven to hold the bytes it was hashed from.

        Its identity is compared with the one kept at registration; when any part differs the whole file is
        hashed again: the same content (a `touch`, a copy back) is accepted and its new identity kept, other
        content is refused (an in-place edit must not be read under the old hash, nor reach the results
        cached for it). A file that is gone is refused too."""
        record = self.get(dataset_id, scope)
        try:
            identity = FileIdentity.of(record.path)
        except OSError:
            raise InputError(f"{record.name}: its file is gone or can no longer be read; add the dataset "
                             "again") from None
        if identity == record.identity:
            return record.path
        if identity.size != record.size_bytes or sha256_file(record.path) != record.sha256:
            raise InputError(
                f"{record.name}: the file changed since it was added, so its results would not match its "
                "content; add it again (as a new dataset) to run on what it holds now"
            )
        with open_db(self.db_path) as conn:
            columns = identity.to_columns()
            conn.execute(f"UPDATE datasets SET {', '.join(f'{k} = ?' for k in columns)} WHERE id = ?",
                         (*columns.values(), record.id))
        return record.path

    # -- deleting ----------------------------------------------------------------------------------

    def delete_dataset(self, dataset_id: str, scope: Optional[str] = None) -> DatasetRecord:
        """Remove one record and its owner's runs on it (records, scores, share links, artifacts); the stored
        file goes only when no record is left that points at it.

        Another user's copy of the same upload is a record of its own and keeps the file; a file registered
        by server path belongs to the lab and is never removed; a version derived from this dataset is a
        file of its own and stays, still naming this one as its parent. Refused while a run of the dataset
        is queued or running (cancel it first), before anything is removed. KeyError ("not found") when
        `scope` may not see the record. Returns the removed record.
        """
        from czb_core.service.jobs.store import JobStore  # not at the top: the jobs package imports this module

        record = self.get(dataset_id, scope)
        store = JobStore(self.db_path)
        jobs = store.list(dataset_id=record.id)
        busy = [job.id for job in jobs if not job.is_finished]
        if busy:
            raise ConfigError(f"{record.name} has runs queued or running ({', '.join(busy)}); cancel them before "
                              "deleting the dataset")
        for job in jobs:
            store.delete_job(job.id, record.owner)
        with open_db(self.db_path, immediate=True) as conn:  # the write lock: no upload registers meanwhile
            conn.execute("DELETE FROM datasets WHERE id = ?", (record.id,))
            if self.is_stored_copy(record.path) and not self._points_at(conn, record.path):
                record.path.unlink(missing_ok=True)
        return record

    def is_stored_copy(self, path: Path) -> bool:
        """Whether `path` is one of the workspace's own copies (server files are the lab's, never removed)."""
        return path.parent.resolve() == self.datasets_dir.resolve()

    # -- partial writes --------------------------------------------------------------------------------

    def incoming_bytes(self, owner: str) -> int:
        """Bytes of `owner`'s writes in progress (uploads, fixes): they take disk space before any record does."""
        prefix = owner_key(owner) + "-"
        return sum(f.stat().st_size for d in self._incoming_root().glob(prefix + "*") for f in d.rglob("*")
                   if f.is_file())

    def sweep_incoming(self) -> int:
        """Remove what writes interrupted by a server's end left in `.incoming/`; the server that holds the
        workspace's writer lock (`writer_lock.py`) calls it at start, when no write of its own is under way.
        Returns how many were removed."""
        leftovers = list(self._incoming_root().iterdir()) if self._incoming_root().is_dir() else []
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
        return len(leftovers)

    # -- internals ---------------------------------------------------------------------------------

    @staticmethod
    def _points_at(conn: sqlite3.Connection, path: Path) -> bool:
        return conn.execute("SELECT 1 FROM datasets WHERE path = ? LIMIT 1", (str(path),)).fetchone() is not None

    def _stored_path(self, sha: str, suffix: str) -> Path:
        return self.datasets_dir / f"{sha}{suffix.lower()}"

    def _incoming_root(self) -> Path:
        return self.datasets_dir / INCOMING

    @contextmanager
    def _incoming(self, owner: str, action: str) -> Iterator[Path]:
        """A private directory of `owner` for one write, removed with whatever is left in it (a rejected
        upload); a full disk on the way is a `StorageError` that says so.

        It lies inside `datasets/`, so moving the finished file in is an atomic rename on one filesystem.
        """
        path = self._incoming_root() / f"{owner_key(owner)}-{uuid.uuid4().hex}"
        try:
            with storage_errors(action):
                path.mkdir(parents=True)
                yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def _register(
        self, sha: str, name: str, path: Path, owner: str, parent_sha256: Optional[str], note: str,
    ) -> DatasetRecord:
        """Insert unless this owner has the content already (their first record of it is kept), with the
        file's identity as it is now (it was just hashed).

        Under the write lock, so a deletion cannot remove the file between this check and the insert.
        """
        with storage_errors(f"adding {name}"), open_db(self.db_path, immediate=True) as conn:
            if not path.exists():
                raise InputError(f"{name}: its stored file was removed by a deletion while it was being added; "
                                 "add it again")
            identity = FileIdentity.of(path).to_columns()
            conn.execute(
                "INSERT OR IGNORE INTO datasets (id, sha256, name, path, owner, created_at, parent_sha256, note, "
                f"{', '.join(identity)}) VALUES ({', '.join('?' * (8 + len(identity)))})",
                (uuid.uuid4().hex[:16], sha, name, str(path), owner, utc_now(), parent_sha256, note,
                 *identity.values()),
            )
        return self.find(sha, owner)


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


def migrate_to_record_ids(db_path: Path) -> None:
    """Rebuild a datasets table made before records had ids (keyed by content hash, or by hash and owner)
    as one keyed by record id, keeping every record; the identities of their files are filled in at their
    next read (`Workspace.dataset_path` re-hashes a record that has none)."""
    with open_db(db_path, immediate=True) as conn:
        columns = {row["name"] for row in conn.execute("PRAGMA table_info(datasets)")}
        if not columns or "id" in columns:
            return
        kept = LEGACY_COLUMNS + (", organism" if "organism" in columns else "")
        conn.execute("ALTER TABLE datasets RENAME TO datasets_before_ids")
        conn.execute(SCHEMA.strip().rstrip(";"))
        conn.execute(f"INSERT OR IGNORE INTO datasets (id, {kept}) SELECT lower(hex(randomblob(8))), {kept} "
                     "FROM datasets_before_ids ORDER BY rowid")
        conn.execute("DROP TABLE datasets_before_ids")
