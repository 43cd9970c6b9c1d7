"""The PCA baseline of a dataset too large for memory, in four passes over row blocks.

1. cell totals, for the normalisation target (the median total of non-empty cells, as in memory);
2. the Seurat-flavour HVG moments of the normalised, log1p data (sums, so the selection equals the
   in-memory one exactly);
3. incremental PCA of the log data on the HVG columns (`IncrementalPCA`);
4. the projection of each block, written to an `.npy` on disk block by block.

Peak memory is one block (dense on the HVG columns) plus the per-cell totals, never the matrix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import scipy.sparse as sp

from czb_core.progress import CancelToken, ProgressCallback, no_progress
from czb_core.streaming.incremental_pca import IncrementalPCA
from czb_core.streaming.row_blocks import RowBlocks


def log_block(x_ng: sp.csr_matrix, scale_n: np.ndarray) -> sp.csr_matrix:
    """log1p of a block scaled per cell, in float32 as the in-memory normalisation computes it."""
    x_ng = sp.csr_matrix(x_ng)
    data = x_ng.data.astype(np.float32) * np.repeat(scale_n.astype(np.float32), np.diff(x_ng.indptr))
    np.log1p(data, out=data)
    return sp.csr_matrix((data, x_ng.indices, x_ng.indptr), shape=x_ng.shape)


def stream_pca_baseline(blocks: RowBlocks, n_top_genes: int = 3000, n_comps: int = 50, seed: int = 0,
                        out_path: Optional[str | Path] = None, oversample: Optional[int] = None,
                        progress: ProgressCallback = no_progress, cancel: Optional[CancelToken] = None
                        ) -> np.ndarray:
    """`emb_nc` (float32; a memory-mapped `.npy` at `out_path` when given) of the counts in `blocks`."""
    from model_runners.pca.model import add_expm1_moments, scale_factors, seurat_hvg_from_moments

    cancel = cancel or CancelToken()
    n_cells, n_genes = blocks.n_cells, blocks.n_genes
    n_blocks = -(-n_cells // blocks.chunk_rows)
    total_n = np.zeros(n_cells)
    for k, (lo, hi, x_ng) in enumerate(blocks):
        cancel.check()
        total_n[lo:hi] = np.asarray(x_ng.sum(axis=1)).ravel()
        progress("cell totals", k + 1, n_blocks)
    scale_n = scale_factors(total_n)
    del total_n
    hvg_g = np.ones(n_genes, dtype=bool)
    if n_genes > n_top_genes:
        sum_g, sumsq_g = np.zeros(n_genes), np.zeros(n_genes)
        for k, (lo, hi, x_ng) in enumerate(blocks):
            cancel.check()
            add_expm1_moments(log_block(x_ng, scale_n[lo:hi]), sum_g, sumsq_g)
            progress("highly variable genes", k + 1, n_blocks)
        hvg_g = seurat_hvg_from_moments(sum_g, sumsq_g, n_cells, n_top_genes)
    columns = np.flatnonzero(hvg_g)
    n_comps = min(n_comps, n_cells - 1, len(columns) - 1)
    pca = IncrementalPCA(n_comps, oversample=oversample, seed=seed)
    for k, (lo, hi, x_ng) in enumerate(blocks):
        cancel.check()
        pca.update(log_block(x_ng, scale_n[lo:hi])[:, columns].toarray())
        progress("incremental pca", k + 1, n_blocks)
    if out_path is None:
        emb_nc = np.zeros((n_cells, n_comps), dtype=np.float32)
    else:
        emb_nc = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32, shape=(n_cells, n_comps))
    for k, (lo, hi, x_ng) in enumerate(blocks):
        cancel.check()
        emb_nc[lo:hi] = pca.transform(log_block(x_ng, scale_n[lo:hi])[:, columns].toarray())
        progress("project", k + 1, n_blocks)
    if isinstance(emb_nc, np.memmap):
        emb_nc.flush()
    return emb_nc
