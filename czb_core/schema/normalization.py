"""Per-cell normalisation of counts: scale every cell to one total, then log1p.

One implementation for every caller that normalises counts itself (the PCA baseline in memory and
streamed, perturbation scoring, the tokenizer lab), so the same counts give the same values everywhere.
Callers differ only in what they ask for: the target total (the median total of the non-empty cells, as
`sc.pp.normalize_total` by default, for PCA; 1e4 for perturbation models and the tokenizer lab) and the
precision the values are scaled in (float32 for embeddings and training; float64 where perturbation
metrics compare small differences of means). The result stays sparse and holds one new copy of the stored
values, sharing the input's index arrays, so a large matrix is never densified or copied whole.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import scipy.sparse as sp

from czb_core.io.reading import as_csr

CHUNK_ROWS = 20_000  # rows scaled at a time: bounds the per-value temporary of the repeated factors
TARGET_SUM = 1e4  # normalize_total target of the perturbation models and datasets


def scale_factors(total_n: np.ndarray, target_sum: Optional[float] = None, dtype=np.float32) -> np.ndarray:
    """Per-cell factors to `target_sum` counts (default: the median total of the non-empty cells), 0 for an
    empty cell so that it stays zero. Divided in float64 and returned in `dtype`, the precision the values
    are then scaled in; streamed callers compute the totals over every block first, then scale block by block."""
    total_n = np.asarray(total_n, dtype=np.float64)
    if target_sum is None:
        nonzero = total_n[total_n > 0]
        target_sum = float(np.median(nonzero)) if nonzero.size else 1.0
    scale_n = np.divide(target_sum, total_n, out=np.zeros_like(total_n), where=total_n > 0)
    return scale_n.astype(dtype)


def scale_log1p(x_ng, scale_n: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> sp.csr_matrix:
    """log1p of each row of `x_ng` times its factor in `scale_n`, in `scale_n`'s precision, as CSR.

    The stored values are copied once and scaled in place in row chunks; zeros stay zeros, so the sparsity
    (and the index arrays, shared with the input) carry over.
    """
    x_ng = as_csr(x_ng)
    indptr = x_ng.indptr
    data = x_ng.data.astype(scale_n.dtype, copy=True)
    for lo in range(0, x_ng.shape[0], chunk_rows):
        hi = min(lo + chunk_rows, x_ng.shape[0])
        data[indptr[lo] : indptr[hi]] *= np.repeat(scale_n[lo:hi], np.diff(indptr[lo : hi + 1]))
    np.log1p(data, out=data)
    return sp.csr_matrix((data, x_ng.indices, indptr), shape=x_ng.shape)


def normalize_log1p(x_ng, target_sum: Optional[float] = None, dtype=np.float32,
                    chunk_rows: int = CHUNK_ROWS) -> sp.csr_matrix:
    """`sc.pp.normalize_total(target_sum)` then `sc.pp.log1p` of counts `x_ng` (any matrix), as CSR in
    `dtype`; `target_sum` None is the median total of the non-empty cells. Empty cells stay zero."""
    x_ng = as_csr(x_ng)
    total_n = np.asarray(x_ng.sum(axis=1)).ravel()
    return scale_log1p(x_ng, scale_factors(total_n, target_sum, dtype), chunk_rows)


def log_normalize(x_ng, target_sum: float = TARGET_SUM) -> np.ndarray:
    """log1p of counts scaled to `target_sum` per cell, computed in float64 and handed over as the dense
    float32 expression the perturbation models read and predict; a cell without counts stays zero."""
    return normalize_log1p(x_ng, target_sum, np.float64).toarray().astype(np.float32)
