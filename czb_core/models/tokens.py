"""Tokenized cells as the engine holds them, and the parallel encoding that makes them.

Cells tokenize to sequences of different lengths, so a runner keeps them flat: one array per token field
(gene ids, values, counts) and `offsets`, where cell i is `[offsets[i], offsets[i + 1])`. `RaggedCells`
gives every such container its length, the lengths of its cells and the flat positions of any rows; a
runner's class adds only its fields and its padding.

`encode_in_parts` is how a tokenizer fills those arrays from a CSR matrix on every CPU: consecutive rows
holding about the same number of stored values go to each thread, each thread writes from where its rows
would start if every stored value became a token (the room a runner states per row), and the parts are
then moved together and the buffers cut to size, so nothing is copied when no value was dropped.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence

import numpy as np


class RaggedCells:
    """Methods of a container whose `offsets` (int64, n_cells + 1) delimit each cell's tokens."""

    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flat positions of the tokens of `rows`, in that order; their new `offsets`), for a `take`."""
        lengths = self.lengths[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        starts = np.repeat(self.offsets[:-1][rows] - offsets[:-1], lengths)
        return np.arange(offsets[-1]) + starts, offsets

    def pad(self, flat_t: np.ndarray, rows: np.ndarray, fill, dtype, width: Optional[int] = None) -> np.ndarray:
        """`flat_t` (one of the container's token fields) of `rows`, a row per cell, padded with `fill` to
        `width` (default: the longest of `rows`) and cut to it."""
        lengths_b = self.lengths[rows]
        width = (int(lengths_b.max()) if len(rows) else 0) if width is None else width
        if not len(flat_t):
            return np.full((len(rows), width), fill, dtype=dtype)
        positions_bl = self.offsets[:-1][rows, None] + np.arange(width)
        valid_bl = np.arange(width) < lengths_b[:, None]
        return np.where(valid_bl, np.take(flat_t, positions_bl, mode="clip"), fill).astype(dtype)


def worker_count() -> int:
    """Threads to encode with: the CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def encode_in_parts(indptr: np.ndarray, room_n: np.ndarray, dtypes: Sequence[np.dtype],
                    encode: Callable[[int, int, int, tuple[np.ndarray, ...]], int]) -> tuple[np.ndarray, ...]:
    """Flat buffers (one per dtype) of all rows, filled by `encode(lo, hi, start, buffers)` on threads.

    `room_n`: the most tokens row i can give; `encode` writes rows `lo:hi` from position `start` and returns
    where it stopped. The buffers come back holding the rows' tokens in row order, cut to their length."""
    workers = worker_count()
    n_rows = len(indptr) - 1
    inner = np.searchsorted(indptr, indptr[-1] * np.arange(1, workers) // workers)
    bounds = np.concatenate([[0], np.unique(inner[(inner > 0) & (inner < n_rows)]), [n_rows]])
    starts = np.concatenate([[0], np.cumsum(room_n)])[bounds]
    buffers = tuple(np.empty(starts[-1], dtype=dtype) for dtype in dtypes)

    def run(part: int) -> int:
        return encode(int(bounds[part]), int(bounds[part + 1]), int(starts[part]), buffers)

    if len(bounds) == 2:
        ends = [run(0)]
    else:
        with ThreadPoolExecutor(len(bounds) - 1) as pool:
            ends = list(pool.map(run, range(len(bounds) - 1)))
    at = ends[0]
    for start, end in zip(starts[1:-1], ends[1:]):
        for buffer in buffers:
            buffer[at : at + end - start] = buffer[start:end]  # numpy copies overlapping ranges safely
        at += end - start
    for buffer in buffers:
        if at < len(buffer):
            buffer.resize(at, refcheck=False)  # in place: nothing else refers to the buffers
    return buffers
