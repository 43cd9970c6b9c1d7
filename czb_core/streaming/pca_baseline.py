"""The PCA baseline (and its probabilistic variants) of a dataset too large for memory, in passes over
row blocks.

1. cell totals, for the normalisation target (the median total of non-empty cells, as in memory);
2. the Seurat-flavour HVG moments of the normalised, log1p data (sums, so the selection equals the
   in-memory one exactly);
3. the fit: incremental PCA of the log data on the HVG columns (`IncrementalPCA`), or minibatch
   epochs of probabilistic PCA;
4. the projection of each block, written to an `.npy` on disk block by block.

Peak memory is one block (dense on the HVG columns) plus the per-cell totals, never the matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from czb_core.progress import CancelToken, ProgressCallback, no_progress
from czb_core.schema.normalization import scale_factors, scale_log1p
from czb_core.streaming.incremental_pca import IncrementalPCA
from czb_core.streaming.row_blocks import RowBlocks
from czb_core.streaming.statistics import add_expm1_moments, seurat_hvg_from_moments


@dataclass
class LogHvgBlocks:
    """Dense blocks of the normalised, log1p data on the HVG columns, re-iterable (one pass each time)."""

    blocks: RowBlocks
    scale_n: np.ndarray
    columns: np.ndarray
    cancel: CancelToken

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        for lo, hi, x_ng in self.blocks:
            self.cancel.check()
            yield lo, hi, scale_log1p(x_ng, self.scale_n[lo:hi])[:, self.columns].toarray()


def log_hvg_blocks(blocks: RowBlocks, n_top_genes: int, progress: ProgressCallback = no_progress,
                   cancel: Optional[CancelToken] = None) -> LogHvgBlocks:
    """Passes 1 and 2: the per-cell scale factors and the HVG columns, then blocks on them."""
    cancel = cancel or CancelToken()
    n_cells, n_genes = blocks.n_cells, blocks.n_genes
    n_blocks = -(-n_cells // blocks.chunk_rows)
    total_n = np.zeros(n_cells)
    for k, (lo, hi, x_ng) in enumerate(blocks):
        cancel.check()
        total_n[lo:hi] = np.asarray(x_ng.sum(axis=1)).ravel()
        progress("cell totals", k + 1, n_blocks)
    scale_n = scale_factors(total_n)
    hvg_g = np.ones(n_genes, dtype=bool)
    if n_genes > n_top_genes:
        sum_g, sumsq_g = np.zeros(n_genes), np.zeros(n_genes)
        for k, (lo, hi, x_ng) in enumerate(blocks):
            cancel.check()
            add_expm1_moments(scale_log1p(x_ng, scale_n[lo:hi]), sum_g, sumsq_g)
            progress("highly variable genes", k + 1, n_blocks)
        hvg_g = seurat_hvg_from_moments(sum_g, sumsq_g, n_cells, n_top_genes)
    return LogHvgBlocks(blocks, scale_n, np.flatnonzero(hvg_g), cancel)


def project_blocks(data: LogHvgBlocks, transform: Callable[[np.ndarray], np.ndarray], n_dims: int,
                   out_path: Optional[str | Path], progress: ProgressCallback) -> np.ndarray:
    """Pass 4: `transform` of every block into `emb_nd` (a memory-mapped `.npy` at `out_path` if given)."""
    n_cells = data.blocks.n_cells
    if out_path is None:
        emb_nd = np.zeros((n_cells, n_dims), dtype=np.float32)
    else:
        emb_nd = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32, shape=(n_cells, n_dims))
    n_blocks = -(-n_cells // data.blocks.chunk_rows)
    for k, (lo, hi, x_nh) in enumerate(data):
        emb_nd[lo:hi] = transform(x_nh)
        progress("project", k + 1, n_blocks)
    if isinstance(emb_nd, np.memmap):
        emb_nd.flush()
    return emb_nd


def stream_pca_baseline(blocks: RowBlocks, n_top_genes: int = 3000, n_comps: int = 50, seed: int = 0,
                        out_path: Optional[str | Path] = None, oversample: Optional[int] = None,
                        progress: ProgressCallback = no_progress, cancel: Optional[CancelToken] = None
                        ) -> np.ndarray:
    """`emb_nc` (float32) of the counts in `blocks`, by incremental PCA."""
    data = log_hvg_blocks(blocks, n_top_genes, progress, cancel)
    n_comps = min(n_comps, blocks.n_cells - 1, len(data.columns) - 1)
    pca = IncrementalPCA(n_comps, oversample=oversample, seed=seed)
    n_blocks = -(-blocks.n_cells // blocks.chunk_rows)
    for k, (_, _, x_nh) in enumerate(data):
        pca.update(x_nh)
        progress("incremental pca", k + 1, n_blocks)
    return project_blocks(data, pca.transform, n_comps, out_path, progress)


def stream_ppca(blocks: RowBlocks, flavour: str, n_top_genes: int = 3000, n_comps: int = 50, seed: int = 0,
                n_epochs: int = 20, lr: float = 0.05, minibatch: int = 1024, out_path: Optional[str | Path] = None,
                progress: ProgressCallback = no_progress, cancel: Optional[CancelToken] = None) -> np.ndarray:
    """`emb_nc` of probabilistic PCA (`flavour` marginalized or linear_vae), trained by minibatches over
    `n_epochs` passes; the mean is the exact streamed mean of the log data."""
    from czb_core.streaming.ppca import ProbabilisticPCA, fit_ppca
    from czb_core.streaming.statistics import OnePassMeanVar

    data = log_hvg_blocks(blocks, n_top_genes, progress, cancel)
    stats = OnePassMeanVar(len(data.columns))
    for _, _, x_nh in data:
        stats.update(x_nh)
    n_comps = min(n_comps, blocks.n_cells - 1, len(data.columns) - 1)
    model = ProbabilisticPCA(len(data.columns), n_comps, blocks.n_cells, flavour, stats.mean_g, seed)

    class Minibatches:
        """`minibatch` consecutive cells at a time, across block boundaries: the same minibatches whatever
        the blocks the file is read in (in memory or streamed), so the same seed gives the same model."""

        def __iter__(self):
            held: list[np.ndarray] = []
            n_held = 0
            for _, _, x_nh in data:
                held.append(x_nh)
                n_held += len(x_nh)
                if n_held < minibatch:
                    continue
                rows_nh = np.concatenate(held)
                cut = n_held - n_held % minibatch
                for start in range(0, cut, minibatch):
                    yield rows_nh[start:start + minibatch]
                held, n_held = [rows_nh[cut:]], n_held - cut
            if n_held:
                yield np.concatenate(held)

    n_steps = -(-blocks.n_cells // minibatch)
    fit_ppca(model, Minibatches(), n_epochs, lr, steps_per_epoch=n_steps, progress=progress)
    return project_blocks(data, model.embed, n_comps, out_path, progress)
