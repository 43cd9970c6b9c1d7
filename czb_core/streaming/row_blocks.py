"""Row blocks of one matrix of a backed `.h5ad` (HDF5) or `.zarr` store, as CSR, read from disk.

AnnData stores a sparse matrix as a group (`data`, `indices`, `indptr`, attrs `encoding-type` and
`shape`) and a dense one as an array, the same way in HDF5 and zarr, so one reader serves both. Rows
of a CSR group are contiguous slices of `data` and `indices`; a dense array is read by row slices. A CSC
group has no cheap row access: `to_row_chunked` converts it once into a CSR copy on disk, reading it as
many times as there are row groups that fit the memory budget; `open_row_blocks` keeps that copy in the
workspace, so a run converts a file once.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import h5py
import numpy as np
import scipy.sparse as sp

from czb_core.config import get_settings
from czb_core.errors import InputError
from czb_core.io.atomic import atomic_path
from czb_core.progress import ProgressCallback, no_progress

DEFAULT_CHUNK_ROWS = 10_000
CONVERT_BUDGET_NNZ = 50_000_000  # non-zeros held at once while converting CSC to rows (~600 MB)


def open_store(path: str | Path):
    """The root group of an `.h5ad` (h5py, read-only) or a `.zarr` directory (zarr, read-only)."""
    path = Path(path)
    if path.suffix == ".zarr" or (path.is_dir() and ((path / "zarr.json").exists() or (path / ".zgroup").exists())):
        import zarr

        return zarr.open_group(str(path), mode="r")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path.name}: cannot be opened as HDF5 ({exc})") from None


def encoding_of(node) -> str:
    """csr_matrix, csc_matrix or array (a dense dataset)."""
    if hasattr(node, "shape") and not hasattr(node, "keys"):
        return "array"
    encoding = node.attrs.get("encoding-type", node.attrs.get("h5sparse_format", ""))
    encoding = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
    if encoding in ("csr_matrix", "csr"):
        return "csr_matrix"
    if encoding in ("csc_matrix", "csc"):
        return "csc_matrix"
    raise InputError(f"the matrix is stored as {encoding or 'an unknown encoding'!r}; expected CSR, CSC or dense")


@dataclass
class RowBlocks:
    """`x_ng` of rows [lo, hi) of the matrix at `location`, block after block.

    Holds the store open; use as a context manager or call `close`. `indptr` of a CSR matrix (n + 1
    integers) is read once; everything else is read per block.
    """

    path: Path
    location: str = "X"
    chunk_rows: int = DEFAULT_CHUNK_ROWS

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._store = open_store(self.path)
        if self.location not in self._store:
            self.close()
            raise InputError(f"{self.path.name} has no matrix at {self.location!r}")
        self._node = self._store[self.location]
        self.encoding = encoding_of(self._node)
        if self.encoding == "array":
            self.shape = tuple(int(s) for s in self._node.shape)
            self._indptr = None
        else:
            self.shape = tuple(int(s) for s in self._node.attrs["shape"])
            csr = self.encoding == "csr_matrix"
            self._indptr = np.asarray(self._node["indptr"][:], dtype=np.int64) if csr else None

    @property
    def n_cells(self) -> int:
        return self.shape[0]

    @property
    def n_genes(self) -> int:
        return self.shape[1]

    @property
    def needs_conversion(self) -> bool:
        return self.encoding == "csc_matrix"

    def nnz(self) -> Optional[int]:
        return None if self._indptr is None else int(self._indptr[-1])

    def read(self, lo: int, hi: int) -> sp.csr_matrix:
        if self.encoding == "csc_matrix":
            raise InputError(f"{self.path.name}: {self.location} is stored by columns (CSC); convert it once with "
                             "to_row_chunked (czb run --stream does this) before reading rows")
        if self.encoding == "array":
            return sp.csr_matrix(np.asarray(self._node[lo:hi]))
        start, stop = int(self._indptr[lo]), int(self._indptr[hi])
        data = np.asarray(self._node["data"][start:stop])
        indices = np.asarray(self._node["indices"][start:stop], dtype=np.int64)
        return sp.csr_matrix((data, indices, self._indptr[lo:hi + 1] - start), shape=(hi - lo, self.n_genes))

    def __iter__(self) -> Iterator[tuple[int, int, sp.csr_matrix]]:
        for lo in range(0, self.n_cells, self.chunk_rows):
            hi = min(lo + self.chunk_rows, self.n_cells)
            yield lo, hi, self.read(lo, hi)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._store.close()

    def __enter__(self) -> "RowBlocks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class MemoryBlocks:
    """The RowBlocks interface over a matrix already in memory, so one streamed algorithm serves both."""

    x_ng: sp.csr_matrix
    chunk_rows: int = DEFAULT_CHUNK_ROWS

    @property
    def n_cells(self) -> int:
        return self.x_ng.shape[0]

    @property
    def n_genes(self) -> int:
        return self.x_ng.shape[1]

    def __iter__(self) -> Iterator[tuple[int, int, sp.csr_matrix]]:
        for lo in range(0, self.n_cells, self.chunk_rows):
            hi = min(lo + self.chunk_rows, self.n_cells)
            yield lo, hi, self.x_ng[lo:hi]


def to_row_chunked(path: str | Path, location: str, out_path: str | Path, *,
                   budget_nnz: int = CONVERT_BUDGET_NNZ, progress: ProgressCallback = no_progress) -> Path:
    """Write the CSC matrix at `location` as a CSR matrix at `X` of a new HDF5 file `out_path`.

    One pass counts each row's non-zeros; then rows are taken in groups of at most `budget_nnz`
    non-zeros, and for each group the columns are read block by block and the group's entries kept,
    so memory holds one group, never the matrix.
    """
    store = open_store(path)
    try:
        node = store[location]
        if encoding_of(node) != "csc_matrix":
            raise InputError(f"{location} is not stored by columns; it needs no conversion")
        n_rows, n_cols = (int(s) for s in node.attrs["shape"])
        col_ptr = np.asarray(node["indptr"][:], dtype=np.int64)
        col_block = max(1, int(n_cols * min(1.0, budget_nnz / max(1, col_ptr[-1]))))
        row_nnz = np.zeros(n_rows, dtype=np.int64)
        for c0 in range(0, n_cols, col_block):
            c1 = min(c0 + col_block, n_cols)
            row_nnz += np.bincount(np.asarray(node["indices"][col_ptr[c0]:col_ptr[c1]]), minlength=n_rows)
        row_ptr = np.concatenate([[0], np.cumsum(row_nnz)])
        groups = _row_groups(row_ptr, budget_nnz)
        dtype = node["data"].dtype
        with h5py.File(out_path, "w") as out:
            group = out.create_group("X")
            group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n_rows, n_cols)})
            data_out = group.create_dataset("data", shape=(int(row_ptr[-1]),), dtype=dtype)
            indices_out = group.create_dataset("indices", shape=(int(row_ptr[-1]),), dtype=np.int32)
            group.create_dataset("indptr", data=row_ptr)
            for k, (r0, r1) in enumerate(groups):
                progress("convert to rows", k, len(groups))
                part = _csc_rows(node, col_ptr, col_block, n_cols, r0, r1)
                data_out[row_ptr[r0]:row_ptr[r1]] = part.data
                indices_out[row_ptr[r0]:row_ptr[r1]] = part.indices
            progress("convert to rows", len(groups), len(groups))
    finally:
        with contextlib.suppress(Exception):
            store.close()
    return Path(out_path)


def open_row_blocks(data_path: str | Path, location: str, progress: ProgressCallback) -> RowBlocks:
    """Row blocks of the matrix; a matrix stored by columns is first converted once into a row copy kept
    in the workspace (keyed by the file's path, size and modification time)."""
    blocks = RowBlocks(Path(data_path), location)
    if not blocks.needs_conversion:
        return blocks
    blocks.close()
    stat = Path(data_path).stat()
    key = hashlib.sha256(f"{Path(data_path).resolve()}:{location}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    converted = get_settings().workspace / "row_chunked" / f"{key.hexdigest()[:32]}.h5"
    if not converted.exists():
        converted.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(converted) as tmp:
            to_row_chunked(data_path, location, tmp, progress=progress)
    return RowBlocks(converted, "X")


def _row_groups(row_ptr: np.ndarray, budget_nnz: int) -> list[tuple[int, int]]:
    """Consecutive row ranges each holding at most `budget_nnz` non-zeros (a bigger row is its own range)."""
    groups, start, n_rows = [], 0, len(row_ptr) - 1
    while start < n_rows:
        stop = int(np.searchsorted(row_ptr, row_ptr[start] + budget_nnz, side="right")) - 1
        stop = min(max(stop, start + 1), n_rows)
        groups.append((start, stop))
        start = stop
    return groups


def _csc_rows(node, col_ptr: np.ndarray, col_block: int, n_cols: int, r0: int, r1: int) -> sp.csr_matrix:
    """Rows [r0, r1) of a CSC group, as CSR with sorted indices, read column block by column block."""
    rows, cols, values = [], [], []
    for c0 in range(0, n_cols, col_block):
        c1 = min(c0 + col_block, n_cols)
        start, stop = col_ptr[c0], col_ptr[c1]
        indices = np.asarray(node["indices"][start:stop], dtype=np.int64)
        keep = (indices >= r0) & (indices < r1)
        col_of = np.repeat(np.arange(c0, c1), np.diff(col_ptr[c0:c1 + 1]))
        rows.append(indices[keep] - r0)
        cols.append(col_of[keep])
        values.append(np.asarray(node["data"][start:stop])[keep])
    part = sp.coo_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(r1 - r0, n_cols)).tocsr()
    part.sort_indices()
    return part
