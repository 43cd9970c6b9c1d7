"""Running one claimed job: embed (halving the batch size after a GPU out-of-memory error), UMAP, artifacts.

The same `JobRunner` runs inside a worker process (the server's default, see `workers.py`) or on a thread
of the process that owns the manager (tests with fake runs). Cancellation always goes through the job
store: the manager sets the job's cancel flag, and a watcher thread here turns it into the run's
`CancelToken`, which the model checks between batches. Whatever a job raises fails that job only.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from czb_core.errors import Cancelled, CzbError, DeviceOutOfMemory
from czb_core.models.device import free_cuda_cache
from czb_core.models.pipeline import RunResult, write_run_h5ad
from czb_core.progress import CancelToken, ProgressCallback, Throttle
from czb_core.service.jobs.artifacts import EMBEDDING_H5AD, RECORD_JSON, UMAP_NPY, record_json
from czb_core.service.jobs.store import CANCELLED, DONE, FAILED, Job, JobStore
from czb_core.service.workspace import Workspace
from czb_core.types import Organism
from czb_core.viz.umap import compute_umap

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25
CANCEL_POLL_S = 0.2


def error_message(exc: BaseException) -> str:
    """Our errors are written for the user; anything else is named by its type."""
    return str(exc) if isinstance(exc, CzbError) else f"{type(exc).__name__}: {exc}"


class StoreProgress:
    """A run's progress callback: writes to the store as a `Throttle` allows, so a fast batch loop does not
    hammer SQLite. It also adds up the time spent in each named step (from one step change to the next),
    for the run record's `step_seconds`."""

    def __init__(self, store: JobStore, job_id: str, interval: float = PROGRESS_INTERVAL_S):
        self.store, self.job_id = store, job_id
        self.throttle = Throttle(interval)
        self._step: Optional[str] = None
        self._step_started = 0.0
        self.step_seconds: dict[str, float] = {}

    def __call__(self, step: str, done: float, total: Optional[float]) -> None:
        if step != self._step:
            now = time.monotonic()
            self._close_step(now)
            self._step, self._step_started = step, now
        if self.throttle.allow(step, done, total):
            self.store.update_progress(self.job_id, step, done, total)

    def _close_step(self, now: float) -> None:
        if self._step is not None:
            spent = self.step_seconds.get(self._step, 0.0) + now - self._step_started
            self.step_seconds[self._step] = round(spent, 3)

    def finish(self) -> dict[str, float]:
        """Close the last step and return the seconds per step."""
        self._close_step(time.monotonic())
        self._step_started = time.monotonic()
        return self.step_seconds


class JobRunner:
    """Runs claimed jobs with `run_fn` (`czb_core.models.pipeline.embed_file`, or a test's stand-in)."""

    def __init__(self, workspace: Workspace, store: JobStore, run_fn: Callable):
        self.workspace, self.store, self.run_fn = workspace, store, run_fn

    def run(self, job: Job) -> None:
        token = CancelToken()
        watching = threading.Event()
        watcher = threading.Thread(target=self._watch_cancel, args=(job.id, token, watching), daemon=True)
        watcher.start()
        progress = StoreProgress(self.store, job.id)
        artifact_dir = self.workspace.root / "jobs" / job.id
        try:
            result = self._embed(job, token, progress)
            self._save(job, result, artifact_dir, token, progress)
        except Cancelled:
            shutil.rmtree(artifact_dir, ignore_errors=True)
            self.store.set_status(job.id, CANCELLED, message="cancelled")
        except (Exception, SystemExit) as exc:  # SystemExit: argparse in model code must not end the worker
            log.exception("job %s (%s/%s on %s) failed", job.id, job.model, job.variant, job.device)
            shutil.rmtree(artifact_dir, ignore_errors=True)
            self.store.set_status(job.id, FAILED, message="failed", error=error_message(exc))
        else:
            self.store.set_status(job.id, DONE, message="done", artifact_dir=artifact_dir)
        finally:
            watching.set()

    def _watch_cancel(self, job_id: str, token: CancelToken, done: threading.Event) -> None:
        """Turn the job's cancel flag in the store into its token (the run checks it between batches)."""
        while not done.wait(CANCEL_POLL_S):
            try:
                job = self.store.get(job_id)
            except Exception:  # a busy database: look again next time
                continue
            if job is not None and job.cancel_requested:
                token.cancel()
                return

    def _embed(self, job: Job, token: CancelToken, progress: ProgressCallback) -> RunResult:
        """`run_fn`, halving the batch size the runner used after each CUDA out-of-memory error, down to 1."""
        spec = job.spec
        path = self.workspace.dataset_path(spec.dataset_sha256)
        organism = Organism.parse(spec.organism) if spec.organism else None
        params = dict(spec.params)
        token.check()
        while True:
            try:
                return self.run_fn(
                    path, spec.model, spec.variant, organism=organism, params=params, weights=spec.weights,
                    device=job.device, progress=progress, cancel=token, input_sha256=spec.dataset_sha256,
                )
            except DeviceOutOfMemory as exc:
                batch = exc.batch_size
            free_cuda_cache()  # out of the except block: the traceback holding the GPU tensors is gone
            if batch // 2 < 1:
                raise CzbError(
                    "CUDA out of memory even at batch size 1: this model and dataset do not fit in the GPU "
                    "memory that is free; wait for other GPU work to finish, or run on the CPU"
                )
            params["batch_size"] = batch // 2
            self.store.add_note(job.id, f"CUDA out of memory at batch size {batch}; retried at {batch // 2}")

    def _save(
        self, job: Job, result: RunResult, artifact_dir: Path, token: CancelToken, progress: StoreProgress,
    ) -> None:
        """UMAP and artifacts; `record.json` last, as the mark of a complete set."""
        token.check()
        progress("umap", 0, 1)
        umap_n2 = compute_umap(result.emb_nd, seed=int(result.record.get("seed") or 0))
        progress("umap", 1, 1)
        token.check()
        result.record["job"] = {
            "id": job.id, "owner": job.owner, "spec_key": job.spec_key, "device": job.device,
            "notes": self.store.get(job.id).notes,
        }
        artifact_dir.mkdir(parents=True, exist_ok=True)
        write_run_h5ad(result, artifact_dir / EMBEDDING_H5AD)
        np.save(artifact_dir / UMAP_NPY, umap_n2)
        result.record["job"]["step_seconds"] = progress.finish()
        (artifact_dir / RECORD_JSON).write_bytes(record_json(result.record))
