"""What the arrays of a sparse expression matrix hold, checked before anything indexes with them.

Row i of a CSR matrix is `data[indptr[i]:indptr[i + 1]]`, its columns `indices[...]` of the same slice
(CSC the same by columns; a 10x `.h5` is the CSR of cells). scipy builds a matrix from these arrays without
looking inside them, and the compiled code of the models trusts them: an `indptr` that does not start at 0,
decreases or ends past the values assigns values to the wrong cells or reads past the arrays, and a column
index beyond the genes writes outside a buffer (`czb run` died of a segmentation fault, a server worker of
ARPACK error -9). So before a file is stored, validated or run, every sparse matrix in it is checked here,
and a broken one refused by name.

The cost is bounded: `indptr` (one integer per row, what every row reader loads anyway) is read whole;
`indices`, as long as the matrix has values (gigabytes for a large dataset), is read in blocks of
`BLOCK_VALUES`, so the check holds one block at a time, and only its minimum and maximum are needed of each.
`data` is not read, so a well-formed file is read less than once (about 0.2 s per 50 million values from
the page cache). The arrays may be h5py or zarr ones: anything sliceable with a `shape`.
"""

from __future__ import annotations

import h5py
import numpy as np

from czb_core.errors import InputError
from czb_core.io.declared import MAX_GENES, matrix_shape, max_cells, sparse_format

BLOCK_VALUES = 1 << 24  # indices read at a time: 64 MB of int32, 128 MB of int64
H5AD_FIX = "write it again with anndata (adata.write_h5ad) from the data it came from"
TENX_FIX = "export it from CellRanger again"


def check_compressed(indptr, indices, n_minor: int, *, where: str, name: str, major: str = "row",
                     minor: str = "column", fix: str = H5AD_FIX) -> None:
    """Refuse a compressed sparse matrix whose `indptr` does not run from 0 up to the number of values
    without decreasing, or whose `indices` leave [0, n_minor). The lengths (`indptr` one more than the rows,
    `indices` as many as `data`) are the header's check (`declared.matrix_shape`), made before."""
    indptr_m = np.asarray(indptr[:], dtype=np.int64)
    nnz = int(indices.shape[0])
    if indptr_m[0] != 0:
        raise InputError(f"{name}: {where}/indptr starts at {indptr_m[0]:,}, not 0, so its values cannot be assigned "
                         f"to {major}s; the file is corrupt: {fix}")
    steps_m = np.diff(indptr_m)
    if steps_m.size and steps_m.min() < 0:
        at = int(np.argmax(steps_m < 0))
        raise InputError(f"{name}: {where}/indptr decreases from {indptr_m[at]:,} to {indptr_m[at + 1]:,} at entry "
                         f"{at + 1:,}, so {major} {at:,} would hold a negative number of values; the file is "
                         f"corrupt: {fix}")
    if indptr_m[-1] != nnz:
        raise InputError(f"{name}: {where}/indptr ends at {indptr_m[-1]:,} but {where} holds {nnz:,} values; the "
                         f"file is corrupt: {fix}")
    for lo in range(0, nnz, BLOCK_VALUES):
        block = np.asarray(indices[lo : lo + BLOCK_VALUES])
        low, high = block.min(), block.max()
        if low < 0 or high >= n_minor:
            at = int(np.argmax((block < 0) | (block >= n_minor)))
            raise InputError(
                f"{name}: {where}/indices holds {minor} {int(block[at]):,} at position {lo + at:,}, outside the "
                f"{n_minor:,} {minor}s the matrix declares; the file is corrupt: {fix}"
            )


def check_h5ad_matrices(f: h5py.File, name: str) -> None:
    """`check_compressed` for every sparse matrix of an h5ad, by rows for CSR and by columns for CSC: models
    read X, `layers/counts` or raw/X, but a full read builds every one (layers, obsm, obsp, uns...) and
    scipy trusts them all, in a fix's slicing as much as in a model. `declared` checked their shapes."""
    groups: list[str] = []
    f.visititems(lambda path, node: groups.append(path) if sparse_format(node) is not None else None)
    most = max(max_cells(), MAX_GENES)  # no matrix of a dataset has more rows (or columns) than cells or genes
    for location in groups:
        node = f[location]
        rows, cols = matrix_shape(node, location, name)
        by_rows = sparse_format(node) == "csr"
        if (rows if by_rows else cols) > most:  # its indptr, read whole below, would be larger than any real one
            raise InputError(f"{name}: {location} declares {rows:,} x {cols:,}, more "
                             f"{'rows' if by_rows else 'columns'} than any matrix of a dataset this server takes "
                             f"({most:,}); the file is malformed: drop {location} and save it again")
        check_compressed(node["indptr"], node["indices"], cols if by_rows else rows, where=location, name=name,
                         major="row" if by_rows else "column", minor="column" if by_rows else "row")


def check_10x_matrix(m: h5py.Group, name: str) -> None:
    """`check_compressed` for a CellRanger matrix: genes x cells in CSC, which is the CSR of cells x genes."""
    n_genes = int(m["shape"][0])
    check_compressed(m["indptr"], m["indices"], n_genes, where=m.name.strip("/"), name=name, major="cell",
                     minor="gene", fix=TENX_FIX)
