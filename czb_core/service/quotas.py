"""Per-user limits on a shared server: disk space (`CZB_USER_QUOTA_GB`) and runs waiting in the queues
(`CZB_MAX_QUEUED_JOBS`), so one user cannot fill the disk or the GPU queue for everyone.

A user's disk use is what deleting their items would free from their account: the workspace copies their
dataset records point at (a file two users uploaded counts for each: either may delete theirs, and the
other keeps the bytes), their runs' artifact directories, and their uploads and fixes being written.
Fixes are checked like uploads (a new version is about its parent's size). Files registered by server path are the
lab's, not copies, and do not count. The checks run before the work, so a refusal loses nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from czb_core.config import get_settings
from czb_core.errors import ConfigError
from czb_core.service.workspace import Workspace

if TYPE_CHECKING:  # at run time the job manager, which checks submissions here, imports this module
    from czb_core.service.jobs.store import JobStore

GB = 1 << 30
FIX = ("delete datasets or results you no longer need (Datasets and Results pages), or ask an admin to raise "
       "CZB_USER_QUOTA_GB")


class QuotaError(ConfigError):
    """A user's upload or run would pass a per-user limit; the message gives the numbers and the way out."""


def format_size(n_bytes: int) -> str:
    """Bytes in the largest unit that keeps a number of at least 1 (quota messages, the sidebar)."""
    if n_bytes < 1024:
        return f"{n_bytes:,} bytes"
    size = n_bytes / 1024
    for unit in ("KB", "MB"):
        if size < 1024:
            return f"{size:,.2f} {unit}"
        size /= 1024
    return f"{size:,.2f} GB"


def directory_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


class Quotas:
    """The limits as configured now, over the datasets of `workspace` and the jobs of `store`."""

    def __init__(self, workspace: Workspace, store: JobStore):
        self.workspace, self.store = workspace, store

    def disk_use(self, owner: str) -> int:
        """Bytes held on the workspace's disk for `owner`: their stored dataset copies, run artifacts, and
        uploads or fixes being written."""
        stored = {r.path: r.size_bytes for r in self.workspace.list(owner) if self.workspace.is_stored_copy(r.path)}
        artifacts = {self.store.artifact_dir_of(job) for job in self.store.list(owner=owner)}
        return (sum(stored.values()) + sum(directory_size(d) for d in artifacts)
                + self.workspace.incoming_bytes(owner))

    def limit_bytes(self) -> Optional[int]:
        quota_gb = get_settings().user_quota_gb
        return None if quota_gb is None else int(quota_gb * GB)

    def check_upload(self, owner: str, size_bytes: int) -> None:
        """Refuse an upload of `size_bytes` that would take `owner` past the disk quota."""
        limit = self.limit_bytes()
        if limit is None:
            return
        used = self.disk_use(owner)
        if used + size_bytes > limit:
            raise QuotaError(
                f"this {format_size(size_bytes)} upload would take {owner} to {format_size(used + size_bytes)}, "
                f"past the {format_size(limit)} disk quota ({format_size(used)} in use); {FIX}"
            )

    def check_submit(self, owner: str) -> None:
        """Refuse a new run when `owner` has the most runs waiting that one user may have, or is at the disk
        quota already (a run's results take space too)."""
        cap = get_settings().max_queued_jobs
        waiting = self.store.count_queued(owner)
        if waiting >= cap:
            raise QuotaError(
                f"{owner} has {waiting} runs waiting in the queue, the most one user may have "
                f"(CZB_MAX_QUEUED_JOBS={cap}); wait for some to start, cancel some, or ask an admin to raise "
                "CZB_MAX_QUEUED_JOBS"
            )
        limit = self.limit_bytes()
        if limit is not None and (used := self.disk_use(owner)) >= limit:
            raise QuotaError(f"{owner} uses {format_size(used)}, the whole {format_size(limit)} disk quota, so no "
                             f"new run can store its results; {FIX}")
