"""Tokenized cells, ragged, padded per batch: numpy only (the GPU suite builds them on a bare python)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from czb_core.models.tokens import RaggedCells


@dataclass(frozen=True)
class TokenizedCells(RaggedCells):
    """Ragged gene tokens and clipped counts of n cells, plus their aux tokens (`aux_na`)."""

    tokens_t: np.ndarray  # int64, every cell's tokens one after another
    counts_t: np.ndarray  # float32, the clipped count of each token
    offsets: np.ndarray  # int64, n + 1: cell i is [offsets[i], offsets[i + 1])
    aux_na: np.ndarray  # int64, n x aux columns

    def cell(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.tokens_t[self.offsets[i]:self.offsets[i + 1]], self.counts_t[self.offsets[i]:self.offsets[i + 1]]

    def padded(self, rows: np.ndarray, width: int, pad_token: int) -> tuple[np.ndarray, np.ndarray]:
        """(`tokens_bw` padded with `pad_token`, `counts_bw` padded with 0) of `rows`, cut to `width`."""
        return (self.pad(self.tokens_t, rows, pad_token, np.int64, width),
                self.pad(self.counts_t, rows, 0.0, np.float32, width))
