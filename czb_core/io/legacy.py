"""h5ad files from anndata releases before element encodings (roughly 0.6 to early 0.7).

Those files carry no `encoding-type` on `obs` and `var`; a categorical column is stored as integer codes
whose `categories` attribute references the labels in `obs/__categories/<column>`, and a sparse matrix is
marked by `h5sparse_format`. Today's anndata reads such a file without an error but wrongly: categorical
columns come back as bare integer codes and `__categories` as a column of NaN. So they are decoded here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from czb_core.errors import InputError


def is_legacy_h5ad(f: h5py.File) -> bool:
    """Whether `obs` is a frame group without an element encoding (the pre-0.7 layout)."""
    obs = f.get("obs")
    return isinstance(obs, h5py.Group) and "encoding-type" not in obs.attrs


def _text(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in ("S", "O"):
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)
    return values


def _column(group: h5py.Group, key: str):
    node = group[key]
    values = node[()]
    ref = node.attrs.get("categories")
    if ref is None:
        return _text(values)
    labels = _text(group.file[ref][()])
    return pd.Categorical.from_codes(values.astype(np.int64), categories=labels)


def read_legacy_frame(group: h5py.Group) -> pd.DataFrame:
    """An obs/var group of the old layout as a DataFrame, categorical columns decoded."""
    index_key = group.attrs.get("_index", "index")
    index_key = index_key.decode() if isinstance(index_key, bytes) else str(index_key)
    order = [c.decode() if isinstance(c, bytes) else str(c) for c in group.attrs.get("column-order", [])]
    columns = order or [k for k in group if k not in (index_key, "__categories")
                        and isinstance(group[k], h5py.Dataset)]
    index = pd.Index(_text(group[index_key][()]), dtype=str) if index_key in group else None
    return pd.DataFrame({c: _column(group, c) for c in columns}, index=index)


def read_legacy_matrix(node) -> Optional[np.ndarray | sp.spmatrix]:
    """A dense dataset, or a sparse group marked by `h5sparse_format` (or an encoding) and its shape."""
    if isinstance(node, h5py.Dataset):
        return node[()]
    fmt = node.attrs.get("h5sparse_format", node.attrs.get("encoding-type"))
    fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
    shape = tuple(int(v) for v in node.attrs.get("h5sparse_shape", node.attrs.get("shape", ())))
    kind = {"csr": sp.csr_matrix, "csr_matrix": sp.csr_matrix, "csc": sp.csc_matrix, "csc_matrix": sp.csc_matrix}
    if fmt not in kind or len(shape) != 2:
        return None
    return kind[fmt]((node["data"][()], node["indices"][()], node["indptr"][()]), shape=shape)


def read_legacy_h5ad(path: str | Path) -> ad.AnnData:
    """X, obs, var, layers, obsm and raw of an old-layout h5ad; `uns` is left out (its old encodings vary
    and nothing here reads it from user files)."""
    path = Path(path)
    with h5py.File(path, "r") as f:
        if "X" not in f:
            raise InputError(f"{path.name}: the file holds no expression matrix X")
        x = read_legacy_matrix(f["X"])
        if x is None:
            raise InputError(f"{path.name}: X is stored in a layout this old anndata file does not describe; open "
                             "it with the anndata that wrote it and save it again with a current one")
        adata = ad.AnnData(X=x, obs=read_legacy_frame(f["obs"]), var=read_legacy_frame(f["var"]))
        for group, target in (("layers", adata.layers), ("obsm", adata.obsm)):
            for key in f.get(group, {}):
                value = read_legacy_matrix(f[group][key])
                if value is not None:
                    target[key] = value
        if isinstance(f.get("raw"), h5py.Group) and "X" in f["raw"] and "var" in f["raw"]:
            raw_x = read_legacy_matrix(f["raw/X"])
            if raw_x is not None:
                adata.raw = ad.AnnData(X=raw_x, obs=adata.obs[[]], var=read_legacy_frame(f["raw/var"]))
    return adata
