"""What a file's header says it holds, checked before a byte of its matrices is read.

An HDF5 file states every array's shape, type and stored size in metadata, so a file that claims 10^12
cells, whose arrays disagree on the number of cells, or whose few compressed kilobytes expand to gigabytes
(a decompression bomb) is refused in milliseconds, before anndata allocates anything for it. The ceiling
on cells is `CZB_MAX_CELLS` (default 20 million).
"""

from __future__ import annotations

from typing import Optional

import h5py
import numpy as np

from czb_core.config import get_settings
from czb_core.errors import InputError

MAX_GENES = 2_000_000  # more features than any genome's genes and peaks; beyond it the file is malformed
MAX_EXPANSION = 1_000  # expanded / stored bytes above which an array is a bomb (real counts compress < 50x)
BOMB_FLOOR_BYTES = 1 << 30  # arrays expanding to less than this are harmless whatever their ratio
MIN_CELLS = 2  # an embedding, a UMAP and every metric compare cells with each other


def max_cells() -> int:
    """The ceiling on cells (`CZB_MAX_CELLS`)."""
    return get_settings().max_cells


def check_size(n_obs: int, n_vars: int, name: str) -> None:
    """Refuse a dataset with too few cells or genes to work on, or more cells than the server takes."""
    if n_obs == 0:
        raise InputError(f"{name}: the dataset has zero cells")
    if n_vars == 0:
        raise InputError(f"{name}: the dataset has zero genes")
    if n_obs < MIN_CELLS:
        raise InputError(
            f"{name}: the dataset has {n_obs} cell; embeddings, UMAPs and metrics compare cells with each other, "
            f"so it needs at least {MIN_CELLS}"
        )
    check_ceilings(n_obs, n_vars, name)


def check_ceilings(n_obs: int, n_vars: int, name: str) -> None:
    ceiling = max_cells()
    if n_obs > ceiling:
        raise InputError(
            f"{name}: the file declares {n_obs:,} cells, more than this server takes ({ceiling:,}, set by "
            "CZB_MAX_CELLS); split it into smaller files, or ask an administrator to raise the limit"
        )
    if n_vars > MAX_GENES:
        raise InputError(f"{name}: the file declares {n_vars:,} genes, more than any genome has ({MAX_GENES:,}); "
                         "it is malformed or holds something other than genes")


def _frame_length(node) -> Optional[int]:
    """Rows of an obs/var frame: its index array (anndata >= 0.7) or the compound dataset (older)."""
    if isinstance(node, h5py.Dataset):
        return int(node.shape[0]) if node.ndim else None
    index = node.attrs.get("_index", "_index")
    index = index.decode() if isinstance(index, bytes) else str(index)
    return int(node[index].shape[0]) if index in node and isinstance(node[index], h5py.Dataset) else None


def _sparse_format(node: h5py.Group) -> Optional[str]:
    encoding = node.attrs.get("encoding-type", node.attrs.get("h5sparse_format"))
    encoding = encoding.decode() if isinstance(encoding, bytes) else encoding
    return {"csr_matrix": "csr", "csc_matrix": "csc", "csr": "csr", "csc": "csc"}.get(encoding)


def matrix_shape(node, location: str, name: str) -> Optional[tuple[int, int]]:
    """(rows, columns) of a dense dataset or sparse group as declared; a sparse group whose arrays do not
    fit its own shape is refused."""
    if isinstance(node, h5py.Dataset):
        return (int(node.shape[0]), int(node.shape[1])) if node.ndim == 2 else None
    fmt = _sparse_format(node)
    declared = node.attrs.get("shape", node.attrs.get("h5sparse_shape"))
    if fmt is None or declared is None or len(declared) != 2:
        return None
    rows, cols = (int(v) for v in declared)
    if rows < 0 or cols < 0:
        raise InputError(f"{name}: {location} declares a negative shape {rows} x {cols}; the file is corrupt")
    parts = [p for p in ("data", "indices", "indptr") if p not in node]
    if parts:
        raise InputError(f"{name}: the sparse matrix {location} has no {', '.join(parts)}; the file is corrupt")
    major = rows if fmt == "csr" else cols
    n_ptr, n_data, n_idx = node["indptr"].shape[0], node["data"].shape[0], node["indices"].shape[0]
    if n_ptr != major + 1 or n_data != n_idx:
        raise InputError(
            f"{name}: {location} declares {rows:,} x {cols:,} but holds {n_ptr - 1:,} "
            f"{'rows' if fmt == 'csr' else 'columns'} and {n_data:,} values for {n_idx:,} positions; the header does "
            "not match the arrays, so the file is corrupt or was edited by hand: write it again with anndata"
        )
    return rows, cols


def check_expansion(f: h5py.File, name: str) -> None:
    """Refuse any compressed array whose declared size is gigabytes from a sliver of stored bytes."""
    def visit(path: str, node) -> None:
        if not isinstance(node, h5py.Dataset) or node.chunks is None:
            return
        expanded = int(np.prod(node.shape, dtype=np.float64)) * node.dtype.itemsize
        if expanded < BOMB_FLOOR_BYTES:
            return
        stored = node.id.get_storage_size()
        if expanded > MAX_EXPANSION * max(stored, 1):
            raise InputError(
                f"{name}: the array {path} expands from {_size(stored)} on disk to {_size(expanded)} in memory "
                f"({expanded / max(stored, 1):,.0f} times), far more than real expression data compresses; this is "
                "a decompression bomb or a placeholder of zeros: drop that array and save the file again"
            )

    f.visititems(visit)


def _size(n_bytes: float) -> str:
    units = ("bytes", "KB", "MB", "GB", "TB", "PB")
    power = 0
    while n_bytes >= 1024 and power < len(units) - 1:
        n_bytes, power = n_bytes / 1024, power + 1
    return f"{n_bytes:,.0f} bytes" if power == 0 else f"{n_bytes:,.1f} {units[power]}"


def declared_h5ad_shape(f: h5py.File, name: str) -> Optional[tuple[int, int]]:
    """(cells, genes) of an h5ad from its obs and var indexes, with X, every layer, obsm and raw/X checked
    against them; None when the file does not say (no obs or var)."""
    n_obs = _frame_length(f["obs"]) if "obs" in f else None
    n_vars = _frame_length(f["var"]) if "var" in f else None
    if n_obs is None or n_vars is None:
        return None
    check_ceilings(n_obs, n_vars, name)
    expected = {"X": (n_obs, n_vars)}
    for group, want in (("layers", (n_obs, n_vars)), ("obsm", (n_obs, None))):
        if group in f and isinstance(f[group], h5py.Group):
            expected.update({f"{group}/{k}": want for k in f[group]})
    if "raw" in f and isinstance(f["raw"], h5py.Group) and "X" in f["raw"]:
        expected["raw/X"] = (n_obs, None)
    for location, (rows, cols) in expected.items():
        if location not in f:
            continue
        shape = matrix_shape(f[location], location, name)
        if shape is None:
            continue
        if shape[0] != rows or (cols is not None and shape[1] != cols):
            raise InputError(
                f"{name}: {location} declares {shape[0]:,} x {shape[1]:,} but obs has {n_obs:,} cells"
                + ("" if cols is None else f" and var {n_vars:,} genes")
                + "; the parts of the file disagree, so it is corrupt or was edited by hand: write it again with "
                "anndata"
            )
    return n_obs, n_vars


def declared_10x_shape(m: h5py.Group, name: str) -> tuple[int, int]:
    """(cells, genes) of a CellRanger matrix group (genes x cells in CSC), checked against its arrays."""
    if "shape" not in m or m["shape"].shape != (2,):
        raise InputError(f"{name}: the 10x matrix has no shape; the file is corrupt")
    n_genes, n_cells = (int(v) for v in m["shape"][()])
    check_ceilings(n_cells, n_genes, name)
    ids = "features/id" if "features" in m else "genes"  # CellRanger 3+, else 2
    parts = {"barcodes": (n_cells, "cells"), "indptr": (n_cells + 1, "cells"), ids: (n_genes, "genes")}
    for part, (want, what) in parts.items():
        if part not in m or m[part].shape[0] != want:
            got = "no" if part not in m else f"{m[part].shape[0]:,}"
            raise InputError(f"{name}: the 10x matrix declares {n_genes:,} genes x {n_cells:,} cells but has {got} "
                             f"{part} for its {what}; the file is corrupt or incomplete, export it from CellRanger again")
    if "data" not in m or "indices" not in m or m["data"].shape != m["indices"].shape:
        raise InputError(f"{name}: the 10x matrix's data and indices are missing or differ in length; the file is "
                         "corrupt or incomplete, export it from CellRanger again")
    return n_cells, n_genes
