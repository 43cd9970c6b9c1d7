"""A user's dataset history: their datasets, each with the versions that fixes made of it beneath it.

Datasets persist in the workspace across sessions, so a new browser session lists them to reopen instead
of asking for the file again. The list must stay cheap for many large files: a file's shape comes from its
HDF5 metadata (no obs or var frame is read), and nothing else is opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import h5py

from czb_core.service.workspace import DatasetRecord


@dataclass(frozen=True)
class HistoryEntry:
    record: DatasetRecord
    depth: int  # 0 for a dataset added by the user, 1 for a version made from it by a fix, ...


def dataset_shape(path: Path) -> Optional[tuple[int, int]]:
    """(cells, genes) from the file's metadata: an h5ad's X (a dense dataset's shape or a sparse group's
    `shape` attribute), a 10x .h5's `matrix/shape` (genes x cells). None when the file is gone or unreadable:
    the list shows the dataset anyway, and opening it gives the reason."""
    try:
        with h5py.File(path, "r") as f:
            if "matrix" in f and "shape" in f["matrix"]:
                n_genes, n_cells = (int(v) for v in f["matrix"]["shape"][()])
                return n_cells, n_genes
            x = f["X"]
            shape = x.shape if isinstance(x, h5py.Dataset) else x.attrs["shape"]
            return int(shape[0]), int(shape[1])
    except (OSError, KeyError, ValueError, TypeError):
        return None


def version_tree(records: Iterable[DatasetRecord]) -> list[HistoryEntry]:
    """Datasets newest first, each followed by its versions (newest first, nested as deep as fixes went).

    A version whose parent is not in `records` (deleted, or another user's) stands at the top level."""
    records = list(records)
    present = {(r.owner, r.sha256) for r in records}  # a parent is the same owner's record of that content
    children: dict[Optional[tuple[str, str]], list[DatasetRecord]] = {}
    for record in records:
        parent = (record.owner, record.parent_sha256)
        children.setdefault(parent if parent in present else None, []).append(record)
    tree: list[HistoryEntry] = []
    seen: set[str] = set()

    def visit(parent: Optional[tuple[str, str]], depth: int) -> None:
        for record in sorted(children.get(parent, []), key=lambda r: r.created_at, reverse=True):
            if record.id in seen:  # no record twice, whatever the parent links say
                continue
            seen.add(record.id)
            tree.append(HistoryEntry(record, depth))
            visit((record.owner, record.sha256), depth + 1)

    visit(None, 0)
    return tree

