"""Tokenized cells, ragged, padded per batch: numpy only (the GPU suite builds them on a bare python)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenizedCells:
    """Ragged gene tokens and clipped counts of n cells, plus their aux tokens (`aux_na`)."""

    tokens_t: np.ndarray  # int64, every cell's tokens one after another
    counts_t: np.ndarray  # float32, the clipped count of each token
    offsets: np.ndarray  # int64, n + 1: cell i is [offsets[i], offsets[i + 1])
    aux_na: np.ndarray  # int64, n x aux columns

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def cell(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.tokens_t[self.offsets[i]:self.offsets[i + 1]], self.counts_t[self.offsets[i]:self.offsets[i + 1]]

    def padded(self, rows: np.ndarray, width: int, pad_token: int) -> tuple[np.ndarray, np.ndarray]:
        """(`tokens_bw` padded with `pad_token`, `counts_bw` padded with 0) of `rows`, cut to `width`."""
        lengths_b = np.minimum(self.lengths[rows], width)
        cell_k = np.repeat(np.arange(len(rows)), lengths_b)
        position_k = np.arange(len(cell_k)) - np.repeat(np.cumsum(lengths_b) - lengths_b, lengths_b)
        source_k = self.offsets[rows][cell_k] + position_k
        tokens_bw = np.full((len(rows), width), pad_token, dtype=np.int64)
        counts_bw = np.zeros((len(rows), width), dtype=np.float32)
        tokens_bw[cell_k, position_k] = self.tokens_t[source_k]
        counts_bw[cell_k, position_k] = self.counts_t[source_k]
        return tokens_bw, counts_bw
