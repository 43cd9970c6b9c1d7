"""Files written with h5py by hand in layouts anndata no longer writes, that lie about their size, or whose
arrays were edited into nonsense."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import anndata as ad
import h5py
import numpy as np
import scipy.sparse as sp

STR = h5py.string_dtype()


def _strings(group: h5py.Group, key: str, values: Sequence[str]) -> h5py.Dataset:
    return group.create_dataset(key, data=np.array(list(values), dtype=object), dtype=STR)


def write_10x_v2(path: Path, x_cg, ids: Sequence[str], names: Sequence[str], genomes=("GRCh38",)) -> Path:
    """CellRanger 2's layout: one group per genome with `genes`, `gene_names`, `barcodes` and a genes x
    cells CSC matrix (stored as the CSR of cells)."""
    m_cg = sp.csr_matrix(x_cg)
    with h5py.File(path, "w") as f:
        for genome in genomes:
            g = f.create_group(genome)
            g["data"], g["indices"], g["indptr"] = m_cg.data.astype(np.int32), m_cg.indices, m_cg.indptr
            g["shape"] = np.array([m_cg.shape[1], m_cg.shape[0]], dtype=np.int32)
            g["barcodes"] = np.array([f"AAACCTGA-{i}".encode() for i in range(m_cg.shape[0])])
            g["genes"] = np.array([s.encode() for s in ids])
            g["gene_names"] = np.array([s.encode() for s in names])
    return path


def write_old_anndata(path: Path, adata: ad.AnnData, category: str) -> Path:
    """The pre-0.7 layout: no `encoding-type` anywhere, X marked by `h5sparse_format`, and the column
    `category` stored as int8 codes referencing its labels in `obs/__categories`."""
    x = sp.csr_matrix(adata.X)
    with h5py.File(path, "w") as f:
        xg = f.create_group("X")
        xg.attrs["h5sparse_format"] = "csr"
        xg.attrs["h5sparse_shape"] = np.array(x.shape)
        xg["data"], xg["indices"], xg["indptr"] = x.data.astype(np.float32), x.indices, x.indptr
        obs = f.create_group("obs")
        obs.attrs["_index"] = "index"
        obs.attrs["column-order"] = [category]
        _strings(obs, "index", adata.obs_names)
        labels, codes = np.unique(np.asarray(adata.obs[category], dtype=str), return_inverse=True)
        categories = _strings(obs.create_group("__categories"), category, labels)
        obs.create_dataset(category, data=codes.astype(np.int8)).attrs["categories"] = categories.ref
        var = f.create_group("var")
        var.attrs["_index"] = "index"
        var.attrs["column-order"] = []
        _strings(var, "index", adata.var_names)
        for group in ("obsm", "varm", "layers", "uns"):
            f.create_group(group)
    return path


def _frame(f: h5py.File, key: str, n_rows: int, written: bool) -> None:
    """An obs/var group of `n_rows` names: written out, or declared only (chunked, never written)."""
    group = f.create_group(key)
    group.attrs.update({"_index": "_index", "encoding-type": "dataframe", "encoding-version": "0.2.0",
                        "column-order": np.array([], dtype=object).astype(STR)})
    if written:
        _strings(group, "_index", [f"{key}{i}" for i in range(n_rows)])
    else:
        group.create_dataset("_index", shape=(n_rows,), dtype=STR, chunks=(1 << 16,))


def write_claimed_cells(path: Path, n_cells: int, n_genes: int = 100) -> Path:
    """An h5ad whose header claims `n_cells` cells (10^12 fits): obs index, X's shape and indptr all agree,
    but the arrays are chunked and never written, so the file is a few KB."""
    with h5py.File(path, "w") as f:
        _frame(f, "obs", n_cells, written=False)
        _frame(f, "var", n_genes, written=True)
        x = f.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n_cells, n_genes)})
        x.create_dataset("indptr", shape=(n_cells + 1,), dtype=np.int64, chunks=(1 << 16,))
        x.create_dataset("indices", shape=(0,), dtype=np.int32)
        x.create_dataset("data", shape=(0,), dtype=np.float32)
    return path


def write_gzip_bomb(path: Path, n_cells: int = 100_000, n_genes: int = 20_000) -> Path:
    """A consistent h5ad (every cell and gene named) whose dense gzip-compressed X is `n_cells` x `n_genes`
    float32 (8 GB by default) from well under 1 MB on disk: one written chunk of zeros, the rest fill value."""
    with h5py.File(path, "w") as f:
        _frame(f, "obs", n_cells, written=True)
        _frame(f, "var", n_genes, written=True)
        x = f.create_dataset("X", shape=(n_cells, n_genes), dtype=np.float32, chunks=(100, n_genes),
                             compression="gzip", compression_opts=9)
        x.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        x[:100] = np.zeros((100, n_genes), dtype=np.float32)
    return path


def write_10x_v3(path: Path, x_ng, ids: Sequence[str], names: Sequence[str]) -> Path:
    """CellRanger 3+'s layout: `matrix` with `features/{id,name,feature_type}`, `barcodes` and the genes x
    cells CSC matrix (stored as the CSR of cells)."""
    m_cg = sp.csr_matrix(x_ng)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["data"], g["indices"], g["indptr"] = m_cg.data.astype(np.int32), m_cg.indices, m_cg.indptr
        g["shape"] = np.array([m_cg.shape[1], m_cg.shape[0]], dtype=np.int32)
        g["barcodes"] = np.array([f"AAACCTGA-{i}".encode() for i in range(m_cg.shape[0])])
        features = g.create_group("features")
        features["id"] = np.array([s.encode() for s in ids])
        features["name"] = np.array([s.encode() for s in names])
        features["feature_type"] = np.array([b"Gene Expression"] * len(ids))
    return path


def replace_array(path: Path, key: str, values, attrs: Optional[dict] = None) -> Path:
    """Put `values` at `key` in place of what is there (a hand edit of the file), with `attrs` for its
    attributes, by default those it had."""
    with h5py.File(path, "a") as f:
        attrs = dict(f[key].attrs) if attrs is None else attrs
        del f[key]
        f[key] = values
        f[key].attrs.update(attrs)
    return path


def edit_array(path: Path, key: str, change) -> Path:
    """`change(values)` edits the array at `key` (same length and type) in place."""
    with h5py.File(path, "a") as f:
        values = f[key][()]
        change(values)
        f[key][...] = values
    return path


def write_split_bomb(path: Path, adata: ad.AnnData, n_arrays: int = 20, each_bytes: int = 990_000_000) -> Path:
    """An ordinary h5ad plus `n_arrays` gzip arrays in uns, each declaring `each_bytes` (just under the
    one-array bomb floor) from a few stored bytes: chunked and never written, so the file stays small."""
    adata.write_h5ad(path)
    with h5py.File(path, "a") as f:
        for i in range(n_arrays):
            f["uns"].create_dataset(f"part{i}", shape=(each_bytes // 4,), dtype=np.float32, chunks=(1 << 18,),
                                    compression="gzip")
    return path


def write_loom(path: Path, x_ng) -> Path:
    """The loom layout: `matrix` (genes x cells, dense), `row_attrs` per gene, `col_attrs` per cell."""
    x_gn = np.asarray(sp.csr_matrix(x_ng).T.todense(), dtype=np.float32)
    with h5py.File(path, "w") as f:
        f["matrix"] = x_gn
        f.create_group("row_attrs")["Gene"] = np.array([f"G{i}".encode() for i in range(x_gn.shape[0])])
        f.create_group("col_attrs")["CellID"] = np.array([f"C{i}".encode() for i in range(x_gn.shape[1])])
        f.create_group("layers")
    return path


def set_entry(position: int, value: int):
    """An `edit_array` change: the entry at `position` becomes `value`."""
    def change(values: np.ndarray) -> None:
        values[position] = value
    return change


def _swap_entries(first: int):
    def change(values: np.ndarray) -> None:
        values[first], values[first + 1] = values[first + 1], values[first]
    return change


# Edits of small.h5ad (400 cells x 300 genes, CSR) into files that used to be stored, and then broke the
# Dataset page, exited 4 or crashed a run; with the refusal (a regular expression) each gets now.
REPRODUCTIONS = {
    "1-D X": (lambda path: replace_array(path, "X", np.arange(400, dtype=np.float32),
                                         {"encoding-type": "array", "encoding-version": "0.2.0"}),
              r"X is a 1-D array of shape \(400,\), but an expression matrix is 2-D"),
    "indptr overruns": (lambda path: edit_array(path, "X/indptr", lambda p: p.__setitem__(-1, p[-1] + 50)),
                        r"X/indptr ends at [\d,]+ but X holds [\d,]+ values; the file is corrupt"),
    "indptr decreases": (lambda path: edit_array(path, "X/indptr", _swap_entries(10)),
                         r"X/indptr decreases from [\d,]+ to [\d,]+ at entry 11, so row 10 would hold a negative"),
    "indptr does not start at 0": (lambda path: edit_array(path, "X/indptr", set_entry(0, 3)),
                                   r"X/indptr starts at 3, not 0"),
    "column index out of range": (lambda path: edit_array(path, "X/indices", set_entry(5, 10_000)),
                                  r"X/indices holds column 10,000 at position 5, outside the 300 columns"),
}
