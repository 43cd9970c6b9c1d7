"""Reading single-cell files into AnnData, with errors a scientist can act on.

Supports `.h5ad` (also the layout of anndata before 0.7, see `legacy`) and 10x Genomics `.h5` (CellRanger
v3+ feature-barcode matrices and the v2 layout with one group per genome). Whatever goes wrong (not HDF5,
truncated, loom, a header that claims more than the server takes, no cells, a sparse matrix whose arrays
point outside it) surfaces as `InputError` naming the file and the reason, before any matrix is read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from czb_core.errors import InputError
from czb_core.io.declared import check_expansion, check_size, declared_10x_shape, declared_h5ad_shape, list_arrays
from czb_core.io.legacy import is_legacy_h5ad, read_legacy_h5ad
from czb_core.io.structure import check_10x_matrix, check_h5ad_matrices

SUPPORTED_SUFFIXES = (".h5ad", ".h5")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def loom_fix(name: str) -> str:
    """How to turn the loom file `name` into an h5ad (anndata's loom reader needs loompy; scanpy has it)."""
    stem = Path(name).stem
    return (f"loom is not supported; convert it to .h5ad with scanpy (scanpy.read_loom('{name}')"
            f".write_h5ad('{stem}.h5ad')) and add the .h5ad")


def check_readable(path: str | Path, name: Optional[str] = None) -> Path:
    """Fail early and specifically: missing file, wrong suffix, empty, not HDF5, truncated, loom, a header
    that claims an impossible or inconsistent shape, an expression matrix that is not a 2-D numeric matrix,
    or sparse arrays that point outside the matrix. Reads metadata, then the `indptr` and (block by block)
    the `indices` of the matrices a model reads counts from (`structure`), never their values.

    `name` is what messages call the file (an upload's own name while it lies under a temporary one)."""
    read_declared(path, name)
    return Path(path)


def check_dataset_file(path: str | Path, name: Optional[str] = None) -> Path:
    """`check_readable`, and the header declares a matrix with enough cells and genes to work on: what a
    dataset must pass to be stored (a run's slim output, without genes, passes `check_readable` only)."""
    path = Path(path)
    name = name or path.name
    shape, has_matrix = read_declared(path, name)
    if not has_matrix:
        raise InputError(f"{name}: the file holds no expression matrix X; store the counts in X "
                         "(adata.X = adata.layers['counts'], for example) and save it again")
    if shape is not None:
        check_size(*shape, name)
    return path


def read_declared(path: str | Path, name: Optional[str] = None) -> tuple[Optional[tuple[int, int]], bool]:
    """(cells, genes) as the header declares them (None if it does not say) and whether it has a matrix;
    every check of `check_readable` on the way, the cheap ones first: the arrays' sizes are known to be
    sane (`check_expansion`) before `structure` reads any of them."""
    path = Path(path)
    name = name or path.name
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an .h5ad or 10x .h5 file")
    check_suffix(name)
    if path.stat().st_size == 0:
        raise InputError(f"{name}: the file is empty (0 bytes); the upload or copy did not complete, send it again")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head != HDF5_SIGNATURE:
        raise InputError(
            f"{name}: not an HDF5 file (an .h5ad or 10x .h5 starts with the HDF5 signature); "
            "was it saved as CSV, loom or zarr, or renamed?"
        )
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(_unopenable(name, exc)) from None
    with f:
        arrays = list_arrays(f, name)
        matrix = tenx_matrix_group(f, name)
        if matrix is None:
            check_anndata_layout(f, name)
        shape = declared_10x_shape(matrix, name) if matrix is not None else declared_h5ad_shape(f, name)
        check_expansion(arrays, f.id.get_filesize(), name)
        if matrix is not None:
            check_10x_matrix(matrix, name)
        else:
            check_h5ad_matrices(f, name)
        return shape, matrix is not None or "X" in f


def check_anndata_layout(f: h5py.File, name: str) -> None:
    """An HDF5 file that is not 10x must be AnnData: have an X, obs or var. A loom file (a `matrix` dataset
    with `row_attrs` and `col_attrs`) is told how to convert; anything else is told what it holds."""
    if any(key in f for key in ("X", "obs", "var")):
        return
    keys = sorted(f.keys())
    if isinstance(f.get("matrix"), h5py.Dataset) and {"row_attrs", "col_attrs"} & set(keys):
        raise InputError(f"{name}: this is a loom file; {loom_fix(name)}")
    raise InputError(
        f"{name}: an HDF5 file, but neither AnnData (.h5ad: no X, obs or var) nor a 10x Genomics matrix (.h5: no "
        f"matrix group with features); it holds {', '.join(keys[:8]) or 'nothing'}: save the data with anndata "
        "(adata.write_h5ad) and add that file"
    )


def check_suffix(name: str) -> None:
    suffix = Path(name).suffix
    if suffix.lower() == ".loom":
        raise InputError(f"{name}: {loom_fix(name)}")
    if suffix.lower() not in SUPPORTED_SUFFIXES:
        raise InputError(
            f"{name}: unsupported file type {suffix or '(none)'!r}; expected .h5ad (AnnData) or .h5 (10x Genomics)"
        )


def _unopenable(name: str, exc: OSError) -> str:
    """HDF5's own words for a cut-off file name the byte counts; say so plainly."""
    found = re.search(r"eof = (\d+).*stored_eof = (\d+)", str(exc))
    if found:
        have, want = (int(v) for v in found.groups())
        return (f"{name}: the file is truncated: it has {have:,} of the {want:,} bytes its header announces; the "
                "upload or copy stopped early, send it again")
    return f"{name}: the HDF5 file cannot be opened ({exc}); it is probably corrupt, upload or copy it again"


def tenx_matrix_group(f: h5py.File, name: str) -> Optional[h5py.Group]:
    """The CellRanger matrix: `matrix` (v3+), or the single genome group of a v2 file; None if not 10x."""
    if isinstance(f.get("matrix"), h5py.Group) and "features" in f["matrix"]:
        return f["matrix"]
    genomes = [k for k, node in f.items()
               if isinstance(node, h5py.Group) and {"genes", "barcodes", "data"} <= set(node)]
    if len(genomes) > 1:
        raise InputError(
            f"{name}: a CellRanger v2 file with {len(genomes)} genomes ({', '.join(genomes)}), a mixed-species "
            "experiment; write each genome's cells to a file of their own and add them one at a time"
        )
    return f[genomes[0]] if genomes else None


def is_10x_h5(path: str | Path) -> bool:
    with h5py.File(path, "r") as f:
        return tenx_matrix_group(f, Path(path).name) is not None


def read_10x_h5(path: str | Path) -> ad.AnnData:
    """A CellRanger `.h5` as AnnData: integer counts in CSR, Ensembl ids as `var_names`.

    Symbols go to `var["feature_name"]` (the CELLxGENE column name the validators look for). v3+ keeps
    them in `features/{id,name}`, v2 in `genes` and `gene_names` of the genome's group.
    """
    with h5py.File(path, "r") as f:
        m = tenx_matrix_group(f, Path(path).name)
        n_genes, n_cells = (int(v) for v in m["shape"][()])
        # 10x stores genes x cells in CSC; read as cells x genes CSR without a transpose copy.
        x = sp.csr_matrix(
            (m["data"][()], m["indices"][()], m["indptr"][()]), shape=(n_cells, n_genes)
        )
        barcodes = m["barcodes"][()].astype(str)
        feats = m["features"] if "features" in m else None
        ids = (feats["id"] if feats is not None else m["genes"])[()].astype(str)
        names = (feats["name"] if feats is not None else m["gene_names"])[()].astype(str)
        ftype = feats["feature_type"][()].astype(str) if feats is not None and "feature_type" in feats else None
    var = pd.DataFrame({"feature_name": names}, index=pd.Index(ids, name=None))
    if ftype is not None:
        var["feature_type"] = ftype
    return ad.AnnData(X=x, obs=pd.DataFrame(index=barcodes), var=var)


def is_legacy_file(path: str | Path) -> bool:
    with h5py.File(path, "r") as f:
        return is_legacy_h5ad(f)


def read_anndata(path: str | Path, backed: bool = False) -> ad.AnnData:
    """Read an `.h5ad` or 10x `.h5` file fully (or backed, h5ad only), raising `InputError` on failure."""
    path = check_readable(path)
    try:
        if is_10x_h5(path):
            adata = read_10x_h5(path)
        elif is_legacy_file(path):
            adata = read_legacy_h5ad(path)
        else:
            adata = ad.read_h5ad(path, backed="r" if backed else None)
    except InputError:
        raise
    except Exception as exc:  # anndata raises many types for malformed files
        raise InputError(f"{path.name}: cannot be read as single-cell data ({exc})") from exc
    check_not_empty(adata, path.name)
    return adata


def check_not_empty(adata: ad.AnnData, name: str) -> None:
    """Enough cells and genes to work on, and an X to read them from."""
    check_size(adata.n_obs, adata.n_vars, name)
    if adata.X is None:
        raise InputError(f"{name}: the file holds no expression matrix X; store the counts in X "
                         "(adata.X = adata.layers['counts'], for example) and save it again")


def as_csr(x) -> sp.csr_matrix:
    """Any in-memory matrix as CSR without copying when it already is one."""
    if sp.issparse(x):
        return x.tocsr() if x.format != "csr" else x
    return sp.csr_matrix(np.asarray(x))
