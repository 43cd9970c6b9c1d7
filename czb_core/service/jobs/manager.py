"""The process-wide job manager: queues runs per device; workers execute them.

A Streamlit page script is rerun (and interrupted) on every click, so a run must never live in one: a
page submits to the manager (created once per server process) and polls the store. By default each device
(`cpu` and every visible GPU, `cuda:0`, `cuda:1`, ...) gets a supervised worker process (`workers.py`): a
crash, an out-of-memory kill or a stuck native call ends that process and fails its job, never the
server. UMAPs and scoring runs go to the CPU pool (`cpu_pool.py`), so a GPU queue never waits for them.
With `processes=False` the same loops run on threads of this process (tests with stand-in run functions).
A device runs one job at a time, oldest first; a GPU job goes to the least loaded GPU unless one is
named, and is refused at submit when its estimated memory does not fit that GPU's free memory
(`czb_core.models.memory`). A CUDA out-of-memory error is retried at half the batch size (`execution.py`).

One server per workspace (`writer_lock.py`): a second server process refuses to start. A new one waits for
its predecessor's orphaned workers to end, removes its partial uploads, marks the jobs it left running
`interrupted`, and sweeps expired datasets (`retention.py`) at start and daily. Per-user limits (`quotas.py`) are
checked at submit, before a job is queued.

Tokenizer-lab trainings (`submit_lab`, model `LAB_MODEL`) share the queues, cache, quotas, cancel and retry,
but are no model of the registry: they have no weights, no memory estimate (an out-of-memory error is
retried at half the batch size like any run) and no scoring.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Iterable, Optional

from czb_core.config import get_settings
from czb_core.errors import ConfigError
from czb_core.models.device import choose_device, cuda_devices, gpu_free_bytes
from czb_core.models.memory import estimate_variant_memory, fit_problem, gib
from czb_core.models.pipeline import embed_file
from czb_core.models.registry import get_model
from czb_core.service.access import visible
from czb_core.service.fixes import FixRunner
from czb_core.service.jobs.artifacts import is_complete
from czb_core.service.jobs.cpu_pool import CpuTasks
from czb_core.service.jobs.execution import JobRunner
from czb_core.service.jobs.kinds import kind_of
from czb_core.service.jobs.scoring import Scorer
from czb_core.service.jobs.spec import JobSpec
from czb_core.service.jobs.store import CANCELLED, QUEUED, RETRYABLE, Job, JobStore, Score
from czb_core.service.jobs.workers import Supervisor, pool_names, work_loop
from czb_core.service.quotas import Quotas
from czb_core.service.retention import purge_expired
from czb_core.service.workspace import Workspace
from czb_core.service.writer_lock import acquire_writer, release_writer, wait_for_orphan_workers
from czb_core.tasks.options import MetricOptions
from czb_core.tokenizer_lab import LAB_MODEL
from czb_core.types import Organism

if TYPE_CHECKING:  # torch behind them: imported where lab jobs are made
    from czb_core.tokenizer_lab.lab import LabSplit
    from czb_core.tokenizer_lab.sentences import TokenizerSpec
    from czb_core.tokenizer_lab.train import TrainConfig

log = logging.getLogger(__name__)
RETENTION_SWEEP_S = 24 * 3600


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
        settings = get_settings()
        self.workspace = workspace or Workspace()
        self.store = JobStore(self.workspace.db_path)
        self.devices = ("cpu", *cuda_devices())
        self.pool = pool_names(settings.cpu_workers)
        self._stop = threading.Event()
        self._wake = {name: threading.Event() for name in (*self.devices, *self.pool)}
        self.scorer = Scorer(self.store, wake=self._wake_pool)
        self.quotas = Quotas(self.workspace, self.store)
        self.fixes = FixRunner(self.workspace, self.quotas.check_upload)  # dataset fixes, off the page threads
        self._threads: list[threading.Thread] = []
        self.supervisor: Optional[Supervisor] = None
        self._holds_writer = False
        if not start_workers:
            return
        self.workspace.check_apart_from_data_roots()
        self._holds_writer = True
        if acquire_writer(self.workspace.root):  # a new server: what a predecessor left is cleaned first
            if not wait_for_orphan_workers(self.workspace.root):
                log.warning("workers of a previous server still hold the workspace; starting anyway")
            self.workspace.sweep_incoming()
        self.store.mark_interrupted_on_startup()  # before any worker can claim a job
        self.store.requeue_running_scores()
        self._start_retention_sweeps()
        if processes:
            self.supervisor = Supervisor(self.workspace, self.store, self.devices, run_fn,
                                         settings.worker_memory_limit_mb, settings.cpu_workers, score)
            return
        runner = JobRunner(self.workspace, self.store, run_fn, on_handoff=self._wake_pool)
        tasks = CpuTasks(self.workspace, self.store, score)
        pid = os.getpid()
        for device in self.devices:
            self._start_thread(device, lambda device=device: runner.run_next(device, pid))
        for name in self.pool:
            self._start_thread(name, lambda: tasks.run_next(pid))

    def _start_thread(self, name: str, take_one) -> None:
        wake = self._wake[name]

        def wait(seconds: float) -> None:
            wake.wait(seconds)
            wake.clear()

        thread = threading.Thread(target=work_loop, args=(take_one, name, self._stop.is_set, wait),
                                  name=f"czb-worker-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _start_retention_sweeps(self) -> None:
        """Delete expired datasets now and every day after; a failing sweep is logged, never fatal."""

        def sweep_daily() -> None:
            while True:
                try:
                    purged = purge_expired(self.workspace, self.store)
                    if purged:
                        log.info("retention: deleted %d expired datasets: %s", len(purged), ", ".join(purged))
                except Exception:  # noqa: BLE001 - a sweep must not take the server down
                    log.exception("retention sweep failed")
                if self._stop.wait(RETENTION_SWEEP_S):
                    return

        thread = threading.Thread(target=sweep_daily, name="czb-retention", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _wake_pool(self) -> None:
        for name in self.pool:
            self._wake[name].set()

    # -- what pages call -----------------------------------------------------------------------------

    def submit(
        self, dataset_id: str, model: str, variant: Optional[str] = None, params: Optional[dict] = None,
        organism: Optional[str] = None, owner: Optional[str] = None,
        metrics: MetricOptions | dict | None = None, device: Optional[str] = None, score: bool = True,
        stream: bool = False,
    ) -> Job:
        """Queue a run on `owner`'s dataset record `dataset_id`; or return the done job with the same spec (a cache
        hit: status `done` at once), or the queued/running one (a second click joins it). With `score`, a scoring
        run with `metrics` (open choices resolved from the data) follows once the embedding is done.

        `device` ("cpu", "cuda", "cuda:N" or "auto") picks the queue and is not part of the spec; "cuda" and
        "auto" take the least loaded GPU. Parameters are checked against the model's schema and only those
        differing from the defaults name the run. Raises KeyError for an unknown dataset and ConfigError for
        an unknown model, variant, parameter, organism, a GPU that is not there or a run whose estimated
        memory does not fit the GPU's free memory, and QuotaError (a ConfigError) past a per-user limit, before
        anything waits in a queue. `stream` reads the matrix in row blocks whatever its size (`czb run
        --stream`); a model that cannot is a ConfigError here too. There is no weights option: a server's
        runs use the weights of the variant's config (or an admin's import), never a location a user names.
        """
        owner = owner or get_settings().user
        record = self.workspace.get(dataset_id, owner)  # KeyError ("not found") now, not a failed job later
        config = get_model(model)
        score = score and kind_of(model).scored  # a prediction is read on the Results page
        variant_config = config.variant(variant)
        implementation_class = config.load_implementation()
        schema = implementation_class.param_schema(variant_config)
        spec = JobSpec(record.sha256, model, variant_config.name, schema.changed(schema.resolve(params)),
                       _organism_name(organism), stream=stream)
        if stream:
            implementation_class(config, variant_config.name, **spec.params).check_can_stream()
        options = metrics if isinstance(metrics, MetricOptions) else MetricOptions.from_dict(metrics or {})
        job = self._submit(spec, owner, self._device_for(model, device), record.id)
        if score:
            self.scorer.score(job, options, owner)
        return job

    def submit_lab(self, dataset_id: str, split: LabSplit, tokenizer: TokenizerSpec, seed: int,
                   config: TrainConfig, organism: Optional[str] = None, owner: Optional[str] = None,
                   device: Optional[str] = None) -> Job:
        """Queue one tokenizer-lab training: `tokenizer` trained with `seed` and `config` on the cells of
        `split`. As with `submit`, the done or active job of the same spec is returned instead, quotas are
        checked and `device` picks the queue ("auto": the least loaded GPU, else the CPU). A split with an
        empty part or a value in two parts is a ConfigError, before anything is queued."""
        from czb_core.service.jobs.lab import make_lab_spec  # torch: only where lab jobs are made

        owner = owner or get_settings().user
        record = self.workspace.get(dataset_id, owner)
        spec = make_lab_spec(record.sha256, split, tokenizer, seed, config, _organism_name(organism))
        return self._submit(spec, owner, self._device_for(LAB_MODEL, device), record.id)

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
        self.workspace.get(job.dataset_id, job.owner)  # KeyError when its dataset was deleted meanwhile
        if job.status not in RETRYABLE:
            raise ConfigError(f"job {job_id} is {job.status}; only failed, cancelled or interrupted jobs can be "
                              "retried")
        request = job.device if job.device in self.devices else "auto" if job.device.startswith("cuda") else "cpu"
        return self._submit(job.spec, job.owner, self._device_for(job.spec.model, request), job.dataset_id)

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
        self, dataset_id: Optional[str] = None, owner: Optional[str] = None,
        statuses: Optional[Iterable[str]] = None,
    ) -> list[Job]:
        return self.store.list(dataset_id, owner, statuses)

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
        if self._holds_writer:
            self._holds_writer = False
            release_writer(self.workspace.root)

    # -- the workers ---------------------------------------------------------------------------------

    def _device_for(self, model: str, request: Optional[str]) -> str:
        """Baselines run on the CPU; others (tokenizer-lab trainings too) where asked, else on the least loaded
        GPU when there is one. A device that is not there is refused for a baseline too."""
        gpus = [d for d in self.devices if d != "cpu"]
        device = choose_device(request, self.store.device_loads(gpus) if gpus else {})
        return "cpu" if kind_of(model).cpu_only else device

    def _memory_note(self, spec: JobSpec, device: str) -> Optional[str]:
        """On a GPU: refuse (ConfigError) a run whose estimated memory exceeds the GPU's free memory, with
        the figures and the fix; else the note kept with the job (and its run record), so the estimate can
        be compared with the measured `peak_gpu_mb`. None on the CPU or without an estimate (a tokenizer-lab
        training has none: its model is built from the data)."""
        if not device.startswith("cuda") or not kind_of(spec.model).model_run:
            return None
        config = get_model(spec.model)
        variant = config.variant(spec.variant)
        params = config.load_implementation().param_schema(variant).resolve(spec.params)
        estimated = estimate_variant_memory(variant.weights_size_mb, variant.resources,
                                            config.embedding_dim(variant.name), params.get("batch_size"))
        if estimated is None:
            return None
        estimate, batch_chosen = estimated
        free = gpu_free_bytes(device)
        problem = fit_problem(estimate, free, device, batch_chosen)
        if problem is not None:
            batch = f" at batch size {estimate.batch_size}" if batch_chosen else ""
            raise ConfigError(f"{config.display_name} {variant.name}{batch}: {problem}")
        return (f"GPU memory estimated at ~{gib(estimate.total_bytes, up=True)} GiB (batch size "
                f"{estimate.batch_size}); {gib(free, up=False)} GiB were free on {device} at submit")

    def _submit(self, spec: JobSpec, owner: str, device: str, dataset_id: str) -> Job:
        """Queue `spec` on `owner`'s dataset record `dataset_id` (see `JobStore.submit`: a complete done job
        is reused, an active one joined, the per-user limits checked in the same transaction as the insert)."""
        note = self._memory_note(spec, device)
        job, created = self.store.submit(spec, owner, device, dataset_id,
                                         reusable=lambda done: is_complete(done.artifact_dir),
                                         check=lambda: self.quotas.check_submit(owner))
        if created:
            if note is not None:
                self.store.add_note(job.id, note)
            self._wake[device].set()
        return self.store.get(job.id)
