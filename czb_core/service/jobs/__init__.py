"""Runs as jobs: specs and their cache key, the SQLite job store, and the per-device worker manager."""

from czb_core.service.jobs.manager import JobManager
from czb_core.service.jobs.spec import JobSpec
from czb_core.service.jobs.store import Job, JobStore

__all__ = ["Job", "JobManager", "JobSpec", "JobStore"]
