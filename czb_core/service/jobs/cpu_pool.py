"""The CPU pool: UMAPs and metrics run in worker processes of their own (`CZB_CPU_WORKERS`, default 1).

A UMAP or a metric suite is minutes of CPU on a large dataset. On the device worker it would keep the
GPU idle while its queue waits; on a thread of the server it would compete with the pages for the
interpreter. So each pool worker takes, from the job store, the oldest embedded job waiting for its
UMAP (a job's completion comes first), else the oldest scoring run whose embedding is done. The pool
workers are spawned and supervised like the device workers (`workers.py`): one that dies fails the UMAP
or scoring run it held, with the cause, and is replaced.
"""

from __future__ import annotations

from czb_core.service.jobs.execution import JobRunner
from czb_core.service.jobs.scoring import run_score
from czb_core.service.jobs.store import JobStore
from czb_core.service.workspace import Workspace


class CpuTasks:
    """What one pool worker does between polls; `score=False` leaves scoring runs queued (tests of
    stand-in embeddings)."""

    def __init__(self, workspace: Workspace, store: JobStore, score: bool = True):
        self.workspace, self.store, self.score = workspace, store, score
        self.runner = JobRunner(workspace, store)

    def run_next(self, worker_pid: int) -> bool:
        """Run the next UMAP, else the next scoring run; False when there was none."""
        job = self.store.claim_next_umap(worker_pid)
        if job is not None:
            self.runner.finish(job)
            return True
        if self.score:
            score = self.store.claim_next_score(worker_pid)
            if score is not None:
                run_score(self.workspace, self.store, score)
                return True
        return False

