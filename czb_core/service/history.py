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
import numpy as np

from czb_core.io.reading import tenx_matrix_group
from czb_core.service.workspace import DatasetRecord


@dataclass(frozen=True)
class HistoryEntry:
    record: DatasetRecord
    depth: int  # 0 for a dataset added by the user, 1 for a version made from it by a fix, ...


def dataset_shape(path: Path) -> Optional[tuple[int, int]]:
    """(cells, genes) from the file's metadata: an h5ad's X (a dense dataset's shape or a sparse group's
    `shape` attribute), a 10x .h5's `shape` (genes x cells, in `matrix` or CellRanger 2's genome group).
    None when the file is gone, unreadable or says no two whole numbers there (a 1-D X, say): the list shows
    the dataset anyway, and opening it gives the reason."""
    try:
        with h5py.File(path, "r") as f:
            matrix = f["matrix"] if isinstance(f.get("matrix"), h5py.Group) else tenx_matrix_group(f, path.name)
            if matrix is not None:
                shape = _two_counts(matrix["shape"][()])
                return None if shape is None else (shape[1], shape[0])
            x = f["X"]
            return _two_counts(x.shape if isinstance(x, h5py.Dataset) else x.attrs.get("shape"))
    except (OSError, KeyError, ValueError, TypeError):  # InputError is a ValueError: two genomes in a v2 file
        return None


def _two_counts(value) -> Optional[tuple[int, int]]:
    """Two non-negative whole numbers, or None for any other value a malformed file may hold."""
    counts = np.asarray(value) if value is not None else np.zeros(0)
    if counts.shape != (2,) or counts.dtype.kind not in "iu" or (counts < 0).any():
        return None
    return int(counts[0]), int(counts[1])


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

