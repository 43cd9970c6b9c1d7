"""Running one claimed job in two stages: embed (halving the batch size after a GPU out-of-memory error)
on its device, then UMAP and the finished artifacts in the CPU pool.

`JobRunner.run` (the device worker) writes `embedding.h5ad` and the run record so far
(`record.pending.json`), then hands the job to the CPU pool (`JobStore.hand_to_cpu`) and is free for the
next job: a GPU queue never waits for a UMAP. `JobRunner.finish` (a CPU pool worker, `cpu_pool.py`)
reads the embedding back, computes the UMAP with the run's seed and writes `umap.npy` and `record.json`
(last, the mark of a complete set), the same files one process used to write.

Both run inside worker processes (the server's default, see `workers.py`) or on threads of the process
that owns the manager (tests with fake runs). Cancellation always goes through the job store: the
manager sets the job's cancel flag, and a watcher thread here turns it into the run's `CancelToken`,
which the model checks between batches. Whatever a job raises fails that job only.

A tokenizer-lab training (`LAB_MODEL`, see `czb_core.service.jobs.lab`) is one stage: its device worker
trains (with the same out-of-memory retries), saves the trained model and `lab_run.json`, and writes
`record.json` itself; it has no UMAP for the CPU pool.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from functools import partial
from pathlib import Path
from typing import Callable, Optional, TypeVar

import numpy as np

from czb_core.errors import Cancelled, CzbError, DeviceOutOfMemory
from czb_core.io.atomic import atomic_path, write_bytes_atomically
from czb_core.models.device import free_cuda_cache
from czb_core.models.pipeline import RunResult, write_extras, write_run_h5ad
from czb_core.models.record import utc_now
from czb_core.progress import CancelToken, ProgressCallback, Throttle
from czb_core.service.database import storage_problem
from czb_core.service.jobs.artifacts import (
    EMBEDDING_H5AD,
    PENDING_RECORD_JSON,
    RECORD_JSON,
    UMAP_NPY,
    is_prediction_record,
    read_embedding,
    record_json,
)
from czb_core.service.jobs.job_log import job_log
from czb_core.service.jobs.kinds import kind_of
from czb_core.service.jobs.store import CANCELLED, DONE, FAILED, RUNNING, Job, JobStore, until_store_answers
from czb_core.service.workspace import Workspace
from czb_core.tasks.column_roles import suggest_columns
from czb_core.types import Organism
from czb_core.viz.umap import compute_umap

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25
CANCEL_POLL_S = 0.2
HEARTBEAT_S = 10.0
T = TypeVar("T")


def error_message(exc: BaseException) -> str:
    """Our errors are written for the user; a failing disk says so; anything else is named by its type
    (the traceback goes to the worker's log, for admins, never to the user)."""
    if isinstance(exc, CzbError):
        return str(exc)
    if (problem := storage_problem(exc)) is not None:
        return f"{problem}; the job's partial files were removed. Ask an administrator to free space, then retry"
    return f"{type(exc).__name__}: {exc}"


def strip_step_detail(step: str) -> str:
    """A step without its bracketed detail: `train epoch [val MCC 0.412, ...]` is the step `train epoch`,
    whose detail changes from one report to the next without starting the step over."""
    return step.partition(" [")[0]


class StoreProgress:
    """A run's progress callback: writes to the store as a `Throttle` allows, so a fast batch loop does not
    hammer SQLite, with the time its step began (a step begins again when its count goes back, as after an
    out-of-memory retry), from which a page derives the step's rate and ETA. It also adds up the time spent
    in each named step (from one step change to the next), for the run record's `step_seconds`; a step's
    bracketed detail (`strip_step_detail`) is stored with it but names no step of its own."""

    def __init__(self, store: JobStore, job_id: str, interval: float = PROGRESS_INTERVAL_S):
        self.store, self.job_id = store, job_id
        self.throttle = Throttle(interval)
        self._step: Optional[str] = None
        self._step_started = 0.0
        self._step_started_at: Optional[str] = None
        self._done = 0.0
        self.step_seconds: dict[str, float] = {}

    def __call__(self, step: str, done: float, total: Optional[float]) -> None:
        name = strip_step_detail(step)
        if name != self._step:
            now = time.monotonic()
            self._close_step(now)
            self._step, self._step_started = name, now
            self._step_started_at = utc_now()
        elif done < self._done:
            self._step_started_at = utc_now()
        self._done = done
        if self.throttle.allow(step, done, total):
            self.store.update_progress(self.job_id, step, done, total, self._step_started_at)

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
    """Runs claimed jobs with `run_fn` (`czb_core.models.pipeline.embed_file`, or a test's stand-in; the
    CPU stage needs none); `on_handoff` is called when an embedded job waits for the CPU pool (to wake pool threads
    at once)."""

    def __init__(self, workspace: Workspace, store: JobStore, run_fn: Optional[Callable] = None,
                 on_handoff: Callable[[], None] = lambda: None):
        self.workspace, self.store, self.run_fn, self.on_handoff = workspace, store, run_fn, on_handoff

    def run(self, job: Job) -> None:
        """The device stage: embed and save the embedding, then hand the job to the CPU pool. A tokenizer-lab
        training leaves nothing for the pool (no UMAP, no metrics): its device stage completes it."""
        if not kind_of(job.model).model_run:
            if self._guarded(job, partial(self._train_lab, job)):
                self._complete(job)
            return

        def embed(token: CancelToken, progress: StoreProgress, artifact_dir: Path) -> None:
            result = self._embed(job, token, progress)
            self._save_embedding(job, result, artifact_dir, token, progress)

        if self._guarded(job, embed):
            until_store_answers(lambda: self.store.hand_to_cpu(job.id))
            self.on_handoff()

    def run_next(self, device: str, worker_pid: int) -> bool:
        """Claim and run the device's oldest queued job; False when there was none."""
        job = self.store.claim_next(device, worker_pid)
        if job is None:
            return False
        self.run(job)
        return True

    def finish(self, job: Job) -> None:
        """The CPU stage: UMAP and the complete set of artifacts; the job is then done."""
        if self._guarded(job, self._save_umap, cancelled=job.cancel_requested):
            self._complete(job)

    def _complete(self, job: Job) -> None:
        until_store_answers(lambda: self.store.set_status(job.id, DONE, message="done", only_from=(RUNNING,),
                                                          artifact_dir=self.artifact_dir(job)))

    def artifact_dir(self, job: Job) -> Path:
        return self.workspace.root / "jobs" / job.id

    def _guarded(self, job: Job, stage: Callable, cancelled: bool = False) -> bool:
        """Run one stage with the job's cancel flag watched (and its heartbeat written) and its log lines in
        the job's own log; a cancel or an error ends the job. Returns whether the stage completed.

        A job ends by a compare-and-set from `running`: when another process has ended it meanwhile (a
        cancel that stopped the worker, the supervisor), its status and files are left as they are. Only
        then is what the stage left half-written removed: a finished job's files are never touched. A store
        that cannot be written (disk full) is waited for, then the job fails with that cause."""
        token = CancelToken()
        if cancelled:
            token.cancel()
        watching = threading.Event()
        watcher = threading.Thread(target=self._watch_cancel, args=(job.id, token, watching), daemon=True)
        watcher.start()
        artifact_dir = self.artifact_dir(job)
        try:
            with job_log(self.workspace.root, job.id):
                token.check()
                stage(token, StoreProgress(self.store, job.id), artifact_dir)
        except Cancelled:
            self._end(job, artifact_dir, CANCELLED, message="cancelled")
        except (Exception, SystemExit) as exc:  # SystemExit: argparse in model code must not end the worker
            log.exception("job %s (%s/%s on %s) failed", job.id, job.model, job.variant, job.device)
            self._end(job, artifact_dir, FAILED, message="failed", error=error_message(exc))
        else:
            return True
        finally:
            watching.set()
        return False

    def _end(self, job: Job, artifact_dir: Path, status: str, **fields) -> None:
        """Move a running job to `status`; only the process that moved it removes its partial files."""
        if until_store_answers(lambda: self.store.set_status(job.id, status, only_from=(RUNNING,), **fields)):
            shutil.rmtree(artifact_dir, ignore_errors=True)

    def _watch_cancel(self, job_id: str, token: CancelToken, done: threading.Event) -> None:
        """Turn the job's cancel flag in the store into its token (the run checks it between batches), and
        write the job's heartbeat: a worker alive but unable to write for long is failed by the supervisor."""
        last_beat = 0.0
        while not done.wait(CANCEL_POLL_S):
            try:
                if time.monotonic() - last_beat >= HEARTBEAT_S:
                    self.store.beat(job_id)
                    last_beat = time.monotonic()
                job = self.store.get(job_id)
            except Exception:  # a busy database: look again next time
                continue
            if job is not None and job.cancel_requested:
                token.cancel()
                return

    def _embed(self, job: Job, token: CancelToken, progress: ProgressCallback) -> RunResult:
        """`run_fn`, with the out-of-memory retries of `_halving_batch_on_oom`."""
        spec = job.spec
        path = self.workspace.dataset_path(job.dataset_id, job.owner)
        organism = Organism.parse(spec.organism) if spec.organism else None
        token.check()
        return self._halving_batch_on_oom(job, lambda params: self.run_fn(
            path, spec.model, spec.variant, organism=organism, params=params, weights=spec.weights,
            device=job.device, progress=progress, cancel=token, input_sha256=spec.dataset_sha256,
            **({"stream": True} if spec.stream else {}),
        ))

    def _train_lab(self, job: Job, token: CancelToken, progress: StoreProgress, artifact_dir: Path) -> None:
        """One tokenizer-lab training: the data prepared once, trained with the out-of-memory retries of an
        embedding, its files saved, then `record.json` last."""
        from czb_core.service.jobs.lab import prepare_lab_job, save_lab_run, train_lab_job  # torch: lab jobs only

        spec = job.spec
        path = self.workspace.dataset_path(job.dataset_id, job.owner)
        token.check()
        prepared = prepare_lab_job(path, spec.variant, spec.params, spec.organism, progress, token)
        trained = self._halving_batch_on_oom(
            job, lambda params: train_lab_job(prepared, params, job.device, progress, token))
        token.check()
        record = save_lab_run(trained, artifact_dir, spec)
        record["job"] = {**self._job_facts(job), "notes": self.store.get(job.id).notes,
                         "step_seconds": progress.finish()}
        write_bytes_atomically(artifact_dir / RECORD_JSON, record_json(record))

    @staticmethod
    def _job_facts(job: Job) -> dict:
        """The job a run record belongs to."""
        return {"id": job.id, "owner": job.owner, "spec_key": job.spec_key, "device": job.device}

    def _halving_batch_on_oom(self, job: Job, attempt: Callable[[dict], T]) -> T:
        """`attempt(params)` with the job's parameters, again at half the batch size the run used after each
        CUDA out-of-memory error, down to 1; each retry is noted on the job."""
        params = dict(job.spec.params)
        while True:
            try:
                return attempt(params)
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

    def _save_embedding(
        self, job: Job, result: RunResult, artifact_dir: Path, token: CancelToken, progress: StoreProgress,
    ) -> None:
        """`embedding.h5ad` (a prediction's too), its side outputs (`embedding.extras.npz`, e.g. contextual
        gene embeddings) and the record so far (with the device stage's step times) for the CPU stage."""
        token.check()
        result.record["job"] = self._job_facts(job)
        artifact_dir.mkdir(parents=True, exist_ok=True)
        write_run_h5ad(result, artifact_dir / EMBEDDING_H5AD)
        write_extras(result, artifact_dir / EMBEDDING_H5AD)
        result.record["job"]["step_seconds"] = progress.finish()
        write_bytes_atomically(artifact_dir / PENDING_RECORD_JSON, record_json(result.record))

    def _save_umap(self, token: CancelToken, progress: StoreProgress, artifact_dir: Path) -> None:
        """UMAP of the saved embedding with the run's seed (a prediction has no cells to lay out); `record.json`
        last, as the mark of a complete set."""
        record = json.loads((artifact_dir / PENDING_RECORD_JSON).read_text())
        if not is_prediction_record(record):
            emb_nd, obs, _ = read_embedding(artifact_dir)
            label = suggest_columns(obs).label  # an atlas's layout is fitted on a sample that keeps its cell types
            record["umap"] = {"stratified_by": label}
            progress("umap", 0, 1)
            umap_n2 = compute_umap(emb_nd, seed=int(record.get("seed") or 0),
                                   labels_n=None if label is None else obs[label])
            progress("umap", 1, 1)
            token.check()
            with atomic_path(artifact_dir / UMAP_NPY) as tmp, open(tmp, "wb") as fh:
                np.save(fh, umap_n2)
        job = record["job"]
        step_seconds = {**job.pop("step_seconds"), **progress.finish()}
        job["notes"] = self.store.get(job["id"]).notes
        job["step_seconds"] = step_seconds
        write_bytes_atomically(artifact_dir / RECORD_JSON, record_json(record))
        (artifact_dir / PENDING_RECORD_JSON).unlink()
