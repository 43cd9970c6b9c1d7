"""Tokenized cells in the layout the encoder reads: ragged (gene token, binned value) pairs per cell.

Kept apart from the tokenizer (which needs numba) so the encoder and the GPU suite can build and read
these with numpy alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenizedCells:
    """Cell i is `genes[offsets[i]:offsets[i + 1]]` with values `values[...]` at the same places: `<cls>`
    (value `pad_value`) first, then its genes in input column order with their bins.

    `n_genes[i]` counts the cell's detected vocabulary genes before sampling (0: nothing to embed);
    `seed` is the seed the random steps (tie breaks, sampling) were drawn with.
    """

    genes: np.ndarray  # int32 token ids
    values: np.ndarray  # float32
    offsets: np.ndarray  # int64, n_cells + 1
    n_genes: np.ndarray  # int64
    seed: int

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def cell(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(gene tokens, values) of cell `i`."""
        span = slice(self.offsets[i], self.offsets[i + 1])
        return self.genes[span], self.values[span]

    def take(self, rows: np.ndarray) -> "TokenizedCells":
        """The cells `rows`, in that order (e.g. a subset, or a shuffled copy)."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        positions = np.arange(offsets[-1]) + np.repeat(self.offsets[:-1][rows] - offsets[:-1], lengths)
        return TokenizedCells(self.genes[positions], self.values[positions], offsets, self.n_genes[rows], self.seed)

    def padded(self, rows: np.ndarray, pad_id: int, pad_value: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(`genes_bl` int64, `values_bl` float32, `lengths_b`) of `rows`, padded to the longest of them."""
        lengths_b = self.lengths[rows]
        width = int(lengths_b.max()) if len(rows) else 0
        positions_bl = self.offsets[:-1][rows, None] + np.arange(width)
        valid_bl = np.arange(width) < lengths_b[:, None]
        genes_bl = np.where(valid_bl, np.take(self.genes, positions_bl, mode="clip"), pad_id).astype(np.int64)
        values_bl = np.where(valid_bl, np.take(self.values, positions_bl, mode="clip"), pad_value).astype(np.float32)
        return genes_bl, values_bl, lengths_b
