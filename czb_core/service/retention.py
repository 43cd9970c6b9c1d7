"""Keeping datasets for a limited time (`CZB_RETENTION_DAYS`; unset: forever), so a shared disk does not
fill with data nobody looks at any more.

A dataset record expires that many days after it was added; the sweep (at server start and daily)
deletes it with its runs through `Workspace.delete_dataset`, the path a user's own deletion takes, so a
file another record still points at stays. A dataset whose run is queued, running or being scored waits
for the next sweep rather than having that work fail under it (and the server start does not fail).

The job manager runs the sweep, so the jobs package imports this module: this module must not import that
package at its top, or importing it first (`import czb_core.service.retention`) would find the package
half-initialised. The job store's statuses are read when a sweep runs.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Optional

from czb_core.config import get_settings
from czb_core.errors import ConfigError
from czb_core.service.workspace import DatasetRecord, Workspace

if TYPE_CHECKING:
    from czb_core.service.jobs.store import JobStore

log = logging.getLogger(__name__)


def expires_at(record: DatasetRecord) -> Optional[datetime]:
    """When the sweep will delete this dataset (UTC), or None when datasets are kept forever."""
    days = get_settings().retention_days
    if days is None:
        return None
    added = datetime.fromisoformat(record.created_at)
    if added.tzinfo is None:  # records written without an offset were written in UTC
        added = added.replace(tzinfo=timezone.utc)
    return added + timedelta(days=days)


def purge_expired(workspace: Workspace, store: JobStore, now: Optional[datetime] = None) -> list[str]:
    """Delete every owner's expired dataset records with their runs; returns "<owner>/<sha256>" of each."""
    from czb_core.service.jobs.store import QUEUED, RUNNING  # see the module docstring

    now = now or datetime.now(timezone.utc)
    purged = []
    for record in workspace.list():
        expiry = expires_at(record)
        if expiry is None or expiry > now:
            continue
        if store.list(dataset_id=record.id, statuses=(QUEUED, RUNNING)):
            log.info("retention: %s/%s expired but has a run in progress; next sweep", record.owner, record.sha256)
            continue
        try:
            workspace.delete_dataset(record.id, record.owner)
        except ConfigError as exc:  # a run being scored
            log.info("retention: %s/%s expired, not deleted yet: %s", record.owner, record.sha256, exc)
            continue
        purged.append(f"{record.owner}/{record.sha256}")
    return purged
