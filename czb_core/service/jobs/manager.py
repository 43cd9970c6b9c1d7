"""The process-wide job manager: queues runs per device; workers execute them.

A Streamlit page script is rerun (and interrupted) on every click, so a run must never live in one: a
page submits to the manager (created once per server process) and polls the store. By default each device
gets a supervised worker process (`workers.py`): a crash, an out-of-memory kill or a stuck native call ends
that process and fails its job, never the server. With `processes=False` the same loop runs on threads of
this process (tests with stand-in run functions). A device runs one job at a time, oldest first; scoring
follows on the `Scorer`. A CUDA out-of-memory error is retried at half the batch size (`execution.py`).

One manager per workspace: a new one marks the jobs left running by its predecessor `interrupted`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Iterable, Optional

from czb_core.config import get_settings
from czb_core.errors import ConfigError
from czb_core.models.device import resolve_device
from czb_core.models.pipeline import embed_file
from czb_core.models.registry import ModelConfig, get_model
from czb_core.service.access import visible
from czb_core.service.fixes import FixRunner
from czb_core.service.jobs.artifacts import is_complete
from czb_core.service.jobs.execution import JobRunner
from czb_core.service.jobs.scoring import Scorer
from czb_core.service.jobs.spec import JobSpec
from czb_core.service.jobs.store import CANCELLED, QUEUED, RETRYABLE, Job, JobStore, Score
from czb_core.service.jobs.workers import Supervisor, work_loop
from czb_core.service.workspace import Workspace
from czb_core.tasks.options import MetricOptions
from czb_core.types import ModelType, Organism

log = logging.getLogger(__name__)
PREDICTION_MODELS = (ModelType.SCGENEPT,)  # their outputs are not embeddings: no UMAP, no scoring as embeddings




def _organism_name(organism: Optional[str]) -> Optional[str]:
    """Canonical spelling, so `Human` and `homo_sapiens` share a cache key."""
    if not organism:
        return None
    try:
        return Organism.parse(organism).name.lower()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class JobManager:
    def __init__(self, workspace: Optional[Workspace] = None, start_workers: bool = True, run_fn=embed_file,
                 score: bool = True, processes: bool = True):
        self.workspace = workspace or Workspace()
        self.store = JobStore(self.workspace.db_path)
        self.scorer = Scorer(self.workspace, self.store, start=start_workers and score)
        self.fixes = FixRunner(self.workspace)  # dataset fixes, off the page threads
        self.devices = ("cpu", "cuda") if resolve_device(None) == "cuda" else ("cpu",)
        self._stop = threading.Event()
        self._wake = {device: threading.Event() for device in self.devices}
        self._threads: list[threading.Thread] = []
        self.supervisor: Optional[Supervisor] = None
        if not start_workers:
            return
        self.store.mark_interrupted_on_startup()  # before any worker can claim a job
        if processes:
            self.supervisor = Supervisor(self.workspace, self.store, self.devices, run_fn,
                                         get_settings().worker_memory_limit_mb)
            return
        runner = JobRunner(self.workspace, self.store, run_fn)
        for device in self.devices:
            wake = self._wake[device]

            def wait(seconds: float, wake=wake) -> None:
                wake.wait(seconds)
                wake.clear()

            thread = threading.Thread(target=work_loop, args=(runner, device, self._stop.is_set, wait),
                                      name=f"czb-worker-{device}", daemon=True)
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
        if config.model_type in PREDICTION_MODELS:
            raise ConfigError(f"{config.display_name} predicts expression rather than embedding cells; run it with "
                              "`czb perturb-predict` (the app's perturbation view is not built yet)")
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

    def rescore(self, job_id: str, metrics: MetricOptions | dict, scope: Optional[str] = None) -> Score:
        """Score a job's embedding with other metric options, without embedding again."""
        job = self._visible(job_id, scope)
        options = metrics if isinstance(metrics, MetricOptions) else MetricOptions.from_dict(metrics)
        return self.scorer.score(job, options, job.owner)

    def scores(self, job_id: str, scope: Optional[str] = None) -> list[Score]:
        """The job's scoring runs, newest first."""
        return self.store.scores_of(self._visible(job_id, scope).id)

    def cancel(self, job_id: str, scope: Optional[str] = None) -> Optional[Job]:
        """A queued job is cancelled at once; a running one stops at its next check between batches (or,
        in a worker process that does not get there within seconds, with its process)."""
        self._visible(job_id, scope)
        if not self.store.set_status(job_id, CANCELLED, message="cancelled before it started", only_from=(QUEUED,)):
            self.store.request_cancel(job_id)
        return self.store.get(job_id)

    def retry(self, job_id: str, scope: Optional[str] = None) -> Job:
        """The same spec again, as a new job (the old one keeps its error for the record)."""
        job = self._visible(job_id, scope)
        if job.status not in RETRYABLE:
            raise ConfigError(f"job {job_id} is {job.status}; only failed, cancelled or interrupted jobs can be retried")
        return self._submit(job.spec, job.owner, job.device if job.device in self.devices else "cpu")

    def get(self, job_id: str, scope: Optional[str] = None) -> Optional[Job]:
        """The job, or None when there is none in `scope` (another owner's job is not found either)."""
        job = self.store.get(job_id)
        return job if job is not None and visible(job.owner, scope) else None

    def _visible(self, job_id: str, scope: Optional[str]) -> Job:
        job = self.get(job_id, scope)
        if job is None:
            raise KeyError(f"job {job_id} not found")
        return job

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
        if self.supervisor is not None:
            self.supervisor.shutdown(max(0.0, deadline - time.monotonic()))
        self.scorer.shutdown(max(0.0, deadline - time.monotonic()))

    # -- the workers ---------------------------------------------------------------------------------

    def _device_for(self, config: ModelConfig, request: Optional[str]) -> str:
        """Baselines run on the CPU; others where asked, else on the GPU when there is one."""
        if config.model_type == ModelType.BASELINE:
            return "cpu"
        return "cuda" if resolve_device(request).startswith("cuda") else "cpu"

    def _submit(self, spec: JobSpec, owner: str, device: str) -> Job:
        self.workspace.get(spec.dataset_sha256, owner)  # KeyError ("not found") now, not a failed job later
        key = spec.key()
        cached = self.store.find_done(key, owner)
        if cached is not None and is_complete(cached.artifact_dir):
            return cached
        active = self.store.find_active(key, owner)
        if active is not None:
            return active
        job = self.store.create(spec, owner, device)
        self._wake[device].set()
        return job
