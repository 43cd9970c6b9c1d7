"""The process-wide job manager: queues runs per device and executes them on worker threads.

A Streamlit page script is rerun (and interrupted) on every click, so a run must never live in one: a
page submits to the manager (created once per server process) and polls the store. One worker thread
per device takes that device's queued jobs oldest first, so a GPU runs one job at a time. Workers run the
model, then the UMAP, and save the artifacts (scoring follows on the `Scorer`); whatever a job raises
fails that job only. A CUDA out-of-memory error is retried at half the batch size.

One manager per workspace: a new one marks the jobs left running by its predecessor `interrupted`.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from czb_core.config import get_settings
from czb_core.errors import Cancelled, ConfigError, CzbError, DeviceOutOfMemory
from czb_core.service.jobs.artifacts import EMBEDDING_H5AD, RECORD_JSON, UMAP_NPY, is_complete, record_json
from czb_core.service.jobs.spec import JobSpec
from czb_core.service.jobs.store import CANCELLED, DONE, FAILED, QUEUED, RETRYABLE, Job, JobStore, Score
from czb_core.models.device import free_cuda_cache, resolve_device
from czb_core.service.jobs.scoring import Scorer
from czb_core.tasks.options import MetricOptions
from czb_core.progress import CancelToken, ProgressCallback, Throttle
from czb_core.models.registry import ModelConfig, get_model
from czb_core.models.pipeline import RunResult, embed_file, write_run_h5ad
from czb_core.types import ModelType, Organism
from czb_core.viz.umap import compute_umap
from czb_core.service.fixes import FixRunner
from czb_core.service.workspace import Workspace

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25
IDLE_POLL_S = 1.0  # a worker also looks for work this often, in case a wake-up was missed



def error_message(exc: BaseException) -> str:
    """Our errors are written for the user; anything else is named by its type."""
    return str(exc) if isinstance(exc, CzbError) else f"{type(exc).__name__}: {exc}"


def _organism_name(organism: Optional[str]) -> Optional[str]:
    """Canonical spelling, so `Human` and `homo_sapiens` share a cache key."""
    if not organism:
        return None
    try:
        return Organism.parse(organism).name.lower()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


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


class JobManager:
    def __init__(self, workspace: Optional[Workspace] = None, start_workers: bool = True, run_fn=embed_file,
                 score: bool = True):
        self.workspace = workspace or Workspace()
        self.store = JobStore(self.workspace.db_path)
        self.run_fn = run_fn
        self.scorer = Scorer(self.workspace, self.store, start=start_workers and score)
        self.fixes = FixRunner(self.workspace)  # dataset fixes, off the page threads
        self.devices = ("cpu", "cuda") if resolve_device(None) == "cuda" else ("cpu",)
        self._tokens: dict[str, CancelToken] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = {device: threading.Event() for device in self.devices}
        self._threads: list[threading.Thread] = []
        if start_workers:
            self.store.mark_interrupted_on_startup()  # before any worker can claim a job
            for device in self.devices:
                thread = threading.Thread(target=self._work, args=(device,), name=f"czb-worker-{device}", daemon=True)
                thread.start()
                self._threads.append(thread)

    # -- what pages call -----------------------------------------------------------------------------

    def submit(
        self, dataset_sha256: str, model: str, variant: Optional[str] = None, params: Optional[dict] = None,
        organism: Optional[str] = None, weights: Optional[str] = None, owner: Optional[str] = None,
        metrics: MetricOptions | dict | None = None, device: Optional[str] = None, score: bool = True,
    ) -> Job:
        """Queue a run; or return the done job with the same spec (a cache hit: status `done` at once),
        or the queued/running one (a second click joins it). With `score`, a scoring run with `metrics`
        (open choices resolved from the data) follows once the embedding is done.

        `device` ("cpu", "cuda" or "auto") picks the queue and is not part of the spec. Parameters are
        checked against the model's schema and only those differing from the defaults name the run.
        Raises KeyError for an unknown dataset and ConfigError for an unknown model, variant, parameter,
        organism or a GPU that is not there, before anything waits in a queue.
        """
        config = get_model(model)
        variant_config = config.variant(variant)
        schema = config.load_implementation().param_schema(variant_config)
        spec = JobSpec(dataset_sha256, model, variant_config.name, schema.changed(schema.resolve(params)),
                       _organism_name(organism), weights)
        options = metrics if isinstance(metrics, MetricOptions) else MetricOptions.from_dict(metrics or {})
        owner = owner or get_settings().user
        job = self._submit(spec, owner, self._device_for(config, device))
        if score:
            self.scorer.score(job, options, owner)
        return job

    def rescore(self, job_id: str, metrics: MetricOptions | dict, owner: Optional[str] = None) -> Score:
        """Score a job's embedding with other metric options, without embedding again."""
        job = self.store.get(job_id)
        if job is None:
            raise KeyError(f"no job {job_id}")
        options = metrics if isinstance(metrics, MetricOptions) else MetricOptions.from_dict(metrics)
        return self.scorer.score(job, options, owner or job.owner)

    def scores(self, job_id: str) -> list[Score]:
        """The job's scoring runs, newest first."""
        return self.store.scores_of(job_id)

    def cancel(self, job_id: str) -> Optional[Job]:
        """A queued job is cancelled at once; a running one stops at its next check between batches."""
        if not self.store.set_status(job_id, CANCELLED, message="cancelled before it started", only_from=(QUEUED,)):
            if self.store.request_cancel(job_id):
                with self._lock:
                    token = self._tokens.get(job_id)
                if token is not None:
                    token.cancel()
        return self.store.get(job_id)

    def retry(self, job_id: str) -> Job:
        """The same spec again, as a new job (the old one keeps its error for the record)."""
        job = self.store.get(job_id)
        if job is None:
            raise KeyError(f"no job {job_id}")
        if job.status not in RETRYABLE:
            raise ConfigError(f"job {job_id} is {job.status}; only failed, cancelled or interrupted jobs can be retried")
        return self._submit(job.spec, job.owner, job.device if job.device in self.devices else "cpu")

    def get(self, job_id: str) -> Optional[Job]:
        return self.store.get(job_id)

    def list(
        self, dataset_sha256: Optional[str] = None, owner: Optional[str] = None,
        statuses: Optional[Iterable[str]] = None,
    ) -> list[Job]:
        return self.store.list(dataset_sha256, owner, statuses)

    def queue_position(self, job_id: str) -> Optional[int]:
        return self.store.queue_position(job_id)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop taking jobs and wait for the workers; a running job finishes (or is cancelled) first."""
        self._stop.set()
        for wake in self._wake.values():
            wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.scorer.shutdown(max(0.0, deadline - time.monotonic()))

    # -- the workers ---------------------------------------------------------------------------------

    def _device_for(self, config: ModelConfig, request: Optional[str]) -> str:
        """Baselines run on the CPU; others where asked, else on the GPU when there is one."""
        if config.model_type == ModelType.BASELINE:
            return "cpu"
        return "cuda" if resolve_device(request).startswith("cuda") else "cpu"

    def _submit(self, spec: JobSpec, owner: str, device: str) -> Job:
        self.workspace.get(spec.dataset_sha256)  # KeyError now, not a failed job later
        key = spec.key()
        cached = self.store.find_done(key)
        if cached is not None and is_complete(cached.artifact_dir):
            return cached
        active = self.store.find_active(key)
        if active is not None:
            return active
        job = self.store.create(spec, owner, device)
        self._wake[device].set()
        return job

    def _work(self, device: str) -> None:
        while not self._stop.is_set():
            try:
                job = self.store.claim_next(device)
                if job is not None:
                    self._run(job)
                    continue
            except Exception:  # the store itself failed (disk full, locked too long): keep the worker alive
                log.exception("%s worker: job store error", device)
            self._wake[device].wait(IDLE_POLL_S)
            self._wake[device].clear()

    def _run(self, job: Job) -> None:
        token = CancelToken()
        with self._lock:
            self._tokens[job.id] = token
        progress = StoreProgress(self.store, job.id)
        artifact_dir = self.workspace.root / "jobs" / job.id
        try:
            if self.store.get(job.id).cancel_requested:  # cancelled between the claim and the lines above
                token.cancel()
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
            self.scorer.wake()  # its queued scoring runs can start, or are cancelled with the job
            with self._lock:
                self._tokens.pop(job.id, None)

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
