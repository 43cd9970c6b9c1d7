"""Read-only links to one finished job's result, for someone without an account on this server.

A link is a random token (256 bits from `secrets`): knowing it is the whole permission, so it cannot be
guessed, and the owner can revoke it at any time. Links live in the `shares` table of the workspace's
SQLite file; deleting the job removes its links (`JobStore.delete_job`). Only the job's owner (or an
admin) can make or revoke a link; for anyone else the job or link is "not found", as everywhere else.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Optional

from czb_core.errors import ConfigError
from czb_core.models.record import utc_now
from czb_core.service.access import visible
from czb_core.service.database import init_db, open_db
from czb_core.service.jobs.artifacts import is_complete
from czb_core.service.jobs.store import DONE, Job, JobStore

TOKEN_BYTES = 32

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
