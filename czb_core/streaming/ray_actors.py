"""The shard worker: what runs on each Ray actor of a sharded run (`czb_core.streaming.sharding`).

A `ShardWorker` is a plain class; the driver makes it a Ray actor (`ray.remote(ShardWorker)`), so this
module never imports Ray and its code runs the same in a test without a cluster. One worker holds one
model, loaded once in `start`, and embeds shard after shard: it reads the shard's rows from the input
file (a path every node sees), binds them to a data manager of just those cells and runs the model's
usual flow (`execute`: checks, prepare, embed) on them (`czb_core.streaming.chunks.embed_rows`, as a
chunked run does), then writes the embedding into its own row
region of the shared zarr store. Regions are whole zarr chunks, so concurrent writers never touch the
same file. The PCA baseline's PCA is fitted on all cells by the driver; its worker only projects rows.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import pandas as pd
import scipy.sparse as sp

from czb_core.io.header import DatasetHeader
from czb_core.models.device import resolve_device
from czb_core.models.registry import ModelConfig
from czb_core.progress import CancelToken
from czb_core.schema.report import Problem
from czb_core.streaming.chunks import embed_rows
from czb_core.streaming.row_blocks import RowBlocks
from czb_core.types import Organism

if TYPE_CHECKING:
    from czb_core.models.base import BaseModelImplementation

EMB, KEPT, OBS = "emb", "kept", "obs"  # arrays of the shared store: embedding rows, cells kept, per-cell outputs
MODEL, PCA_PROJECTION = "model", "sharded PCA projection"


@dataclass(frozen=True)
class Shard:
    """Rows [lo, hi) of the input; `index` orders the shards."""

    index: int
    lo: int
    hi: int

    @property
    def n_rows(self) -> int:
        return self.hi - self.lo


@dataclass(frozen=True)
class ShardJob:
    """What every worker of one run shares: where to read and write, and the model to run (for `MODEL`)."""

    kind: str  # MODEL or PCA_PROJECTION
    data_path: str  # the row-readable input (a CSC input is converted once by the driver)
    location: str  # the matrix inside it
    store_path: str  # the shared zarr store
    n_cells: int
    shard_rows: int  # the zarr chunk height: every shard starts on a chunk boundary
    device: str
    config: Optional[ModelConfig] = None
    variant: Optional[str] = None
    weights_uri: Optional[str] = None
    params: dict = field(default_factory=dict)
    organism: Optional[Organism] = None
    header: Optional[DatasetHeader] = None  # the input's header with its obs left out (sent per shard)
    block_rows: int = 10_000  # rows projected at once by a PCA worker (a dense block of HVG columns)
    environment: dict = field(default_factory=dict)  # the driver's CZB_* settings: same weights cache, S3, workspace


@dataclass(frozen=True)
class PCAProjection:
    """What the driver's fit hands to the workers: per-cell scale factors, HVG columns, the fitted PCA."""

    scale_n: np.ndarray
    columns: np.ndarray
    pca: Any  # czb_core.streaming.incremental_pca.IncrementalPCA

    @property
    def n_dims(self) -> int:
        return self.pca.n_components


@dataclass
class ShardResult:
    """What came of one shard (its embedding is in the store, not here) and where and how long it ran."""

    index: int
    lo: int
    hi: int
    n_kept: int
    n_dims: int
    node: dict
    read_s: float
    embed_s: float
    write_s: float
    batch_size: Optional[int] = None
    facts: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


class ShardWorker:
    """One per GPU (or CPU) of the cluster; see the module docstring."""

    def __init__(self, job: ShardJob, projection: Optional[PCAProjection] = None):
        self.job = job
        self.projection = projection
        self.implementation: Optional[BaseModelImplementation] = None
        self.blocks: Optional[RowBlocks] = None
        self.node: dict = {}

    def start(self) -> dict:
        """Open the input and load the model (once for every shard this worker gets); where it runs."""
        job = self.job
        os.environ.update(job.environment)  # this process serves this worker alone
        self.blocks = RowBlocks(Path(job.data_path), job.location)
        device = resolve_device(job.device)
        if job.kind == MODEL:
            implementation = job.config.load_implementation()(job.config, job.variant, weights_uri=job.weights_uri,
                                                              **job.params)
            implementation.fetch_weights()
            implementation.load_model(device)
            self.implementation = implementation
        self.node = node_description(device)
        return self.node

    def run_shard(self, shard: Shard, obs: Optional[pd.DataFrame] = None) -> ShardResult:
        """Embed (or project) the shard's rows and write them into the shard's region of the store."""
        t0 = time.perf_counter()
        x_ng = self.blocks.read(shard.lo, shard.hi)
        t1 = time.perf_counter()
        output = None
        if self.job.kind == PCA_PROJECTION:
            emb_kd = project_rows(self.projection, x_ng, shard, self.job.block_rows)
            kept_n, per_cell = np.ones(shard.n_rows, dtype=bool), {}
        else:
            output, kept_n = embed_rows(self.implementation, self.job.header, self.job.organism, x_ng, obs, shard.lo,
                                        self.job.device, CancelToken())
            emb_kd, per_cell = output.emb_nd, output.obs  # rows of the kept cells only
        t2 = time.perf_counter()
        write_shard(self.job, shard, np.asarray(emb_kd, dtype=np.float32), kept_n, per_cell)
        t3 = time.perf_counter()
        result = ShardResult(shard.index, shard.lo, shard.hi, int(kept_n.sum()), int(np.shape(emb_kd)[1]), self.node,
                             round(t1 - t0, 3), round(t2 - t1, 3), round(t3 - t2, 3))
        if output is not None:
            result.batch_size = output.batch_size
            result.facts, result.notes = output.facts, output.notes
            result.problems = list(self.implementation.report.problems)
        return result


def node_description(device: str) -> dict:
    """hostname, pid and device of this worker (recorded per shard in the run record)."""
    return {"hostname": socket.gethostname(), "pid": os.getpid(), "device": device}


def project_rows(projection: PCAProjection, x_ng: sp.csr_matrix, shard: Shard, block_rows: int) -> np.ndarray:
    """The fitted PCA of the shard's normalised, log1p HVG columns, `block_rows` dense rows at a time."""
    from czb_core.schema.normalization import scale_log1p

    emb_nd = np.empty((shard.n_rows, projection.n_dims), dtype=np.float32)
    for lo in range(0, shard.n_rows, block_rows):
        hi = min(lo + block_rows, shard.n_rows)
        scale_n = projection.scale_n[shard.lo + lo:shard.lo + hi]
        emb_nd[lo:hi] = projection.pca.transform(scale_log1p(x_ng[lo:hi], scale_n)[:, projection.columns].toarray())
    return emb_nd


def write_shard(job: ShardJob, shard: Shard, emb_kd: np.ndarray, kept_n: np.ndarray,
                per_cell: dict[str, np.ndarray]) -> None:
    """The shard's rows of the store: `kept`, `emb` (NaN rows for cells the runner dropped) and each per-cell
    output under `obs/`. The embedding width is known only once a shard is embedded, so the first writer
    creates the arrays (zarr writes metadata atomically, and every writer writes the same metadata)."""
    import zarr

    root: Any = zarr.open_group(job.store_path, mode="a")  # arrays and groups by name
    rows = np.flatnonzero(kept_n)
    root[KEPT][shard.lo:shard.hi] = kept_n
    emb_nd = np.full((shard.n_rows, emb_kd.shape[1]), np.nan, dtype=np.float32)
    emb_nd[rows] = emb_kd
    require_rows_array(root, EMB, job, emb_nd)[shard.lo:shard.hi] = emb_nd
    for name, values_k in per_cell.items():
        values_k = np.asarray(values_k)
        values_n = np.zeros(shard.n_rows, dtype=values_k.dtype)
        values_n[rows] = values_k
        require_rows_array(root, f"{OBS}/{name}", job, values_n)[shard.lo:shard.hi] = values_n


def require_rows_array(root, name: str, job: ShardJob, like: np.ndarray):
    """The store's array `name` with one row per input cell, shaped and typed like `like`'s rows, chunked
    by shard; created by whichever writer comes first."""
    import zarr

    if name in root:
        return root[name]
    shape = (job.n_cells, *like.shape[1:])
    chunks = (job.shard_rows, *like.shape[1:])
    fill = np.nan if np.issubdtype(like.dtype, np.floating) else 0
    try:
        return root.create_array(name, shape=shape, chunks=chunks, dtype=like.dtype, fill_value=fill)
    except zarr.errors.ContainsArrayError:  # another worker created it meanwhile
        return root[name]


def read_store(store_path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(emb_nd of the kept cells, kept_n, per-cell outputs of the kept cells) from a finished run's store."""
    import zarr

    root: Any = zarr.open_group(str(store_path), mode="r")  # arrays and groups by name
    kept_n = np.asarray(root[KEPT][:], dtype=bool)
    rows = np.flatnonzero(kept_n)
    emb_nd = np.asarray(root[EMB][:])[rows]
    per_cell = {}
    if OBS in root:
        per_cell = {name: np.asarray(array[:])[rows] for name, array in root[OBS].arrays()}
    return emb_nd, kept_n, per_cell
