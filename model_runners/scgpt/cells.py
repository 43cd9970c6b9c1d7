"""Tokenized cells in the layout the encoder reads: ragged (gene token, binned value) pairs per cell.

Kept apart from the tokenizer (which needs numba) so the encoder and the GPU suite can build and read
these with numpy alone (`czb_core.models.tokens` holds the ragged layout every runner shares).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from czb_core.models.tokens import RaggedCells


@dataclass(frozen=True)
class TokenizedCells(RaggedCells):
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

    def cell(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(gene tokens, values) of cell `i`."""
        span = slice(self.offsets[i], self.offsets[i + 1])
        return self.genes[span], self.values[span]

    def take(self, rows: np.ndarray) -> "TokenizedCells":
        """The cells `rows`, in that order (e.g. a subset, or a shuffled copy)."""
        rows = np.asarray(rows, dtype=np.int64)
        flat, offsets = self.gather(rows)
        return TokenizedCells(self.genes[flat], self.values[flat], offsets, self.n_genes[rows], self.seed)

    def padded(self, rows: np.ndarray, pad_id: int, pad_value: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(`genes_bl` int64, `values_bl` float32, `lengths_b`) of `rows`, padded to the longest of them."""
        return (self.pad(self.genes, rows, pad_id, np.int64), self.pad(self.values, rows, pad_value, np.float32),
                self.lengths[rows])
