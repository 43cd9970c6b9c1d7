"""Per-cell QC (total counts, detected genes) read in row chunks straight from the h5ad.

The Dataset page shows these distributions before any model runs; reading chunk by chunk keeps memory
flat however big the file is.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from czb_core.io.reading import is_10x_h5, read_10x_h5

CHUNK_NNZ = 50_000_000


def per_cell_qc(path: str | Path, location: str = "X") -> pd.DataFrame:
    """`total_counts` and `n_genes` per cell from the matrix at `location` (`X`, `layers/counts`, `raw/X`)."""
    if is_10x_h5(path):
        x = read_10x_h5(path).X
        return pd.DataFrame({"total_counts": np.asarray(x.sum(axis=1)).ravel(), "n_genes": np.diff(x.indptr)})
    with h5py.File(path, "r") as f:
        node = f[location]
        if isinstance(node, h5py.Dataset):
            totals, genes = [], []
            for lo in range(0, node.shape[0], 2048):
                block = node[lo : lo + 2048]
                totals.append(block.sum(axis=1))
                genes.append(np.count_nonzero(block, axis=1))
            return pd.DataFrame({"total_counts": np.concatenate(totals), "n_genes": np.concatenate(genes)})
        if node.attrs.get("encoding-type") != "csr_matrix":
            raise ValueError("per-cell QC needs cells in rows (CSR or dense)")
        indptr = node["indptr"][()]
        data = node["data"]
        totals = np.zeros(len(indptr) - 1)
        row = 0
        while row < len(indptr) - 1:
            # as many rows as fit in CHUNK_NNZ values
            end = int(np.searchsorted(indptr, indptr[row] + CHUNK_NNZ, side="right")) - 1
            end = max(end, row + 1)
            base = indptr[row]
            cumsum = np.concatenate([[0.0], np.cumsum(data[base : indptr[end]], dtype=np.float64)])
            totals[row:end] = cumsum[indptr[row + 1 : end + 1] - base] - cumsum[indptr[row:end] - base]
            row = end
        return pd.DataFrame({"total_counts": totals, "n_genes": np.diff(indptr)})
