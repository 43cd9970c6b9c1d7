"""Per-cell QC (total counts, detected genes) read in chunks straight from the h5ad.

The Dataset page shows these distributions before any model runs; reading chunk by chunk keeps memory
flat however big the file is. The file is checked first (`check_readable`), so a stored file that turns out
malformed gives the page an `InputError` with the reason, not a failure from deep inside numpy.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from czb_core.errors import InputError
from czb_core.io.declared import COUNT_LOCATIONS, matrix_shape, present, sparse_format
from czb_core.io.reading import check_readable, is_10x_h5, read_10x_h5

CHUNK_NNZ = 50_000_000


def per_cell_qc(path: str | Path, location: str = "X") -> pd.DataFrame:
    """`total_counts` and `n_genes` per cell from the matrix at `location` (`X`, `layers/counts`, `raw/X`:
    the matrices `check_readable` vouches for). `n_genes` counts the stored entries of a sparse matrix (the
    non-zeros of one anndata wrote)."""
    if location not in COUNT_LOCATIONS:
        raise ValueError(f"per-cell QC reads one of {', '.join(COUNT_LOCATIONS)}, not {location!r}")
    path = check_readable(path)
    if is_10x_h5(path):
        x = read_10x_h5(path).X
        return pd.DataFrame({"total_counts": np.asarray(x.sum(axis=1)).ravel(), "n_genes": np.diff(x.indptr)})
    with h5py.File(path, "r") as f:
        if not present(f, location):
            raise InputError(f"{path.name}: has no matrix at {location}")
        node = f[location]
        if isinstance(node, h5py.Dataset):
            return _dense_qc(node)
        if sparse_format(node) == "csc":
            return _csc_qc(node, matrix_shape(node, location, path.name)[0])
        return _csr_qc(node)


def _dense_qc(node: h5py.Dataset) -> pd.DataFrame:
    totals, genes = [], []
    for lo in range(0, node.shape[0], 2048):
        block = node[lo : lo + 2048]
        totals.append(block.sum(axis=1))
        genes.append(np.count_nonzero(block, axis=1))
    return pd.DataFrame({"total_counts": np.concatenate(totals), "n_genes": np.concatenate(genes)})


def _csr_qc(node: h5py.Group) -> pd.DataFrame:
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


def _csc_qc(node: h5py.Group, n_rows: int) -> pd.DataFrame:
    """A CSC matrix by columns: each cell's values lie scattered over every column, so blocks of
    `CHUNK_NNZ` values are read in file order and summed into their rows (`indices`)."""
    data, indices = node["data"], node["indices"]
    totals, genes = np.zeros(n_rows), np.zeros(n_rows, dtype=np.int64)
    for lo in range(0, data.shape[0], CHUNK_NNZ):
        rows_v = np.asarray(indices[lo : lo + CHUNK_NNZ])
        totals += np.bincount(rows_v, weights=np.asarray(data[lo : lo + CHUNK_NNZ], dtype=np.float64),
                              minlength=n_rows)
        genes += np.bincount(rows_v, minlength=n_rows)
    return pd.DataFrame({"total_counts": totals, "n_genes": genes})
