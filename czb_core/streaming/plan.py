"""In memory or streamed: what reading a dataset whole would cost, against the memory that is free.

Reading a sparse matrix whole holds its values and column indices (as stored), a CSR copy of them for
the runner, and the runner's own working copy (a normalised one, a dense block): about three times the
stored arrays. Past `MEMORY_SHARE` of the memory available now, a run streams (when its model can) or is
refused before anything is read, instead of being killed by the OS halfway.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from czb_core.streaming.row_blocks import encoding_of, open_store

COPIES_IN_MEMORY = 3
MEMORY_SHARE = 0.7
IN_MEMORY, STREAMED = "in memory", "streamed"


@dataclass(frozen=True)
class ReadingPlan:
    mode: str
    needed_bytes: int
    available_bytes: int

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= MEMORY_SHARE * self.available_bytes

    def describe(self) -> str:
        return (f"{self.mode}: reading it whole needs ~{self.needed_bytes / 2**30:,.1f} GiB, "
                f"{self.available_bytes / 2**30:,.1f} GiB of memory is available")


def in_memory_bytes(path: str | Path, location: str = "X") -> int:
    """About what holding the matrix at `location` in memory for a run takes (see the module docstring)."""
    store = open_store(path)
    try:
        node = store[location]
        if encoding_of(node) == "array":
            stored = int(np.prod(node.shape)) * node.dtype.itemsize
        else:
            stored = sum(int(np.prod(node[name].shape)) * node[name].dtype.itemsize
                         for name in ("data", "indices", "indptr"))
        return COPIES_IN_MEMORY * stored
    finally:
        with contextlib.suppress(Exception):
            store.close()


def plan_reading(path: str | Path, location: str = "X", available_bytes: int | None = None) -> ReadingPlan:
    """`streamed` when reading whole would take more than `MEMORY_SHARE` of the available memory."""
    needed = in_memory_bytes(path, location)
    available = psutil.virtual_memory().available if available_bytes is None else available_bytes
    mode = IN_MEMORY if needed <= MEMORY_SHARE * available else STREAMED
    return ReadingPlan(mode, needed, available)
