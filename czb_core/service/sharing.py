"""Read-only links to one finished job's result, for someone without an account on this server.

A link is a random token (256 bits from `secrets`): knowing it is the whole permission, so it cannot be
guessed, and the owner can revoke it at any time. Links live in the `shares` table of the workspace's
SQLite file; deleting the job removes its links (`JobStore.delete_job`). Only the job's owner (or an
admin) can make or revoke a link; for anyone else the job or link is "not found", as everywhere else.

Whoever holds a link sees the run, not who ran it or where the server keeps its files: the run record it
shows and offers (and the one inside the result file) is `public_record`'s, without owners, e-mail
addresses or server paths.
"""

from __future__ import annotations

import re
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import anndata as ad
import numpy as np

from czb_core.errors import ConfigError
from czb_core.models.record import h5_safe, utc_now
from czb_core.service.access import visible
from czb_core.service.database import init_db, open_db
from czb_core.service.jobs.artifacts import EMBEDDING_H5AD, is_complete
from czb_core.service.jobs.store import DONE, Job, JobStore

TOKEN_BYTES = 32
PRIVATE_KEYS = frozenset({"owner"})  # who ran the job (`job.owner` in a run record)
# An absolute or home-relative path (not the path part of a URI such as s3://bucket/key), or a file:// URI;
# a closing bracket or quote after it is not part of it.
SERVER_PATH = re.compile(r"file://[^\s'\"<>)\]}]+|(?<![\w.:/~-])~?/[^\s'\"<>)\]}]+")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
PLACEHOLDERS = ((SERVER_PATH, "<server path>"), (EMAIL, "<e-mail>"))
_DROP = object()

SCHEMA = """
CREATE TABLE IF NOT EXISTS shares (
    token TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS shares_job ON shares (job_id);
"""


@dataclass(frozen=True)
class Share:
    token: str
    job_id: str
    owner: str  # the job's owner, whoever made the link (the owner or an admin)
    created_at: str


class Shares:
    """The share links of the jobs in `store`; methods taking `scope` act for that owner (None: an admin)."""

    def __init__(self, store: JobStore):
        self.store = store
        init_db(store.db_path, SCHEMA)

    def share_job(self, job_id: str, scope: Optional[str] = None) -> str:
        """A new link token to the job's result; only a done job with its files has a result to show."""
        job = self._visible_job(job_id, scope)
        if job.status != DONE or not is_complete(job.artifact_dir):
            raise ConfigError(f"job {job_id} is {job.status}; only a finished run's result can be shared")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        with open_db(self.store.db_path) as conn:
            conn.execute("INSERT INTO shares (token, job_id, owner, created_at) VALUES (?, ?, ?, ?)",
                         (token, job.id, job.owner, utc_now()))
        return token

    def revoke_share(self, token: str, scope: Optional[str] = None) -> None:
        """The link stops working at once; someone else's (or an unknown) link is "not found"."""
        with open_db(self.store.db_path, immediate=True) as conn:  # read then write: no writer may come between
            row = conn.execute("SELECT owner FROM shares WHERE token = ?", (token,)).fetchone()
            if row is None or not visible(row["owner"], scope):
                raise KeyError("share link not found")
            conn.execute("DELETE FROM shares WHERE token = ?", (token,))

    def shares_of(self, job_id: str, scope: Optional[str] = None) -> list[Share]:
        """The job's live links, newest first."""
        self._visible_job(job_id, scope)
        with open_db(self.store.db_path) as conn:
            rows = conn.execute("SELECT * FROM shares WHERE job_id = ? ORDER BY created_at DESC, rowid DESC",
                                (job_id,)).fetchall()
        return [Share(**dict(row)) for row in rows]

    def resolve_share(self, token: str) -> Optional[Job]:
        """The job a link shows, or None for a revoked or unknown link, or a job (or files) deleted since."""
        if not isinstance(token, str) or not token:
            return None
        with open_db(self.store.db_path) as conn:
            row = conn.execute("SELECT job_id FROM shares WHERE token = ?", (token,)).fetchone()
        job = self.store.get(row["job_id"]) if row else None
        if job is None or job.status != DONE or not is_complete(job.artifact_dir):
            return None
        return job

    def _visible_job(self, job_id: str, scope: Optional[str]) -> Job:
        job = self.store.get(job_id)
        if job is None or not visible(job.owner, scope):
            raise KeyError(f"job {job_id} not found")
        return job


def public_record(record: Mapping[str, Any]) -> dict:
    """The run record as a share link shows it: what was run and how (model, parameters, weights, versions,
    timings), without who ran it or where the server keeps files. `owner` entries are left out, and so is
    every text that is a server path or an e-mail address; one inside other text (a note, a validation
    message) is replaced by `<server path>` or `<e-mail>`. Works on a record read from `record.json` and on
    one read back from an h5ad's `uns` (numpy strings and arrays)."""
    return _public(record)


def _public(value: Any) -> Any:
    if isinstance(value, Mapping):
        kept = {key: _public(item) for key, item in value.items() if str(key) not in PRIVATE_KEYS}
        return {key: item for key, item in kept.items() if item is not _DROP}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [item for item in map(_public, value) if item is not _DROP]
    if isinstance(value, str):
        if any(pattern.fullmatch(value.strip()) for pattern, _ in PLACEHOLDERS):
            return _DROP
        for pattern, placeholder in PLACEHOLDERS:
            value = pattern.sub(placeholder, value)
        return str(value)
    return value


def public_result(artifact_dir: Path) -> bytes:
    """The run's `embedding.h5ad` as a share link offers it: the same cells, embedding and obs, with the
    public run record in `uns["czb_run"]` (the stored one names the owner and the dataset's server path)."""
    adata = ad.read_h5ad(Path(artifact_dir) / EMBEDDING_H5AD)
    adata.uns["czb_run"] = h5_safe(public_record(adata.uns.get("czb_run") or {}))
    with tempfile.TemporaryDirectory(prefix="czb-share-") as folder:
        path = Path(folder) / EMBEDDING_H5AD
        adata.write_h5ad(path)
        return path.read_bytes()
