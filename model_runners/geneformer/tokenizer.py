"""Geneformer's rank-value encoding, vectorised over the rows of a CSR count matrix.

Per cell (model-formats.md section 1): gene columns are mapped through the dictionaries (columns that
land on the same Ensembl id are summed, unknown ones dropped), `x_norm = counts / n_counts * 10,000 /
median[gene]` with `n_counts` the cell's total over ALL input columns, the detected genes are sorted
by `x_norm` descending and their tokens truncated to the input size; V2 adds `<cls>` in front and
`<eos>` behind.

Ties (equal `x_norm`, e.g. two genes with one count each and equal medians) are broken by
token-dictionary order (ascending token id, which is Ensembl-id order), not by the input's column
order, so a cell's tokens do not depend on how the file orders its genes. The authors' unstable
argsort left them arbitrary.

How it is fast: each stored count becomes one int64 key whose high bits are the complemented IEEE
bits of `x_norm` (for positive doubles the bits order like the values, so the complement sorts
descending) and whose low bits are the gene's token id. A block of rows is laid out as a padded 2-D
array and sorted along its rows with numpy's SIMD sort; the token is read straight from each sorted
key's low bits, so nothing is argsorted and no Python loop runs per cell. The token bits replace the
last 15 bits of the mantissa (16 for vocabularies over 32,767 tokens), so values that agree to a
relative 2^-37 count as ties. That is far below any biological difference and at the level of the
formula's own rounding: values equal on paper but computed from different counts and medians (3 / 1.5
and 2 / 1.0) can differ in their last bit, which a float64 argsort would follow and this ranking does
not (it puts them in token order, as true ties).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import scipy.sparse as sp

from czb_core.errors import InputError
from model_runners.geneformer.dictionaries import GeneDictionaries

TARGET_SUM = 10_000
SENTINEL = np.iinfo(np.int64).max  # the key of padding and of dropped entries: sorts last, reads as no token
CHUNK_ENTRIES = 1 << 19  # stored counts per block: fits in cache, large enough to amortise numpy calls


@dataclass(frozen=True)
class TokenizerSpec:
    """Per-variant sequence layout (from the variant's params and dictionaries)."""

    input_size: int  # longest sequence, special tokens included
    cls_token: Optional[int] = None  # V2: prepended
    eos_token: Optional[int] = None  # V2: appended
    pad_token: int = 0

    @property
    def n_specials(self) -> int:
        return (self.cls_token is not None) + (self.eos_token is not None)


@dataclass(frozen=True)
class Perturbation:
    """In-silico perturbation in token space (`perturbation.py` parses the user-facing form).

    `deleted`: genes whose value is set to 0 before ranking (another gene takes the slot).
    `activated`: genes placed at the top ranks in this order, whether or not the cell expressed them.
    `mapped`: token -> replacement token, applied to the finished sequence.
    """

    deleted: tuple[int, ...] = ()
    activated: tuple[int, ...] = ()
    mapped: dict[int, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.deleted or self.activated or self.mapped)


@dataclass(frozen=True)
class TokenizedCells:
    """A ragged batch of token sequences: cell i is `tokens[offsets[i]:offsets[i + 1]]`.

    `n_genes[i]` counts the cell's detected vocabulary genes (before truncation; deleted and activated
    genes excluded); 0 marks a cell that has nothing to rank.
    """

    tokens: np.ndarray  # int32
    offsets: np.ndarray  # int64, n_cells + 1
    n_genes: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def cell(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def take(self, rows: np.ndarray) -> "TokenizedCells":
        """The cells `rows`, in that order."""
        lengths = self.lengths[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        starts = np.repeat(self.offsets[:-1][rows] - offsets[:-1], lengths)
        return TokenizedCells(self.tokens[np.arange(offsets[-1]) + starts], offsets, self.n_genes[rows])

    def padded(self, rows: np.ndarray, pad_token: int) -> tuple[np.ndarray, np.ndarray]:
        """(`tokens_bl` int64 padded with `pad_token` to the longest of `rows`, `lengths_b`)."""
        lengths_b = self.lengths[rows]
        width = int(lengths_b.max()) if len(rows) else 0
        positions_bl = self.offsets[:-1][rows, None] + np.arange(width)
        valid_bl = np.arange(width) < lengths_b[:, None]
        tokens_bl = np.where(valid_bl, np.take(self.tokens, positions_bl, mode="clip"), pad_token)
        return tokens_bl.astype(np.int64), lengths_b

    def differs_from(self, other: "TokenizedCells") -> np.ndarray:
        """Per cell: is its sequence different in `other` (length or any token)?"""
        same_length = self.lengths == other.lengths
        rows = np.flatnonzero(same_length)
        mine, theirs = self.take(rows), other.take(rows)
        cell_of_token = np.repeat(np.arange(len(rows)), mine.lengths)
        changed = np.bincount(cell_of_token[mine.tokens != theirs.tokens], minlength=len(rows)) > 0
        differs = ~same_length
        differs[rows] = changed
        return differs


class RankValueTokenizer:
    """Tokenizes count matrices for one variant's dictionaries and sequence layout."""

    def __init__(self, dictionaries: GeneDictionaries, spec: TokenizerSpec):
        self.dictionaries = dictionaries
        self.spec = spec
        self.token_bits = max(15, int(dictionaries.vocab_size).bit_length())  # all-ones never a token

    def tokenize(
        self,
        x_ng: sp.spmatrix,
        gene_names,
        n_counts_n: Optional[np.ndarray] = None,
        perturbation: Optional[Perturbation] = None,
    ) -> TokenizedCells:
        """Token sequences of every cell (rows of `x_ng`, columns named by `gene_names`).

        `n_counts_n` defaults to each row's total over all columns (pass `obs["n_counts"]` when the
        file has it). A perturbation's deleted and activated genes leave the ranking; the activated
        ones then take the top slots in their given order.
        """
        perturbation = perturbation or Perturbation()
        x_ng = _positive_csr(x_ng)
        scale_n = _scale(x_ng, n_counts_n)
        token_c = self.dictionaries.tokens_of(gene_names)
        if perturbation.deleted or perturbation.activated:
            token_c[np.isin(token_c, perturbation.deleted + perturbation.activated)] = -1
        keys = _SortKeys.build(x_ng, token_c, self.dictionaries.median_t, self.token_bits)
        prefix = ([self.spec.cls_token] if self.spec.cls_token is not None else []) + list(perturbation.activated)
        slots = self.spec.input_size - self.spec.n_specials - len(perturbation.activated)
        if slots < 0:
            raise InputError(
                f"{len(perturbation.activated)} activated genes do not fit in the input size of "
                f"{self.spec.input_size} tokens"
            )
        tokens, n_genes = [], []
        for lo, hi in _row_chunks(x_ng.indptr):
            block_tokens, block_n_genes = self._encode_block(keys, lo, hi, scale_n, prefix, slots)
            tokens.append(block_tokens)
            n_genes.append(block_n_genes)
        tokens_t = np.concatenate(tokens) if tokens else np.zeros(0, dtype=np.int32)
        n_genes_n = np.concatenate(n_genes) if n_genes else np.zeros(0, dtype=np.int64)
        if perturbation.mapped:
            remap = np.arange(self.dictionaries.vocab_size, dtype=np.int32)
            remap[list(perturbation.mapped)] = list(perturbation.mapped.values())
            tokens_t = remap[tokens_t]
        lengths = np.minimum(n_genes_n, slots) + len(prefix) + (self.spec.eos_token is not None)
        return TokenizedCells(tokens_t, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), n_genes_n)

    def normalized(self, x_ng: sp.spmatrix, gene_names, n_counts_n: Optional[np.ndarray] = None) -> sp.csr_matrix:
        """`x_norm` as a cells x vocabulary CSR matrix (column = token id): the values a cell's ranking sorts.

        Plain sparse algebra, independent of the sort keys: the formula as written, for inspection.
        """
        x_ng = _positive_csr(x_ng)
        token_c = self.dictionaries.tokens_of(gene_names)
        kept = np.flatnonzero(token_c >= 0)
        to_tokens = sp.csr_matrix((np.ones(len(kept)), (kept, token_c[kept])),
                                  shape=(x_ng.shape[1], self.dictionaries.vocab_size))
        median_t = self.dictionaries.median_t
        inv_median_t = np.divide(1.0, median_t, out=np.zeros_like(median_t), where=median_t > 0)
        scale_n = _scale(x_ng, n_counts_n)
        return sp.csr_matrix(sp.diags(scale_n) @ (x_ng @ to_tokens) @ sp.diags(inv_median_t))

    def _encode_block(self, keys: "_SortKeys", lo: int, hi: int, scale_n, prefix: list[int], slots: int):
        """(Flat tokens of rows lo..hi: prefix, top `slots` genes, `<eos>`; detected genes per row)."""
        keys_k, nnz_n = keys.of_rows(lo, hi, scale_n)
        n_rows, n_prefix, has_eos = hi - lo, len(prefix), self.spec.eos_token is not None
        width = int(nnz_n.max()) if n_rows else 0
        block_nw = np.full((n_rows, n_prefix + width + has_eos), SENTINEL, dtype=np.int64)
        block_nw[:, :n_prefix] = prefix  # bare token ids: `& low` below reads them back unchanged
        body_nw = block_nw[:, n_prefix : n_prefix + width]
        body_nw[np.arange(width) < nnz_n[:, None]] = keys_k  # CSR order is row-major order
        body_nw.sort(axis=1)
        n_genes_n = np.count_nonzero(body_nw < keys.high, axis=1)
        n_kept_n = np.minimum(n_genes_n, slots)
        if has_eos:
            block_nw[np.arange(n_rows), n_prefix + n_kept_n] = self.spec.eos_token
        used_nw = np.arange(block_nw.shape[1]) < (n_prefix + n_kept_n + has_eos)[:, None]
        return (block_nw[used_nw] & keys.low).astype(np.int32), n_genes_n


@dataclass(frozen=True)
class _SortKeys:
    """Per-column codes that turn stored counts into sort keys (see the module docstring).

    A kept entry's key is `(bits(x_norm) | low) ^ code` with `code = high | (low ^ token)`: the high
    bits come out complemented and the low bits equal the token. A dropped column has `code = high`
    and `1 / median = 0`, so its `x_norm` is 0 and its key is `SENTINEL`, like padding. Columns that
    share a gene are dropped from `x_ng` and enter through `summed_nd` instead.
    """

    x_ng: sp.csr_matrix
    code_c: np.ndarray  # int64 per input column
    inv_median_c: np.ndarray  # float64 per input column, 0 when dropped
    summed_nd: Optional[sp.csr_matrix]  # counts of shared genes, summed over their columns
    code_d: np.ndarray
    inv_median_d: np.ndarray
    low: int
    high: int

    @classmethod
    def build(cls, x_ng: sp.csr_matrix, token_c: np.ndarray, median_t: np.ndarray, token_bits: int) -> "_SortKeys":
        low = (1 << token_bits) - 1
        high = int(SENTINEL) ^ low
        kept = token_c >= 0
        genes, counts = np.unique(token_c[kept], return_counts=True)
        shared_c = kept & np.isin(token_c, genes[counts > 1])
        single_c = kept & ~shared_c
        code_c = np.full(len(token_c), high, dtype=np.int64)
        code_c[single_c] = high | (low ^ token_c[single_c])
        inv_median_c = np.zeros(len(token_c))
        inv_median_c[single_c] = 1.0 / median_t[token_c[single_c]]
        shared_d, slot = np.unique(token_c[shared_c], return_inverse=True)
        summed_nd = None
        if len(shared_d):
            shared_columns = np.flatnonzero(shared_c)
            to_genes = sp.csr_matrix((np.ones(len(slot)), (np.arange(len(slot)), slot)),
                                     shape=(len(slot), len(shared_d)))
            summed_nd = sp.csr_matrix(x_ng[:, shared_columns] @ to_genes)
        return cls(x_ng, code_c, inv_median_c, summed_nd, high | (low ^ shared_d), 1.0 / median_t[shared_d],
                   low, high)

    def of_rows(self, lo: int, hi: int, scale_n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Keys of the stored entries of rows lo..hi, row after row; entries per row)."""
        keys_k, nnz_n = _keys(self.x_ng, lo, hi, scale_n, self.code_c, self.inv_median_c, self.low)
        if self.summed_nd is None:
            return keys_k, nnz_n
        keys_j, nnz_j = _keys(self.summed_nd, lo, hi, scale_n, self.code_d, self.inv_median_d, self.low)
        row_k = np.concatenate([np.repeat(np.arange(hi - lo), nnz_n), np.repeat(np.arange(hi - lo), nnz_j)])
        order = np.argsort(row_k, kind="stable")  # two row-sorted runs: a linear merge
        return np.concatenate([keys_k, keys_j])[order], nnz_n + nnz_j


def _keys(x_ng: sp.csr_matrix, lo: int, hi: int, scale_n, code_c, inv_median_c, low: int):
    """(Sort keys of the stored entries of rows lo..hi in CSR order, entries per row)."""
    start, stop = x_ng.indptr[lo], x_ng.indptr[hi]
    nnz_n = np.diff(x_ng.indptr[lo : hi + 1])
    columns_k = x_ng.indices[start:stop]
    x_norm_k = x_ng.data[start:stop].astype(np.float64)
    x_norm_k *= np.repeat(scale_n[lo:hi], nnz_n)
    x_norm_k *= np.take(inv_median_c, columns_k)
    keys_k = x_norm_k.view(np.int64)  # positive doubles: the bits order like the values
    keys_k |= low
    keys_k ^= np.take(code_c, columns_k)
    return keys_k, nnz_n


def _positive_csr(x_ng: sp.spmatrix) -> sp.csr_matrix:
    """Canonical CSR counts (one entry per gene and cell) without stored zeros, which would rank as
    genes; negative values are refused."""
    x_ng = sp.csr_matrix(x_ng)
    if not x_ng.has_canonical_format:
        x_ng = x_ng.copy()
        x_ng.sum_duplicates()
    smallest = x_ng.data.min() if x_ng.nnz else 1
    if smallest <= 0:
        if smallest < 0:
            raise InputError("the counts hold negative values; Geneformer needs raw counts")
        x_ng = x_ng.copy()
        x_ng.eliminate_zeros()
    return x_ng


def detected_genes(x_ng: sp.csr_matrix, token_c: np.ndarray) -> np.ndarray:
    """Per cell, how many stored positive counts fall on vocabulary genes (columns with a token).

    The cheap check the validator runs before any weights are fetched; 0 means no tokens.
    """
    hit_k = np.take(token_c >= 0, x_ng.indices) & (x_ng.data > 0)
    running = np.concatenate([[0], np.cumsum(hit_k)])
    return running[x_ng.indptr[1:]] - running[x_ng.indptr[:-1]]


def _scale(x_ng: sp.csr_matrix, n_counts_n: Optional[np.ndarray]) -> np.ndarray:
    """`10,000 / n_counts` per cell (0 for a cell without counts, which has nothing to scale)."""
    n_counts_n = _n_counts(x_ng, n_counts_n)
    return np.divide(TARGET_SUM, n_counts_n, out=np.zeros_like(n_counts_n), where=n_counts_n > 0)


def _n_counts(x_ng: sp.csr_matrix, n_counts_n: Optional[np.ndarray]) -> np.ndarray:
    """Totals over all input columns (or the given ones); a cell with counts needs a positive total."""
    if n_counts_n is None:
        return np.asarray(x_ng.sum(axis=1), dtype=np.float64).ravel()
    try:
        n_counts_n = np.asarray(n_counts_n, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise InputError("obs['n_counts'] is not numeric; recompute it or drop the column") from None
    if len(n_counts_n) != x_ng.shape[0]:
        raise InputError(f"n_counts has {len(n_counts_n):,} values for {x_ng.shape[0]:,} cells")
    has_counts = np.diff(x_ng.indptr) > 0
    bad = has_counts & ~(n_counts_n > 0)
    if bad.any():
        raise InputError(
            f"obs['n_counts'] is zero, negative or missing for {int(bad.sum()):,} cells that have counts; "
            "recompute it (adata.obs['n_counts'] = adata.X.sum(axis=1)) or drop the column"
        )
    return n_counts_n


def _row_chunks(indptr: np.ndarray):
    """Row ranges holding about `CHUNK_ENTRIES` non-zeros each (at least one row)."""
    n_rows = len(indptr) - 1
    lo = 0
    while lo < n_rows:
        hi = int(np.searchsorted(indptr, indptr[lo] + CHUNK_ENTRIES, side="right")) - 1
        hi = min(max(hi, lo + 1), n_rows)
        yield lo, hi
        lo = hi
