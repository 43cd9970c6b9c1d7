"""Reading single-cell files into AnnData, with errors a scientist can act on.

Supports `.h5ad` and 10x Genomics `.h5` (CellRanger v3 feature-barcode matrices). Whatever goes wrong
(not HDF5, truncated, no cells) surfaces as `InputError` naming the file and the reason.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from czb_core.errors import InputError

SUPPORTED_SUFFIXES = (".h5ad", ".h5")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_readable(path: str | Path) -> Path:
    """Fail early and specifically: missing file, wrong suffix, not HDF5, truncated HDF5."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an .h5ad or 10x .h5 file")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise InputError(
            f"{path.name}: unsupported file type {path.suffix or '(none)'!r}; "
            "expected .h5ad (AnnData) or .h5 (10x Genomics)"
        )
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head != HDF5_SIGNATURE:
        raise InputError(
            f"{path.name}: not an HDF5 file (an .h5ad or 10x .h5 starts with the HDF5 signature); "
            "was it saved as CSV, loom or zarr, or renamed?"
        )
    try:
        with h5py.File(path, "r") as f:
            list(f.keys())
    except OSError as exc:
        raise InputError(
            f"{path.name}: the HDF5 file cannot be opened ({exc}); it is probably truncated or "
            "corrupt, upload or copy it again"
        ) from exc
    return path


def is_10x_h5(path: str | Path) -> bool:
    with h5py.File(path, "r") as f:
        return "matrix" in f and "features" in f["matrix"]


def read_10x_h5(path: str | Path) -> ad.AnnData:
    """A CellRanger v3 `.h5` as AnnData: integer counts in CSR, Ensembl ids as `var_names`.

    Symbols go to `var["feature_name"]` (the CELLxGENE column name the validators look for).
    """
    with h5py.File(path, "r") as f:
        m = f["matrix"]
        n_genes, n_cells = (int(v) for v in m["shape"][()])
        # 10x stores genes x cells in CSC; read as cells x genes CSR without a transpose copy.
        x = sp.csr_matrix(
            (m["data"][()], m["indices"][()], m["indptr"][()]), shape=(n_cells, n_genes)
        )
        barcodes = m["barcodes"][()].astype(str)
        feats = m["features"]
        ids = feats["id"][()].astype(str)
        names = feats["name"][()].astype(str)
        ftype = feats["feature_type"][()].astype(str) if "feature_type" in feats else None
    var = pd.DataFrame({"feature_name": names}, index=pd.Index(ids, name=None))
    if ftype is not None:
        var["feature_type"] = ftype
    return ad.AnnData(X=x, obs=pd.DataFrame(index=barcodes), var=var)


def read_anndata(path: str | Path, backed: bool = False) -> ad.AnnData:
    """Read an `.h5ad` or 10x `.h5` file fully (or backed, h5ad only), raising `InputError` on failure."""
    path = check_readable(path)
    try:
        if is_10x_h5(path):
            adata = read_10x_h5(path)
        else:
            adata = ad.read_h5ad(path, backed="r" if backed else None)
    except InputError:
        raise
    except Exception as exc:  # anndata raises many types for malformed files
        raise InputError(f"{path.name}: cannot be read as single-cell data ({exc})") from exc
    check_not_empty(adata, path.name)
    return adata


def check_not_empty(adata: ad.AnnData, name: str) -> None:
    if adata.n_obs == 0:
        raise InputError(f"{name}: the dataset has zero cells")
    if adata.n_vars == 0:
        raise InputError(f"{name}: the dataset has zero genes")


def as_csr(x) -> sp.csr_matrix:
    """Any in-memory matrix as CSR without copying when it already is one."""
    if sp.issparse(x):
        return x.tocsr() if x.format != "csr" else x
    return sp.csr_matrix(np.asarray(x))
