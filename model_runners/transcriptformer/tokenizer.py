"""Cells to TranscriptFormer inputs, vectorised over the sparse matrix.

The encoding (the authors' inference defaults): genes outside the vocabulary are dropped; each cell's
expressed genes come first, in the dataset's column order, and its unexpressed genes become `[PAD]`;
the sequence is cut to `seq_len` genes; counts are clipped to [0, clip_counts]. Since unexpressed
genes are padding, a cell is just its first `seq_len` expressed vocabulary genes, stored ragged here
(`tokens_t`, `counts_t`, `offsets`) and padded per batch. Each cell also gets one aux token per aux
column (the assay): its obs value looked up in that column's vocabulary, `unknown` when the value is
missing or unlisted (a missing column reads as missing values).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from model_runners.transcriptformer.cells import TokenizedCells
from model_runners.transcriptformer.files import UNKNOWN


def gene_tokens(genes_g: Sequence[str], token_ids: Mapping[str, int], n_specials: int) -> np.ndarray:
    """Token of each dataset gene, -1 when not a vocabulary gene (a column named like a special token is
    not a gene)."""
    return np.fromiter((t if (t := token_ids.get(str(g), -1)) >= n_specials else -1 for g in genes_g),
                       dtype=np.int64, count=len(genes_g))


def tokenize_genes(x_ng: sp.csr_matrix, token_g: np.ndarray, seq_len: int, clip_counts: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens_t, counts_t, offsets): per cell its first `seq_len` expressed vocabulary genes in column
    order, with counts clipped to [0, clip_counts]."""
    in_vocab = np.flatnonzero(token_g >= 0)
    x = sp.csr_matrix(x_ng[:, in_vocab], copy=True)  # column selection keeps column order
    x.eliminate_zeros()  # a stored 0 is not an expressed gene
    x.sort_indices()
    n_expressed_n = np.diff(x.indptr)
    position_e = np.arange(x.nnz) - np.repeat(x.indptr[:-1], n_expressed_n)
    kept_e = position_e < seq_len
    tokens_t = token_g[in_vocab][x.indices[kept_e]].astype(np.int64)
    counts_t = np.clip(x.data[kept_e].astype(np.float32), 0, clip_counts)
    offsets = np.concatenate([[0], np.cumsum(np.minimum(n_expressed_n, seq_len))]).astype(np.int64)
    return tokens_t, counts_t, offsets


def aux_tokens(obs: pd.DataFrame, vocabs: Mapping[str, Mapping[str, int]]) -> np.ndarray:
    """`aux_na`: per aux column, each cell's value token, `unknown` for a missing or unlisted value."""
    columns = []
    for column, vocab in vocabs.items():
        unknown = vocab[UNKNOWN]
        if column not in obs:
            columns.append(np.full(len(obs), unknown, dtype=np.int64))
            continue
        values = obs[column].astype(object)
        columns.append(np.fromiter((vocab.get(v, unknown) if isinstance(v, str) else unknown for v in values),
                                   dtype=np.int64, count=len(obs)))
    return np.stack(columns, axis=1) if columns else np.zeros((len(obs), 0), dtype=np.int64)


def tokenize(x_ng: sp.csr_matrix, token_g: np.ndarray, obs: pd.DataFrame, vocabs: Mapping[str, Mapping[str, int]],
             seq_len: int, clip_counts: float) -> TokenizedCells:
    tokens_t, counts_t, offsets = tokenize_genes(x_ng, token_g, seq_len, clip_counts)
    return TokenizedCells(tokens_t, counts_t, offsets, aux_tokens(obs, vocabs))
