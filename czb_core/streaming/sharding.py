"""Sharded runs on a Ray cluster: one job as shards of row ranges, embedded by one actor per GPU (or CPU).

`CZB_RAY_ADDRESS` (or `czb run --ray auto|ADDRESS`) sends a run here. The driver validates the dataset
and fetches the weights once, as an in-process run does, then starts one `ShardWorker`
(`czb_core.streaming.ray_actors`) per GPU of the cluster (per CPU without GPUs), each loading the model
once. Shards are handed out one at a time to whichever worker is free, so a slow node takes fewer of
them. Each worker reads its shard's rows from the input file and writes its embedding into its region
of one zarr store in the workspace; the driver reads the store back once every shard is in. Both paths
must be on a filesystem every node sees (and the weights cache too, or each node downloads its copy).

A shard whose worker dies (a killed process, a lost node) or fails unexpectedly is retried on a fresh
worker, up to `max_retries` more times; an error meant for the user (bad data, bad weights) fails the
run at once, since retrying cannot fix it. Cancelling kills the workers, mid-batch if need be.

The PCA baseline's PCA is fitted on all cells, so its shards cannot run apart: the driver fits the
incremental PCA over row blocks (as a streamed run does) and only the projection is sharded, the
"sharded PCA projection". Ray is imported only here and only when a run uses it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
import uuid
from collections import Counter, deque
from pathlib import Path
from typing import Any, Optional

import numpy as np

from czb_core.config import get_settings
from czb_core.errors import Cancelled, ConfigError, CzbError
from czb_core.models.runner import RunOutput
from czb_core.progress import CancelToken, ProgressCallback, no_progress
from czb_core.schema.data_manager import DataManager
from czb_core.streaming.chunks import add_new_problems, merge_facts
from czb_core.streaming.ray_actors import (
    KEPT,
    MODEL,
    PCA_PROJECTION,
    PCAProjection,
    Shard,
    ShardJob,
    ShardResult,
    ShardWorker,
    read_store,
)
from czb_core.streaming.row_blocks import DEFAULT_CHUNK_ROWS, RowBlocks, open_row_blocks

RAY_ADDRESS_ENV = "CZB_RAY_ADDRESS"
SHARDS_PER_WORKER = 4  # shards per worker by default: a slow or retried shard then delays the run little
MAX_SHARD_ROWS = 50_000  # a shard's counts and model inputs must fit one worker's memory
DEFAULT_MAX_RETRIES = 2
POLL_S = 0.2  # how often the driver looks at the cancel token while shards run
SHARDS_STEP = "shards"
SHARDED = "sharded on Ray"  # the run record's `reading` of a sharded run
WORKER_NAME = "czb-shard-worker"  # actors are named f"{WORKER_NAME}-{run id}-{n}", to be found in `ray list actors`


class ShardFailed(RuntimeError):
    """A shard kept failing after its retries (the last failure is chained)."""


def configured_ray_address() -> Optional[str]:
    """The Ray cluster runs go to (`CZB_RAY_ADDRESS`: `auto`, `HOST:PORT` or `ray://HOST:PORT`), or None."""
    return get_settings().ray_address


def plan_shards(n_cells: int, n_workers: int, shard_rows: Optional[int] = None,
                block_rows: int = DEFAULT_CHUNK_ROWS, align: int = 1) -> list[Shard]:
    """Consecutive row ranges covering every cell. By default about `SHARDS_PER_WORKER` per worker, at most
    `MAX_SHARD_ROWS` rows, rounded up to whole row blocks once above one block (so a sharded PCA projects
    the same blocks as a streamed one), and to a whole multiple of `align` (the runner's `row_alignment`)."""
    if shard_rows is not None and shard_rows < 1:
        raise ConfigError(f"shard rows must be at least 1, not {shard_rows}")
    if shard_rows is None:
        shard_rows = min(MAX_SHARD_ROWS, max(1, -(-n_cells // (max(1, n_workers) * SHARDS_PER_WORKER))))
        if shard_rows > block_rows:
            shard_rows = -(-shard_rows // block_rows) * block_rows
    shard_rows = -(-shard_rows // align) * align  # a seeded runner's groups of cells stay whole
    return [Shard(index, lo, min(lo + shard_rows, n_cells))
            for index, lo in enumerate(range(0, n_cells, shard_rows))]


def embed_sharded(implementation, manager: DataManager, data_path: str | Path, *, address: str,
                  device: Optional[str] = None, progress: ProgressCallback = no_progress,
                  cancel: Optional[CancelToken] = None, shard_rows: Optional[int] = None,
                  max_retries: int = DEFAULT_MAX_RETRIES) -> tuple[RunOutput, dict]:
    """(the merged output, the sharding record) of `implementation` on `data_path` run as shards on the Ray
    cluster at `address` (a process already connected with `ray.init` uses its cluster). Sets
    `manager.cells_kept_n` and `implementation.report` as `execute` does."""
    cancel = cancel or CancelToken()
    kind = shard_kind(implementation)
    validate_on_driver(implementation, manager, progress, cancel)
    store = get_settings().workspace / "shards" / f"{uuid.uuid4().hex}.zarr"
    t0 = time.perf_counter()
    with ray_connection(address) as ray, open_row_blocks(data_path, manager.matrix_location, progress) as blocks:
        projection = fit_pca_projection(implementation, blocks, progress, cancel) if kind == PCA_PROJECTION else None
        n_workers, worker_device, resources = plan_workers(ray, "cpu" if kind == PCA_PROJECTION else device)
        shards = plan_shards(blocks.n_cells, n_workers, shard_rows, blocks.chunk_rows, implementation.row_alignment)
        job = ShardJob(kind=kind, data_path=str(blocks.path), location=blocks.location, store_path=str(store),
                       n_cells=blocks.n_cells, shard_rows=shards[0].n_rows, device=worker_device,
                       config=implementation.config, variant=implementation.variant,
                       weights_uri=implementation.weights_uri, params=implementation.parameters(),
                       organism=manager.organism_given,
                       header=dataclasses.replace(manager.header, obs=manager.header.obs.iloc[:0]),
                       block_rows=blocks.chunk_rows, environment=czb_environment())
        try:
            create_store(job)
            pool = ShardPool(ray, job, projection, min(n_workers, len(shards)), resources, max_retries)
            obs = None if kind == PCA_PROJECTION else manager.obs
            t_shards = time.perf_counter()
            results = pool.run(shards, obs, progress, cancel)
            shards_wall_s = time.perf_counter() - t_shards
            emb_nd, kept_n, per_cell = read_store(store)
        finally:
            shutil.rmtree(store, ignore_errors=True)
        address_used = ray.get_runtime_context().gcs_address
    manager.cells_kept_n = kept_n
    output = merged_output(implementation, results, emb_nd, per_cell, projection, len(shards))
    implementation.device = recorded_device(worker_device)
    record = {"address": address_used, "kind": kind, "workers": pool.n_workers, "device": worker_device,
              "shard_rows": job.shard_rows, "max_retries": max_retries, "wall_s": round(time.perf_counter() - t0, 3),
              "shards_wall_s": round(shards_wall_s, 3),
              "nodes": pool.nodes(), "shards": pool.shard_records(results), "failures": pool.failures}
    return output, record


def shard_kind(implementation) -> str:
    """MODEL for a runner whose cells embed apart; PCA_PROJECTION for the PCA baseline; a runner that uses
    all cells at once some other way (a fitted scVI, PPCA, a prediction) is refused."""
    if implementation.embeds_cells_apart:
        return MODEL
    if implementation.shards_as_projection:
        return PCA_PROJECTION
    raise ConfigError(f"{implementation.display_name} / {implementation.variant} is fitted on all cells at once, "
                      "so its shards cannot run apart; run it without Ray (czb run --stream streams it)")


def validate_on_driver(implementation, manager: DataManager, progress: ProgressCallback, cancel: CancelToken) -> None:
    """The checks of `execute` that need no loaded data, and the weights in the cache, once for the whole run;
    the checks that read counts run per shard on the workers."""
    dirs = implementation.validate_and_fetch(manager, progress, cancel)
    implementation.check_weights(manager, implementation.report, dirs)
    implementation.report.raise_for_errors()
    cancel.check()


@contextlib.contextmanager
def ray_connection(address: str):
    """The `ray` module, connected to `address` for the run and disconnected after it; a process already
    connected (`ray.init` by its owner, e.g. a test's local cluster) keeps its connection."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"no Ray cluster could be reached at {address!r} ({exc}); start one (`ray start --head`) "
                          f"or unset {RAY_ADDRESS_ENV} / drop --ray to run in this process") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def plan_workers(ray, device: Optional[str]) -> tuple[int, str, dict]:
    """(number of workers, their device, the resources each asks for): one per GPU of the cluster unless the
    CPU was asked for, else one per CPU."""
    resources = ray.cluster_resources()
    n_gpus, n_cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    wants_gpu = bool(device) and device.startswith("cuda")
    if wants_gpu and not n_gpus:
        raise ConfigError("device cuda was requested but the Ray cluster has no GPU; choose cpu")
    if n_gpus and device != "cpu":
        return n_gpus, "cuda", {"num_gpus": 1, "num_cpus": 1}
    if not n_cpus:
        raise ConfigError("the Ray cluster offers no CPU to run workers on")
    return n_cpus, "cpu", {"num_cpus": 1}


def fit_pca_projection(implementation, blocks: RowBlocks, progress: ProgressCallback,
                       cancel: CancelToken) -> PCAProjection:
    """The first passes of the streamed PCA baseline on the driver: scale factors, HVG columns and the
    incremental PCA fitted over every row block; the workers then project their rows with it."""
    from czb_core.streaming.incremental_pca import IncrementalPCA
    from czb_core.streaming.pca_baseline import log_hvg_blocks

    args = implementation.args
    data = log_hvg_blocks(blocks, args.n_top_genes, progress, cancel)
    pca = IncrementalPCA(min(args.n_comps, blocks.n_cells - 1, len(data.columns) - 1), seed=args.seed)
    n_blocks = -(-blocks.n_cells // blocks.chunk_rows)
    for k, (_, _, x_nh) in enumerate(data):
        pca.update(x_nh)
        progress("incremental pca", k + 1, n_blocks)
    return PCAProjection(data.scale_n, data.columns, pca)


def create_store(job: ShardJob) -> None:
    """The shared zarr store with its `kept` array; the workers add the arrays whose width only they learn."""
    import zarr

    Path(job.store_path).parent.mkdir(parents=True, exist_ok=True)
    root = zarr.open_group(job.store_path, mode="w")
    root.create_array(KEPT, shape=(job.n_cells,), chunks=(job.shard_rows,), dtype=bool, fill_value=False)


def czb_environment() -> dict[str, str]:
    """The driver's `CZB_*` settings, given to every worker so it uses the same weights cache, S3 endpoint
    and workspace (set by the worker itself rather than as a Ray runtime environment, which would cost a
    fresh process instead of one of the idle workers Ray keeps started)."""
    return {name: value for name, value in os.environ.items() if name.startswith("CZB_")}


class ShardPool:
    """The run's workers and its shard queue: a free worker takes the next shard; see the module docstring."""

    def __init__(self, ray, job: ShardJob, projection: Optional[PCAProjection], n_workers: int, resources: dict,
                 max_retries: int):
        self.ray = ray
        self.n_workers = n_workers
        self.max_retries = max_retries
        self.run_id = uuid.uuid4().hex[:8]
        self.actor_class = ray.remote(ShardWorker)
        self.actor_options = resources
        self.job_ref = ray.put(job)
        self.projection_ref = None if projection is None else ray.put(projection)
        self.workers: dict[int, Any] = {}  # slot -> actor handle
        self.node_of: dict[int, dict] = {}  # slot -> where its current actor runs
        self.started: list[dict] = []  # where every actor that started ran, replaced ones included
        self.n_started = 0
        self.attempts: Counter = Counter()  # shard index -> attempts so far
        self.wall_s: dict[int, float] = {}
        self.failures: list[str] = []

    def run(self, shards: list[Shard], obs, progress: ProgressCallback, cancel: CancelToken) -> list[ShardResult]:
        """Every shard's result, in shard order. Raises `Cancelled`, the user-facing error of a worker, or
        `ShardFailed`; the workers are gone when it returns or raises."""
        self.queue, self.obs = deque(shards), obs
        self.results: dict[int, ShardResult] = {}
        self.inflight: dict[Any, tuple[int, Optional[Shard], float]] = {}  # ref -> (slot, shard or None: start)
        progress(SHARDS_STEP, 0, len(shards))
        try:
            for slot in range(self.n_workers):
                self.start_worker(slot)
            while self.inflight:
                if cancel.cancelled:
                    raise Cancelled("run cancelled")
                ready, _ = self.ray.wait(list(self.inflight), num_returns=1, timeout=POLL_S)
                for ref in ready:
                    self.collect(ref)
                    progress(SHARDS_STEP, len(self.results), len(shards))
        finally:
            for handle in self.workers.values():
                self.ray.kill(handle)
        return [self.results[shard.index] for shard in shards]

    def start_worker(self, slot: int) -> None:
        name = f"{WORKER_NAME}-{self.run_id}-{self.n_started}"
        self.n_started += 1
        handle = self.actor_class.options(name=name, **self.actor_options).remote(self.job_ref, self.projection_ref)
        self.workers[slot] = handle
        self.inflight[handle.start.remote()] = (slot, None, time.perf_counter())

    def dispatch(self, slot: int) -> None:
        """The next shard of the queue to the worker of `slot` (which then is busy), if any is left."""
        if not self.queue:
            return
        shard = self.queue.popleft()
        self.attempts[shard.index] += 1
        obs = None if self.obs is None else self.obs.iloc[shard.lo:shard.hi]
        self.inflight[self.workers[slot].run_shard.remote(shard, obs)] = (slot, shard, time.perf_counter())

    def collect(self, ref) -> None:
        """A finished start or shard: keep its result and give the worker the next shard; on a failure,
        retry (on a fresh worker when the worker died) or fail the run."""
        slot, shard, t_sent = self.inflight.pop(ref)
        try:
            value = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:  # the worker raised; it lives on
            if isinstance(exc.cause, CzbError):  # bad data, weights or settings: retrying cannot help
                raise exc.cause from None
            if shard is None:  # it could not start (the remote traceback is in the message)
                raise
            self.note_failure(slot, shard, exc.cause)
            self.dispatch(slot)
            return
        except self.ray.exceptions.RayError as exc:  # the worker, its node or its objects are gone: replace it
            self.note_failure(slot, shard, exc)
            self.ray.kill(self.workers[slot])
            self.start_worker(slot)
            return
        if shard is None:
            self.node_of[slot] = value
            self.started.append(value)
        else:
            self.results[shard.index] = value
            self.wall_s[shard.index] = round(time.perf_counter() - t_sent, 3)
        self.dispatch(slot)

    def note_failure(self, slot: int, shard: Optional[Shard], exc: BaseException) -> None:
        """Record a failure and put its shard back at the front of the queue, unless it has had its retries."""
        node = self.node_of.get(slot, {})
        where = f"{node.get('hostname', '?')}/{node.get('pid', '?')}"
        what = "starting" if shard is None else f"shard {shard.index} (rows {shard.lo:,}-{shard.hi:,})"
        message = f"{what} failed on {where}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        self.failures.append(message)
        if shard is None:
            if self.n_started - self.n_workers >= self.n_workers * (self.max_retries + 1):
                raise ShardFailed(f"workers keep dying while starting; last: {message}") from exc
            return
        if self.attempts[shard.index] > self.max_retries:
            raise ShardFailed(f"{message}; it failed {self.attempts[shard.index]} times, giving up") from exc
        self.queue.appendleft(shard)

    def nodes(self) -> list[dict]:
        """Every worker that started (replaced ones included): hostname, pid, device."""
        return list(self.started)

    def shard_records(self, results: list[ShardResult]) -> list[dict]:
        return [{"index": r.index, "rows": [r.lo, r.hi], "cells_kept": r.n_kept, "hostname": r.node["hostname"],
                 "pid": r.node["pid"], "attempts": self.attempts[r.index], "read_s": r.read_s, "embed_s": r.embed_s,
                 "write_s": r.write_s, "wall_s": self.wall_s[r.index]} for r in results]


def merged_output(implementation, results: list[ShardResult], emb_nd: np.ndarray, per_cell: dict[str, np.ndarray],
                  projection: Optional[PCAProjection], n_shards: int) -> RunOutput:
    """One RunOutput of the whole run: the store's rows, the first shard's batch size, the shards' facts
    merged, every distinct note, and each kind of problem the shards' checks reported added once to the
    driver's report."""
    for result in results:
        add_new_problems(implementation.report, result.problems)
    notes = list(dict.fromkeys(note for result in results for note in result.notes))
    facts = merge_facts([result.facts for result in results])
    if projection is not None:
        facts["reading"] = (f"sharded PCA projection: incremental PCA ({projection.pca.q} factors kept between "
                            f"blocks) fitted on the driver over row blocks, the cells projected in {n_shards} "
                            "shards on Ray")
    implementation.report.facts.update(facts)
    return RunOutput(emb_nd=emb_nd, obs=per_cell, batch_size=results[0].batch_size, notes=notes, facts=facts)


def recorded_device(worker_device: str) -> str:
    """The workers' device for the run record, when this process can describe it (the record asks torch
    for the GPU's name, which a driver without a GPU cannot answer)."""
    from czb_core.models.device import resolve_device

    if worker_device == "cpu" or resolve_device(None) == "cuda":
        return worker_device
    return f"Ray workers on {worker_device}"
