"""What a dataset holds, read without loading its matrix.

`read_header` opens an `.h5ad` in backed mode (obs and var in memory, X left on disk) and reads a
seeded sample of rows straight from HDF5 to find where raw counts live. On a 200,000-cell file this
takes seconds and a few hundred MB, so the app and `czb validate` can answer before any real work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from czb_core.errors import InputError
from czb_core.io.declared import COUNT_LOCATIONS, sparse_format
from czb_core.io.legacy import read_legacy_h5ad
from czb_core.io.reading import check_not_empty, check_readable, is_10x_h5, is_legacy_file, read_10x_h5

SAMPLE_ROWS = 500
SAMPLE_VALUES = 1_000_000  # values read from the leading columns of a CSC matrix


@dataclass
class MatrixSample:
    """Facts about one candidate expression matrix, from a row sample."""

    location: str
    dtype: str
    encoding: str  # csr_matrix, csc_matrix or array
    n_rows_sampled: int
    is_integer: bool
    has_negative: bool
    has_nonfinite: bool
    nnz_fraction: float

    @property
    def looks_like_counts(self) -> bool:
        return self.is_integer and not self.has_negative and not self.has_nonfinite


@dataclass
class DatasetHeader:
    """A dataset's shape and contents, for validators and the app's summary."""

    path: str
    n_obs: int
    n_vars: int
    obs: pd.DataFrame = field(repr=False)
    var: pd.DataFrame = field(repr=False)
    var_names: pd.Index = field(repr=False)
    raw_var_names: Optional[pd.Index] = field(repr=False, default=None)
    raw_var: Optional[pd.DataFrame] = field(repr=False, default=None)
    obsm_keys: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    matrices: dict[str, MatrixSample] = field(default_factory=dict)
    n_empty_cells: Optional[int] = None  # exact when X is CSR, else from the sample
    empty_cells_exact: bool = False
    species: Optional[object] = field(default=None, repr=False)  # the species detection, once computed

    @property
    def counts_location(self) -> Optional[str]:
        """Where raw integer counts live: X if it holds counts, else `layers/counts`, else `raw/X`."""
        for loc in COUNT_LOCATIONS:
            sample = self.matrices.get(loc)
            if sample is not None and sample.looks_like_counts:
                return loc
        return None

    @property
    def x_sample(self) -> MatrixSample:
        return self.matrices["X"]

    def summary(self) -> dict:
        """JSON-friendly summary (the CLI's `--json` and the app's dataset page)."""
        return {
            "path": self.path,
            "n_obs": self.n_obs,
            "n_vars": self.n_vars,
            "obs_columns": {c: int(self.obs[c].nunique(dropna=True)) for c in self.obs.columns},
            "var_columns": list(self.var.columns),
            "obsm_keys": self.obsm_keys,
            "layers": self.layers,
            "counts_location": self.counts_location,
            "matrices": {k: asdict(v) for k, v in self.matrices.items()},
            "n_empty_cells": self.n_empty_cells,
        }


def _sample_rows(node, rows: np.ndarray, n_cols: int) -> sp.csr_matrix:
    """Read `rows` (sorted) of an h5ad matrix node (dense dataset or CSR group; `declared` and `structure`
    vouched for it) as CSR."""
    if isinstance(node, h5py.Dataset):
        return sp.csr_matrix(node[rows, :])
    indptr = node["indptr"][()]  # one read, not two per sampled row (`structure` read it whole already)
    data_ds, indices_ds = node["data"], node["indices"]
    parts_data, parts_idx, lengths = [], [], []
    for r in rows:
        lo, hi = int(indptr[r]), int(indptr[r + 1])
        parts_data.append(data_ds[lo:hi])
        parts_idx.append(indices_ds[lo:hi])
        lengths.append(hi - lo)
    new_indptr = np.concatenate([[0], np.cumsum(lengths)])
    data = np.concatenate(parts_data) if parts_data else np.array([])
    idx = np.concatenate(parts_idx) if parts_idx else np.array([], dtype=np.int32)
    return sp.csr_matrix((data, idx, new_indptr), shape=(len(rows), n_cols))


def _leading_columns(node: h5py.Group, n_rows: int, n_cols: int) -> sp.csr_matrix:
    """The first columns of a CSC group, every row of them, up to `SAMPLE_VALUES` values (at least one
    column): a row of CSC is spread over the whole file, a column is one slice, so whole columns are the
    cheap sample, and their values and density are those of all cells."""
    indptr_c = np.asarray(node["indptr"][:], dtype=np.int64)
    stop = min(max(1, int(np.searchsorted(indptr_c, SAMPLE_VALUES, side="right")) - 1), n_cols)
    end = int(indptr_c[stop])
    x_nc = sp.csc_matrix((node["data"][:end], node["indices"][:end], indptr_c[: stop + 1]), shape=(n_rows, stop))
    return x_nc.tocsr()


def _summarise(location: str, sample, dtype, encoding: str) -> MatrixSample:
    values = sample.data if sp.issparse(sample) else np.asarray(sample).ravel()
    finite = np.isfinite(values)
    finite_vals = values[finite]
    return MatrixSample(
        location=location,
        dtype=str(dtype),
        encoding=encoding,
        n_rows_sampled=int(sample.shape[0]),
        is_integer=bool(np.all(np.mod(finite_vals, 1) == 0)),
        has_negative=bool(np.any(finite_vals < 0)),
        has_nonfinite=bool(not finite.all()),
        nnz_fraction=float(np.count_nonzero(values) / max(1, sample.shape[0] * sample.shape[1])),
    )


def _sample_indices(n_rows: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n_rows, size=min(SAMPLE_ROWS, n_rows), replace=False))


def _describe_h5(location: str, node, n_rows: int, n_cols: int, rng) -> MatrixSample:
    if sparse_format(node) == "csc":
        sample = _leading_columns(node, n_rows, n_cols)
    else:
        sample = _sample_rows(node, _sample_indices(n_rows, rng), n_cols)
    if isinstance(node, h5py.Dataset):
        return _summarise(location, sample, node.dtype, "array")
    return _summarise(location, sample, node["data"].dtype, str(node.attrs.get("encoding-type")))


def _describe_memory(location: str, x, rng) -> MatrixSample:
    sample = x[_sample_indices(x.shape[0], rng)]
    encoding = f"{x.format}_matrix" if sp.issparse(x) else "array"
    return _summarise(location, sample, x.dtype, encoding)


def check_cell_names(obs_names: pd.Index, name: str) -> None:
    """Results are joined to cells by name (exports, comparisons between models), so each name must be one cell."""
    if obs_names.is_unique:
        return
    repeated = obs_names[obs_names.duplicated()].unique()
    raise InputError(
        f"{name}: {len(repeated):,} cell names (obs_names) occur more than once (e.g. "
        f"{', '.join(map(repr, repeated[:3].tolist()))}), so results cannot be matched to cells; call "
        "adata.obs_names_make_unique() (or prefix each sample's barcodes) and save the file again"
    )


def check_some_counts(n_empty: Optional[int], n_obs: int, matrices: dict, name: str) -> None:
    """A counted X with no value in any cell and no other matrix to fall back on holds nothing to embed."""
    if n_empty == n_obs and set(matrices) == {"X"}:
        raise InputError(
            f"{name}: all {n_obs:,} cells have no counts in X, and there is no layers['counts'] or raw.X; nothing "
            "can be embedded: store the expression matrix in X (not an empty placeholder) and save the file again"
        )


def header_from_anndata(adata: ad.AnnData, path: str | Path = "<memory>", seed: int = 0) -> DatasetHeader:
    """The same facts as `read_header`, for an AnnData already in memory (a loaded dataset)."""
    check_not_empty(adata, Path(path).name)
    check_cell_names(adata.obs_names, Path(path).name)
    rng = np.random.default_rng(seed)
    matrices = {"X": _describe_memory("X", adata.X, rng)}
    if "counts" in adata.layers:
        matrices["layers/counts"] = _describe_memory("layers/counts", adata.layers["counts"], rng)
    if adata.raw is not None:
        matrices["raw/X"] = _describe_memory("raw/X", adata.raw.X, rng)
    x = adata.X
    exact = sp.issparse(x) and x.format == "csr"
    n_empty = int(np.count_nonzero(np.diff(x.indptr) == 0)) if exact else None
    check_some_counts(n_empty, adata.n_obs, matrices, Path(path).name)
    return DatasetHeader(
        path=str(path),
        n_obs=adata.n_obs,
        n_vars=adata.n_vars,
        obs=adata.obs,
        var=adata.var,
        var_names=adata.var_names,
        raw_var_names=adata.raw.var_names if adata.raw is not None else None,
        raw_var=adata.raw.var if adata.raw is not None else None,
        obsm_keys=list(adata.obsm.keys()),
        layers=list(adata.layers.keys()),
        matrices=matrices,
        n_empty_cells=n_empty,
        empty_cells_exact=exact,
    )


def read_header(path: str | Path, seed: int = 0) -> DatasetHeader:
    """Shape, annotations, and a sampled look at X / `layers["counts"]` / `raw.X`, without reading X."""
    path = check_readable(path)
    if is_10x_h5(path):
        return header_from_anndata(read_10x_h5(path), path, seed)
    if is_legacy_file(path):  # files of anndata < 0.7 are small; backed mode would misread their columns
        return header_from_anndata(read_legacy_h5ad(path), path, seed)
    try:
        backed = ad.read_h5ad(path, backed="r")
    except Exception as exc:
        raise InputError(f"{path.name}: cannot be read as AnnData ({exc})") from exc
    try:
        check_not_empty(backed, path.name)
        check_cell_names(backed.obs_names, path.name)
        rng = np.random.default_rng(seed)
        matrices: dict[str, MatrixSample] = {}
        raw_var_names, raw_var = None, None
        n_empty, exact = None, False
        with h5py.File(path, "r") as f:
            matrices["X"] = _describe_h5("X", f["X"], backed.n_obs, backed.n_vars, rng)
            if "layers" in f and "counts" in f["layers"]:
                matrices["layers/counts"] = _describe_h5(
                    "layers/counts", f["layers/counts"], backed.n_obs, backed.n_vars, rng
                )
            if "raw" in f and "X" in f["raw"]:
                if backed.raw is not None:
                    raw_var_names, raw_var = backed.raw.var_names.copy(), backed.raw.var.copy()
                n_raw = len(raw_var_names) if raw_var_names is not None else backed.n_vars
                matrices["raw/X"] = _describe_h5("raw/X", f["raw/X"], backed.n_obs, n_raw, rng)
            x = f["X"]
            if isinstance(x, h5py.Group) and x.attrs.get("encoding-type") == "csr_matrix":
                n_empty, exact = int(np.count_nonzero(np.diff(x["indptr"][()]) == 0)), True
        check_some_counts(n_empty, backed.n_obs, matrices, path.name)
        return DatasetHeader(
            path=str(path),
            n_obs=backed.n_obs,
            n_vars=backed.n_vars,
            obs=backed.obs.copy(),
            var=backed.var.copy(),
            var_names=backed.var_names.copy(),
            raw_var_names=raw_var_names,
            raw_var=raw_var,
            obsm_keys=list(backed.obsm.keys()),
            layers=list(backed.layers.keys()),
            matrices=matrices,
            n_empty_cells=n_empty,
            empty_cells_exact=exact,
        )
    finally:
        backed.file.close()
