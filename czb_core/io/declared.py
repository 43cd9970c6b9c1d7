"""What a file's header says it holds, checked before a byte of its matrices is read.

An HDF5 file states every array's shape, type and stored size in metadata, so a file that claims 10^12
cells, whose arrays disagree on the number of cells, whose expression matrix is not a 2-D numeric matrix,
or whose few compressed kilobytes expand to gigabytes (a decompression bomb, in one array or spread over
many) is refused in milliseconds, before anndata allocates anything for it. The ceiling on cells is
`CZB_MAX_CELLS` (default 20 million). What the arrays of a sparse matrix hold is checked by `structure`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import h5py
import numpy as np

from czb_core.config import get_settings
from czb_core.errors import InputError

MAX_GENES = 2_000_000  # more features than any genome's genes and peaks; beyond it the file is malformed
MAX_EXPANSION = 1_000  # expanded / stored bytes above which an array is a bomb (real counts compress < 50x)
BOMB_FLOOR_BYTES = 1 << 30  # arrays expanding to less than this are harmless whatever their ratio
MAX_UNS_BYTES = 1 << 30  # uns is read whole with the file; annotations and analysis results take megabytes
MIN_CELLS = 2  # an embedding, a UMAP and every metric compare cells with each other
COUNT_LOCATIONS = ("X", "layers/counts", "raw/X")  # the matrices a model may read expression from
NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: what numpy can sum and a model can embed
ENCODING_VERSIONS = {"csr_matrix": "0.1.0", "csc_matrix": "0.1.0", "array": "0.2.0"}  # what anndata reads


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
    index = _text(node.attrs.get("_index", "_index"))
    return length(node[index]) if index is not None and index in node else None


def _text(value) -> Optional[str]:
    """An attribute that should be a string, decoded; None when it is something else (an array, a number)."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None


def _shown(value) -> str:
    """An attribute's value as a message quotes it: a string in quotes, anything else as plain numbers."""
    text = _text(value)
    return repr(text) if text is not None else str(np.asarray(value).tolist())


def length(node) -> Optional[int]:
    """Entries of a 1-D dataset; None for anything else (a group, a scalar, a table)."""
    return int(node.shape[0]) if isinstance(node, h5py.Dataset) and node.ndim == 1 else None


def sparse_format(node) -> Optional[str]:
    """csr or csc as a sparse group's `encoding-type` (or the old `h5sparse_format`) says; None otherwise."""
    if not isinstance(node, h5py.Group):
        return None
    encoding = _text(node.attrs.get("encoding-type", node.attrs.get("h5sparse_format")))
    return {"csr_matrix": "csr", "csc_matrix": "csc", "csr": "csr", "csc": "csc"}.get(encoding)


def _type_name(dtype: np.dtype) -> str:
    """A dataset's type as a user knows it: text for strings (numpy calls them object or bytes)."""
    return "text" if h5py.check_string_dtype(dtype) is not None or dtype.kind in "SU" else f"{dtype} values"


def _declared_shape(value) -> Optional[tuple[int, int]]:
    """Two whole numbers, as a sparse group's `shape` attribute must hold; None for anything else."""
    if value is None:
        return None
    shape = np.asarray(value)
    if shape.shape != (2,) or shape.dtype.kind not in "iu":
        return None
    return int(shape[0]), int(shape[1])


def matrix_shape(node, location: str, name: str) -> Optional[tuple[int, int]]:
    """(rows, columns) of a 2-D dense dataset or a CSR/CSC group as declared; None for anything else (a
    dataframe in obsm, say). A sparse group whose shape, arrays or their types do not fit each other is
    refused: reading it would fail, or worse, index past its arrays."""
    _check_encoding_version(node, location, name)
    if isinstance(node, h5py.Dataset):
        return (int(node.shape[0]), int(node.shape[1])) if node.ndim == 2 else None
    fmt = sparse_format(node)
    if fmt is None:
        return None
    declared = _declared_shape(node.attrs.get("shape", node.attrs.get("h5sparse_shape")))
    if declared is None:
        raise InputError(f"{name}: the sparse matrix {location} has no shape of two whole numbers (its shape "
                         "attribute is missing or malformed); the file is corrupt: write it again with anndata")
    rows, cols = declared
    if rows < 0 or cols < 0:
        raise InputError(f"{name}: {location} declares a negative shape {rows} x {cols}; the file is corrupt")
    arrays = {part: node.get(part) for part in ("indptr", "indices", "data")}
    missing = [part for part, array in arrays.items() if length(array) is None]
    if missing:
        raise InputError(f"{name}: the sparse matrix {location} has no 1-D {', '.join(missing)} array; the file "
                         "is corrupt: write it again with anndata")
    for part, allowed in (("indptr", "iu"), ("indices", "iu"), ("data", NUMERIC_KINDS)):
        dtype = arrays[part].dtype
        if dtype.kind not in allowed:
            what = "whole numbers" if allowed == "iu" else "numbers"
            raise InputError(f"{name}: {location}/{part} holds {_type_name(dtype)}, not {what}; the file is corrupt or "
                             "holds something other than expression values: write it again with anndata")
    major = rows if fmt == "csr" else cols
    n_ptr, n_idx, n_data = (length(array) for array in arrays.values())
    if n_ptr != major + 1 or n_data != n_idx:
        raise InputError(
            f"{name}: {location} declares {rows:,} x {cols:,} but holds {n_ptr - 1:,} "
            f"{'rows' if fmt == 'csr' else 'columns'} and {n_data:,} values for {n_idx:,} positions; the header does "
            "not match the arrays, so the file is corrupt or was edited by hand: write it again with anndata"
        )
    return rows, cols


def _check_encoding_version(node, location: str, name: str) -> None:
    """A matrix marked with an encoding must carry the version of it anndata reads, and a version needs an
    encoding, or reading it fails. (Files of anndata < 0.7 carry neither, and are read apart: `legacy`.)"""
    encoding, version = node.attrs.get("encoding-type"), node.attrs.get("encoding-version")
    if encoding is None and version is not None:
        raise InputError(f"{name}: {location} has an encoding-version but no encoding-type, so anndata cannot tell "
                         "what it holds; the file was edited by hand or is corrupt: write it again with anndata")
    encoding, version = _text(encoding), _text(version)
    fits_node = (encoding == "array") == isinstance(node, h5py.Dataset)  # else another check names the misfit
    if encoding in ENCODING_VERSIONS and fits_node and version != ENCODING_VERSIONS[encoding]:
        raise InputError(
            f"{name}: {location} is encoded as {encoding} version {version or '(none)'}, but anndata reads version "
            f"{ENCODING_VERSIONS[encoding]}; the file was edited by hand or written by an anndata this server does "
            "not know: write it again with anndata"
        )


def count_matrix_shape(node, location: str, name: str) -> tuple[int, int]:
    """(rows, columns) of a matrix a model may read counts from: a 2-D numeric dataset or a CSR/CSC group,
    within the server's ceilings. Anything else is refused by name: its rows could not be read as cells."""
    if isinstance(node, h5py.Dataset):
        if node.ndim != 2:
            raise InputError(
                f"{name}: {location} is a {node.ndim}-D array of shape {tuple(int(v) for v in node.shape)}, but an "
                "expression matrix is 2-D, one row per cell and one column per gene; the file is malformed: store "
                f"a cells x genes matrix in {location} and save it again"
            )
        if node.dtype.kind not in NUMERIC_KINDS:
            raise InputError(f"{name}: {location} holds {_type_name(node.dtype)}, not numbers; store the expression "
                             f"values (counts) in {location} and save the file again")
        encoding = node.attrs.get("encoding-type")
        if encoding is not None and _text(encoding) != "array":
            raise InputError(f"{name}: {location} is a dense array marked as {_shown(encoding)} (its encoding-type), "
                             "so anndata would read it as something else; the file is corrupt or was edited by hand: "
                             "write it again with anndata")
    shape = matrix_shape(node, location, name)
    if shape is None:
        encoding = node.attrs.get("encoding-type")
        raise InputError(
            f"{name}: {location} is stored as {'no encoding' if encoding is None else _shown(encoding)}, "
            "neither a dense array nor a CSR/CSC sparse matrix; the "
            "file is malformed or was written by a tool anndata does not know: write it again with anndata"
        )
    check_ceilings(*shape, name)
    return shape


@dataclass(frozen=True)
class Array:
    """One dataset of a file, as its metadata describes it."""

    path: str
    declared: float  # bytes once read (a float: declared shapes can be huge)
    stored: Optional[int]  # bytes on disk, asked only of a chunked dataset declaring BOMB_FLOOR_BYTES or more


def list_arrays(f: h5py.File, name: str) -> list[Array]:
    """Every dataset of the file, from one visit of its metadata, after refusing links to other files
    (external links, virtual datasets): reading through one would read a file of the server's that the
    uploader chose, another user's dataset say. Follows no link on the way. (The visits return what they
    found rather than raise: h5py garbles an exception raised inside a link visit.)"""
    external = f.visititems_links(lambda path, link: (path, link) if isinstance(link, h5py.ExternalLink) else None)
    if external is not None:
        path, link = external
        raise InputError(f"{name}: {path} links to {link.path} in another file ({link.filename}); a dataset must be "
                         "one file: save it again with anndata, which writes the data itself")
    arrays: list[Array] = []

    def visit(path: str, node) -> Optional[str]:
        if not isinstance(node, h5py.Dataset):
            return None
        if node.is_virtual:
            return path
        declared = float(np.prod(node.shape, dtype=np.float64)) * node.dtype.itemsize
        big_chunked = node.chunks is not None and declared >= BOMB_FLOOR_BYTES
        arrays.append(Array(path, declared, node.id.get_storage_size() if big_chunked else None))
        return None

    virtual = f.visititems(visit)
    if virtual is not None:
        raise InputError(f"{name}: {virtual} is a virtual dataset, read from other files; a dataset must be one "
                         "file: save it again with anndata, which writes the data itself")
    return arrays


def check_expansion(arrays: list[Array], on_disk: int, name: str) -> None:
    """Refuse a file whose arrays declare far more than it stores: one compressed array expanding to gigabytes
    from a sliver of stored bytes, or many arrays each under the floor that together expand to gigabytes from
    the file's `on_disk` bytes (each array alone would pass). uns, read whole with every full read of the file
    and of no use to a model, is also held to `MAX_UNS_BYTES` in all. Metadata only."""
    for array in arrays:
        if array.stored is not None and array.declared > MAX_EXPANSION * max(array.stored, 1):
            raise InputError(
                f"{name}: the array {array.path} expands from {_size(array.stored)} on disk to "
                f"{_size(array.declared)} in memory ({array.declared / max(array.stored, 1):,.0f} times), far more "
                "than real expression data compresses; this is a decompression bomb or a placeholder of zeros: drop "
                "that array and save the file again"
            )
    by_group: dict[str, list[Array]] = {}
    for array in arrays:
        by_group.setdefault(array.path.split("/", 1)[0], []).append(array)
    declared = {group: sum(a.declared for a in members) for group, members in by_group.items()}
    total = sum(declared.values())
    if total >= BOMB_FLOOR_BYTES and total > MAX_EXPANSION * max(on_disk, 1):
        top = max(declared, key=declared.get)
        raise InputError(
            f"{name}: its arrays declare {_size(total)} in all from a file of {_size(on_disk)} "
            f"({total / max(on_disk, 1):,.0f} times), far more than real data compresses, though no one array does; "
            f"{top} alone declares {_size(declared[top])} in {len(by_group[top]):,} arrays: this is a decompression "
            "bomb or placeholders of zeros, not data: remove them and save the file again"
        )
    if declared.get("uns", 0) > MAX_UNS_BYTES:
        raise InputError(
            f"{name}: uns declares {_size(declared['uns'])} in {len(by_group['uns']):,} arrays; uns holds unstructured "
            f"annotations, read whole with the file, and more than {_size(MAX_UNS_BYTES)} there is not annotations: "
            "drop the big entries (del adata.uns[key]) and save the file again"
        )


def _size(n_bytes: float) -> str:
    units = ("bytes", "KB", "MB", "GB", "TB", "PB")
    power = 0
    while n_bytes >= 1024 and power < len(units) - 1:
        n_bytes, power = n_bytes / 1024, power + 1
    return f"{n_bytes:,.0f} bytes" if power == 0 else f"{n_bytes:,.1f} {units[power]}"


def declared_h5ad_shape(f: h5py.File, name: str) -> Optional[tuple[int, int]]:
    """(cells, genes) of an h5ad from its obs and var indexes, with X, every layer, obsm, obsp, varm, varp
    and raw/X checked against them; None when the file does not say (no obs or var). X, `layers/counts` and raw/X
    must be matrices whose rows can be read as cells (`count_matrix_shape`) whether obs and var say or not."""
    n_obs = _frame_length(f["obs"]) if "obs" in f else None
    n_vars = _frame_length(f["var"]) if "var" in f else None
    if n_obs is not None and n_vars is not None:
        check_ceilings(n_obs, n_vars, name)
    shapes = {location: count_matrix_shape(f[location], location, name)
              for location in COUNT_LOCATIONS if present(f, location)}
    if n_obs is None or n_vars is None:
        return None
    cells, genes = f"obs has {n_obs:,} cells", f"var has {n_vars:,} genes"
    both = f"{cells} and var {n_vars:,} genes"
    expected = {"X": (n_obs, n_vars, both)} if "X" in f else {}
    per_group = {"layers": (n_obs, n_vars, both), "obsm": (n_obs, None, cells), "obsp": (n_obs, n_obs, cells),
                 "varm": (n_vars, None, genes), "varp": (n_vars, n_vars, genes)}
    for group, want in per_group.items():
        if isinstance(f.get(group), h5py.Group):
            expected.update({f"{group}/{k}": want for k in f[group]})
    if present(f, "raw/X"):
        n_raw = _frame_length(f["raw/var"]) if present(f, "raw/var") else None
        expected["raw/X"] = (n_obs, n_raw, cells if n_raw is None else f"{cells} and raw/var {n_raw:,} genes")
    for location, (rows, cols, basis) in expected.items():
        shape = shapes[location] if location in shapes else matrix_shape(f[location], location, name)
        if shape is None:
            continue
        if shape[0] != rows or (cols is not None and shape[1] != cols):
            raise InputError(
                f"{name}: {location} declares {shape[0]:,} x {shape[1]:,} but {basis}; the parts of the file "
                "disagree, so it is corrupt or was edited by hand: write it again with anndata"
            )
    return n_obs, n_vars


def present(f: h5py.File, location: str) -> bool:
    """Whether `location` (at most one level deep) names a node inside a group, not a path through an array."""
    parent, _, key = location.rpartition("/")
    return key in f if not parent else isinstance(f.get(parent), h5py.Group) and key in f[parent]


def declared_10x_shape(m: h5py.Group, name: str) -> tuple[int, int]:
    """(cells, genes) of a CellRanger matrix group (genes x cells in CSC), checked against its arrays."""
    shape = m.get("shape")
    if not isinstance(shape, h5py.Dataset) or shape.shape != (2,) or shape.dtype.kind not in "iu":
        raise InputError(f"{name}: the 10x matrix has no shape of two whole numbers; the file is corrupt or "
                         "incomplete, export it from CellRanger again")
    n_genes, n_cells = (int(v) for v in shape[()])
    if n_genes < 0 or n_cells < 0:
        raise InputError(f"{name}: the 10x matrix declares a negative shape {n_genes} x {n_cells}; the file is "
                         "corrupt, export it from CellRanger again")
    check_ceilings(n_cells, n_genes, name)
    ids, names = ("features/id", "features/name") if "features" in m else ("genes", "gene_names")  # 3+, else 2
    parts = {"barcodes": (n_cells, "cells"), "indptr": (n_cells + 1, "cells"), ids: (n_genes, "genes"),
             names: (n_genes, "genes")}
    for part, (want, what) in parts.items():
        got = length(m[part]) if part in m else None
        if got != want:
            shown = "no" if got is None else f"{got:,}"
            raise InputError(f"{name}: the 10x matrix declares {n_genes:,} genes x {n_cells:,} cells but has {shown} "
                             f"{part} for its {what}; the file is corrupt or incomplete, export it from CellRanger "
                             "again")
    n_data = length(m["data"]) if "data" in m else None
    if n_data is None or n_data != (length(m["indices"]) if "indices" in m else None):
        raise InputError(f"{name}: the 10x matrix's data and indices are missing or differ in length; the file is "
                         "corrupt or incomplete, export it from CellRanger again")
    for part, allowed in (("indptr", "iu"), ("indices", "iu"), ("data", NUMERIC_KINDS)):
        if m[part].dtype.kind not in allowed:
            raise InputError(f"{name}: the 10x matrix's {part} holds {_type_name(m[part].dtype)}, not "
                             f"{'whole numbers' if allowed == 'iu' else 'counts'}; the file is corrupt, export it "
                             "from CellRanger again")
    return n_cells, n_genes
