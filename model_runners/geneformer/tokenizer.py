"""Geneformer's rank-value encoding of a CSR count matrix, one compiled pass over its rows.

Per cell: gene columns are mapped through the dictionaries (columns that
land on the same Ensembl id are summed, unknown ones dropped), `x_norm = counts / n_counts * 10,000 /
median[gene]` with `n_counts` the cell's total over ALL input columns, the detected genes are sorted
by `x_norm` descending and their tokens truncated to the input size; V2 adds `<cls>` in front and
`<eos>` behind.

Ties (equal `x_norm`, e.g. two genes with one count each and equal medians) are broken by
token-dictionary order (ascending token id, which is Ensembl-id order), not by the input's column
order, so a cell's tokens do not depend on how the file orders its genes. The authors' unstable
argsort left them arbitrary.

How it is fast: one numba kernel (compiled once, cached on disk) walks the CSR rows and, per row,
turns each stored count into one int64 key whose high bits are the complemented IEEE bits of `x_norm`
(for positive doubles the bits order like the values, so the complement sorts descending) and whose
low bits are the gene's token id. Keys are unique within a row (one per gene), so sorting them
ascending gives the ranking with its tie-break, and each token is read straight from a sorted key's low
bits. The sort is a counting pass into buckets by the keys' leading bits (the keys follow log(`x_norm`),
so a bucket holds a key or two) and an insertion sort that only moves keys within their bucket: a few
linear passes per row, where a comparison sort would mispredict a branch at every other step. Rows
are split between threads (the kernel releases the GIL); no Python runs per cell.

The token bits replace the last 15 bits of the mantissa (16 for vocabularies over 32,767 tokens), so
the ranking is by `x_norm` cut to its leading 37 mantissa bits, then by token: values on the same step
of that relative 2^-37 grid count as ties, while values closer than a step but on either side of a
grid line still rank by value. That is far below any biological difference and at the level of the
formula's own rounding: values equal on paper but computed from different counts and medians (10 / 10
and 1 / 1) can differ in their last bit, which a float64 argsort would follow and this ranking mostly
does not (it puts them in token order, as true ties).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import scipy.sparse as sp
from numba import njit

from czb_core.errors import InputError
from czb_core.models.tokens import RaggedCells, encode_in_parts
from model_runners.geneformer.dictionaries import GeneDictionaries

TARGET_SUM = 10_000
KEY_BITS = np.iinfo(np.int64).max  # all bits of a non-negative int64 key
SMALL_SORT = 24  # rows and buckets of up to this many keys are left to the insertion sort


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
class TokenizedCells(RaggedCells):
    """A ragged batch of token sequences: cell i is `tokens[offsets[i]:offsets[i + 1]]`.

    `n_genes[i]` counts the cell's detected vocabulary genes (before truncation; deleted and activated
    genes excluded); 0 marks a cell that has nothing to rank.
    """

    tokens: np.ndarray  # int32
    offsets: np.ndarray  # int64, n_cells + 1
    n_genes: np.ndarray  # int64

    def cell(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def take(self, rows: np.ndarray) -> "TokenizedCells":
        """The cells `rows`, in that order."""
        flat, offsets = self.gather(rows)
        return TokenizedCells(self.tokens[flat], offsets, self.n_genes[rows])

    def padded(self, rows: np.ndarray, pad_token: int) -> tuple[np.ndarray, np.ndarray]:
        """(`tokens_bl` int64 padded with `pad_token` to the longest of `rows`, `lengths_b`)."""
        return self.pad(self.tokens, rows, pad_token, np.int64), self.lengths[rows]

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
        columns = _ColumnCodes.build(token_c, self.dictionaries.median_t, self.token_bits)
        prefix_p = np.array(([self.spec.cls_token] if self.spec.cls_token is not None else [])
                            + list(perturbation.activated), dtype=np.int32)
        slots = self.spec.input_size - self.spec.n_specials - len(perturbation.activated)
        if slots < 0:
            raise InputError(
                f"{len(perturbation.activated)} activated genes do not fit in the input size of "
                f"{self.spec.input_size} tokens"
            )
        eos = -1 if self.spec.eos_token is None else int(self.spec.eos_token)
        tokens_t, n_genes_n = _encode(x_ng, scale_n, columns, prefix_p, slots, eos)
        if perturbation.mapped:
            remap = np.arange(self.dictionaries.vocab_size, dtype=np.int32)
            remap[list(perturbation.mapped)] = list(perturbation.mapped.values())
            tokens_t = remap[tokens_t]
        lengths = np.minimum(n_genes_n, slots) + len(prefix_p) + (eos >= 0)
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


@dataclass(frozen=True)
class _ColumnCodes:
    """What the stored counts of each input column become (see the module docstring).

    A gene's key is `(bits(x_norm) | low) ^ code` with `code = high | (low ^ token)`: the high bits come
    out complemented and the low bits equal the token. A column that is its gene's only one carries the
    gene's code and 1 / median. A dropped column (no token, or a deleted or activated gene) has
    `code = high` and `1 / median = 0`, so its `x_norm` is 0 and its key `high | low`, which the kernel
    skips as no gene; so do columns that share a gene, whose counts are summed per row into their gene,
    the `slot_c`-th of the `_d` arrays, before normalising (`slot_c` is -1 for all other columns).
    """

    code_c: np.ndarray  # int64 per input column
    inv_median_c: np.ndarray  # float64 per input column
    slot_c: np.ndarray  # int32 per input column
    code_d: np.ndarray  # int64 per shared gene
    inv_median_d: np.ndarray  # float64 per shared gene
    low: int
    high: int

    @classmethod
    def build(cls, token_c: np.ndarray, median_t: np.ndarray, token_bits: int) -> "_ColumnCodes":
        low = (1 << token_bits) - 1
        high = int(KEY_BITS) ^ low
        kept_c = token_c >= 0
        genes, counts = np.unique(token_c[kept_c], return_counts=True)
        shared_d = genes[counts > 1]
        shared_c = kept_c & np.isin(token_c, shared_d)
        single_c = kept_c & ~shared_c
        code_c = np.full(len(token_c), high, dtype=np.int64)
        code_c[single_c] = high | (low ^ token_c[single_c])
        inv_median_c = np.zeros(len(token_c))
        inv_median_c[single_c] = 1.0 / median_t[token_c[single_c]]
        slot_c = np.full(len(token_c), -1, dtype=np.int32)
        slot_c[shared_c] = np.searchsorted(shared_d, token_c[shared_c])
        code_d = high | (low ^ shared_d.astype(np.int64))
        return cls(code_c, inv_median_c, slot_c, code_d, 1.0 / median_t[shared_d], low, high)


def _encode(x_ng: sp.csr_matrix, scale_n: np.ndarray, columns: _ColumnCodes, prefix_p: np.ndarray, slots: int,
            eos: int) -> tuple[np.ndarray, np.ndarray]:
    """(Flat int32 tokens of all rows, detected genes per row), rows split between worker threads
    (`encode_in_parts`; a row has room for up to `slots` genes and its special tokens)."""
    indptr = x_ng.indptr
    n_genes_n = np.empty(len(indptr) - 1, dtype=np.int64)
    room_n = np.minimum(np.diff(indptr), slots) + len(prefix_p) + (eos >= 0)

    def encode(lo: int, hi: int, start: int, buffers: tuple[np.ndarray, ...]) -> int:
        return _encode_rows(indptr, x_ng.indices, x_ng.data, lo, hi, scale_n, columns.code_c, columns.inv_median_c,
                            columns.slot_c, columns.code_d, columns.inv_median_d, columns.low, columns.high,
                            prefix_p, slots, eos, buffers[0], start, n_genes_n)

    (tokens_t,) = encode_in_parts(indptr, room_n, (np.int32,), encode)
    return tokens_t, n_genes_n


@njit(cache=True, nogil=True)
def _encode_rows(indptr, indices, data, lo, hi, scale_n, code_c, inv_median_c, slot_c, code_d, inv_median_d,
                 low, high, prefix_p, slots, eos, tokens_t, at, n_genes_n):
    """Writes the tokens of rows lo..hi (`prefix_p`, the top `slots` genes, `eos` unless it is -1) into
    `tokens_t` from `at` on and their detected genes into `n_genes_n`; returns where the tokens end."""
    width = 0
    for i in range(lo, hi):
        width = max(width, indptr[i + 1] - indptr[i])
    x_norm_k = np.empty(width, dtype=np.float64)
    bits_k = x_norm_k.view(np.int64)  # positive doubles: the bits order like the values
    code_k = np.empty(width, dtype=np.int64)
    keys_k = np.empty(width, dtype=np.int64)
    spare_k = np.empty(width, dtype=np.int64)
    summed_d = np.zeros(len(code_d))  # counts of the row's shared genes; 0 = not seen in this row
    seen_d = np.empty(min(width, len(code_d)), dtype=np.int64)
    starts_b = np.empty((1 << (_bit_length(width) + 1)) + 1, dtype=np.int64)
    for i in range(lo, hi):
        start, n_stored, scale = indptr[i], indptr[i + 1] - indptr[i], scale_n[i]
        for k in range(n_stored):  # no branch: dropped and shared columns key as no gene below
            column = indices[start + k]
            x_norm_k[k] = np.float64(data[start + k]) * scale * inv_median_c[column]
            code_k[k] = code_c[column]
        n_genes = 0
        for k in range(n_stored):
            key = (bits_k[k] | low) ^ code_k[k]
            keys_k[n_genes] = key
            n_genes += _is_gene(key, high)
        if len(code_d):  # the shared genes: summed, then keyed into the places their columns left
            n_seen = 0
            for k in range(start, start + n_stored):
                slot = slot_c[indices[k]]
                if slot >= 0:
                    if summed_d[slot] == 0.0:
                        seen_d[n_seen] = slot
                        n_seen += 1
                    summed_d[slot] += np.float64(data[k])
            for j in range(n_seen):
                slot = seen_d[j]
                x_norm_k[j] = summed_d[slot] * scale * inv_median_d[slot]
                summed_d[slot] = 0.0
                key = (bits_k[j] | low) ^ code_d[slot]
                keys_k[n_genes] = key
                n_genes += _is_gene(key, high)
        n_genes_n[i] = n_genes
        ranked_k = _sort_keys(keys_k[:n_genes], spare_k, starts_b)
        tokens_t[at : at + len(prefix_p)] = prefix_p
        at += len(prefix_p)
        for r in range(min(n_genes, slots)):
            tokens_t[at + r] = ranked_k[r] & low
        at += min(n_genes, slots)
        if eos >= 0:
            tokens_t[at] = eos
            at += 1
    return at


@njit(cache=True, nogil=True, inline="always")
def _is_gene(key, high):
    """False for `high | low`, the key of a dropped or shared column or of an x_norm that underflowed to 0.

    A NaN x_norm (which the input checks leave no way to) would key negative and break `_sort_keys`.
    """
    return (key >= 0) & (key < high)


@njit(cache=True, nogil=True)
def _sort_keys(keys_k, spare_k, starts_b):
    """`keys_k` (distinct, non-negative) in ascending order: either `keys_k` itself, sorted in place, or
    the first len(keys_k) places of `spare_k`; `starts_b` is scratch of 2^(bit_length(len(keys_k)) + 1)
    + 1 entries or more.

    A counting pass moves the keys into buckets (2 to 4 per key) by their leading bits relative to the
    smallest key; an insertion sort then only moves keys within their bucket, a step or two each.
    Buckets of more than `SMALL_SORT` keys (values crowded into a narrow range) are quicksorted first,
    so that case is never quadratic.
    """
    n = len(keys_k)
    if n <= SMALL_SORT:
        _insertion_sort(keys_k)
        return keys_k
    smallest, largest = keys_k.min(), keys_k.max()
    shift = max(_bit_length(largest - smallest) - _bit_length(n) - 1, 0)
    n_buckets = ((largest - smallest) >> shift) + 1
    starts_b[: n_buckets + 1] = 0
    for k in range(n):
        starts_b[((keys_k[k] - smallest) >> shift) + 1] += 1
    biggest = 0
    for b in range(n_buckets):
        biggest = max(biggest, starts_b[b + 1])
        starts_b[b + 1] += starts_b[b]
    for k in range(n):  # afterwards starts_b[b] is where bucket b ends
        b = (keys_k[k] - smallest) >> shift
        spare_k[starts_b[b]] = keys_k[k]
        starts_b[b] += 1
    if biggest > SMALL_SORT:
        start = 0
        for b in range(n_buckets):
            if starts_b[b] - start > SMALL_SORT:
                spare_k[start : starts_b[b]].sort()
            start = starts_b[b]
    _insertion_sort(spare_k[:n])
    return spare_k[:n]


@njit(cache=True, nogil=True)
def _insertion_sort(keys_k):
    """Sorts `keys_k` in place: quick when every key is only a few places from its own."""
    for k in range(1, len(keys_k)):
        key = keys_k[k]
        if keys_k[k - 1] > key:  # most keys are in place already: test that once, store nothing
            j = k - 1
            while j >= 0 and keys_k[j] > key:
                keys_k[j + 1] = keys_k[j]
                j -= 1
            keys_k[j + 1] = key


@njit(cache=True, nogil=True)
def _bit_length(value):
    """Bits needed to write the non-negative `value` (0 for 0)."""
    bits = 0
    while value >> bits:
        bits += 1
    return bits


def _positive_csr(x_ng: sp.spmatrix) -> sp.csr_matrix:
    """Canonical CSR counts (one entry per gene and cell) without stored zeros, which would rank as
    genes; negative, NaN and infinite values are refused (the sort keys need finite, positive ones)."""
    x_ng = sp.csr_matrix(x_ng)
    if not x_ng.has_canonical_format:
        x_ng = x_ng.copy()
        x_ng.sum_duplicates()
    smallest, largest = (x_ng.data.min(), x_ng.data.max()) if x_ng.nnz else (1, 1)
    if np.isnan(smallest) or not np.isfinite(largest):
        raise InputError("the counts hold NaN or infinite values; Geneformer needs raw counts")
    if smallest <= 0:
        if smallest < 0:
            raise InputError("the counts hold negative values; Geneformer needs raw counts")
        x_ng = x_ng.copy()
        x_ng.eliminate_zeros()
    return x_ng


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
    bad = has_counts & ~((n_counts_n > 0) & np.isfinite(n_counts_n))
    if bad.any():
        raise InputError(
            f"obs['n_counts'] is zero, negative, infinite or missing for {int(bad.sum()):,} cells that have "
            "counts; recompute it (adata.obs['n_counts'] = adata.X.sum(axis=1)) or drop the column"
        )
    return n_counts_n
