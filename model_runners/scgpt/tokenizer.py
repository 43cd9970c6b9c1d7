"""scGPT's input encoding of a CSR count matrix: per cell, `<cls>` then its detected genes with binned values.

Per cell (the authors' zero-shot embedding path): the columns whose symbol is in the vocabulary (exact
match), the non-zero ones in column order; the raw values, cast to float32, binned within the cell:
the edges are the cell's quantiles at `linspace(0, 1, n_bins - 1)` (numpy's default "linear" method,
reproduced operation for operation so the edges are bit-identical), and a value `x` gets bin
`left - floor(u * (left - right))` with `left = #edges <= x`, `right = #edges < x` and `u` uniform in
[0, 1): the authors' tie rule, uniform among the bins of the edges equal to `x`, and `left` whenever at
most one edge equals `x` (then no draw is needed, and none is made). A cell with more than
`max_seq_len - 1` genes keeps a uniform random sample of that many (binning sees all of them first,
as in the authors' code); the sample keeps column order, which the model cannot see (it has no
positional encoding). `<cls>` carries `pad_value`.

Randomness: every cell draws from its own splitmix64 stream, seeded by (`seed`, its row in the input),
so the result depends on neither the thread split nor the other cells nor the chunk the cell is
tokenized in, and a run is reproduced exactly from its seed. The authors draw from numpy's global generator, so tied
cells match theirs in distribution only; cells without ties match exactly.

How it is fast: one numba kernel (compiled once, cached on disk) walks the CSR rows. Per cell it puts
the values in order by counting when they are whole numbers up to `COUNTED_MAX` (raw counts nearly
always are: a few linear passes, and per-value tables give each value its edge counts) or else by a
radix sort of their bits, reads the edges off that order and bins every value with no search. Rows are
split between threads (the kernel releases the GIL) and written straight to the output: no Python runs
per cell and the matrix is never densified.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numba import njit

from czb_core.errors import ConfigError, InputError
from czb_core.models.tokens import encode_in_parts
from model_runners.scgpt.cells import TokenizedCells
from model_runners.scgpt.files import ScgptArgs, Vocab

MAX_SEED = 2**63 - 1
RADIX_BITS = 8
RADIX = 1 << RADIX_BITS
COUNTED_MAX = 4096  # whole-number cells up to this value are put in order by counting


@dataclass(frozen=True)
class GeneMatch:
    """How the input's columns map onto the vocabulary: `token_c` per column, -1 for an unknown name."""

    token_c: np.ndarray  # int64
    names: np.ndarray  # object, the input's gene names

    @property
    def n_matched(self) -> int:
        return int(np.count_nonzero(self.token_c >= 0))

    @property
    def unknown(self) -> np.ndarray:
        """Names of the columns the model does not know (dropped), in column order."""
        return self.names[self.token_c < 0]


def match_genes(gene_names, vocab: Vocab) -> GeneMatch:
    """Vocabulary token of each gene name (exact symbol match), for tokenizing and for reporting."""
    names = np.asarray(list(gene_names), dtype=object)
    return GeneMatch(vocab.tokens_of(names), names)


def tokenize(x_ng: sp.spmatrix, gene_names, vocab: Vocab, args: ScgptArgs, seed: int = 0,
             first_row: int = 0) -> TokenizedCells:
    """Tokens and binned values of every cell (rows of `x_ng`, raw counts; columns named by `gene_names`);
    `x_ng` holds rows `first_row`, `first_row + 1`, ... of the input (what the tie draws are keyed on).

    Cells with no vocabulary gene get `<cls>` alone and `n_genes` 0, for the caller to report; no
    matching column at all is an `InputError` (the names are probably not gene symbols).
    """
    match = match_genes(gene_names, vocab)
    if len(match.token_c) != x_ng.shape[1]:
        raise InputError(f"{len(match.token_c):,} gene names for a matrix of {x_ng.shape[1]:,} columns")
    if match.n_matched == 0:
        examples = ", ".join(map(str, match.names[:3]))
        raise InputError(f"none of the {len(match.names):,} genes (e.g. {examples}) is in scGPT's vocabulary of "
                         f"{len(vocab):,} tokens; scGPT needs gene symbols (var['feature_name'])")
    if not 0 <= int(seed) <= MAX_SEED:
        raise ConfigError(f"seed must be between 0 and {MAX_SEED}, got {seed}")
    x_ng = _counts_csr(x_ng)
    genes_t, values_t, lengths_n, n_genes_n = _encode(x_ng, match.token_c, args, vocab.cls_id, int(seed),
                                                      int(first_row))
    offsets = np.concatenate([[0], np.cumsum(lengths_n)]).astype(np.int64)
    return TokenizedCells(genes_t, values_t, offsets, n_genes_n, int(seed))


def _encode(x_ng: sp.csr_matrix, token_c: np.ndarray, args: ScgptArgs, cls_id: int, seed: int, first_row: int):
    """(genes, values, length and detected genes per cell), rows split between worker threads
    (`encode_in_parts`; a row has room for `<cls>` and up to `max_seq_len - 1` genes)."""
    indptr = x_ng.indptr
    n_rows = len(indptr) - 1
    max_genes = args.max_seq_len - 1
    lengths_n = np.empty(n_rows, dtype=np.int64)
    n_genes_n = np.empty(n_rows, dtype=np.int64)
    quantiles_e = np.linspace(0, 1, args.n_bins - 1)

    def encode(lo: int, hi: int, start: int, buffers: tuple[np.ndarray, ...]) -> int:
        genes_t, values_t = buffers
        return _encode_rows(indptr, x_ng.indices, x_ng.data, token_c, lo, hi, quantiles_e, max_genes, cls_id,
                            np.float32(args.pad_value), np.uint64(seed), np.int64(first_row), genes_t, values_t,
                            start, lengths_n, n_genes_n)

    genes_t, values_t = encode_in_parts(indptr, np.minimum(np.diff(indptr), max_genes) + 1,
                                        (np.int32, np.float32), encode)
    return genes_t, values_t, lengths_n, n_genes_n


def _counts_csr(x_ng: sp.spmatrix) -> sp.csr_matrix:
    """Canonical CSR (sorted columns, one entry per cell and gene); negative, NaN and infinite values refused."""
    x_ng = sp.csr_matrix(x_ng)
    if not x_ng.has_canonical_format:
        x_ng = x_ng.copy()
        x_ng.sum_duplicates()
    if x_ng.nnz:
        smallest, largest = x_ng.data.min(), x_ng.data.max()
        if np.isnan(smallest) or np.isnan(largest) or not np.isfinite(largest):
            raise InputError("the counts hold NaN or infinite values; scGPT needs raw counts")
        if smallest < 0:
            raise InputError("the counts hold negative values; scGPT needs raw counts, not scaled or log data")
    return x_ng


@njit(cache=True, nogil=True)
def _encode_rows(indptr, indices, data, token_c, lo, hi, quantiles_e, max_genes, cls_id, pad_value, seed, first_row,
                 genes_t, values_t, at, lengths_n, n_genes_n):
    """Writes `<cls>` and the (sampled) genes with their bins of rows lo..hi into `genes_t`/`values_t` from
    `at` on, and their lengths and detected genes; returns where the run ends.

    Bins: the cell's values are put in ascending order (by counting when they are all whole numbers up
    to `COUNTED_MAX`, the common case for raw counts, else by a radix sort), the edges are read off that
    order, each value gets the numbers of edges <= and < it, and the bins are drawn in column order, so
    both ways give the same bins.
    """
    width = 1
    for i in range(lo, hi):
        width = max(width, indptr[i + 1] - indptr[i])
    tokens_k = np.empty(width, dtype=np.int32)
    values_k = np.empty(width, dtype=np.float32)
    sorted_k = np.empty(width, dtype=np.float32)
    at_most_k = np.empty(width, dtype=np.int32)
    below_k = np.empty(width, dtype=np.int32)
    order_k = np.empty(width, dtype=np.int32)
    spare_k = np.empty(width, dtype=np.int32)
    kept_k = np.empty(width, dtype=np.bool_)
    radix_b = np.empty(RADIX + 1, dtype=np.int64)
    counts_v = np.zeros(COUNTED_MAX + 1, dtype=np.int32)
    at_most_v = np.empty(COUNTED_MAX + 1, dtype=np.int32)
    below_v = np.empty(COUNTED_MAX + 1, dtype=np.int32)
    edges_e = np.empty(len(quantiles_e), dtype=np.float64)
    for i in range(lo, hi):
        n, largest, whole = 0, np.float32(0), True
        for k in range(indptr[i], indptr[i + 1]):
            token = token_c[indices[k]]
            if token >= 0 and data[k] > 0:
                value = np.float32(data[k])
                tokens_k[n] = token
                values_k[n] = value
                largest = max(largest, value)
                whole &= value == np.floor(value)
                n += 1
        n_genes_n[i] = n
        genes_t[at] = cls_id
        values_t[at] = pad_value
        if n == 0:
            lengths_n[i] = 1
            at += 1
            continue
        if whole and largest <= COUNTED_MAX:
            _count_sorted(values_k[:n], int(largest), counts_v, sorted_k)
            _quantile_edges(sorted_k[:n], quantiles_e, edges_e)
            _count_edges_of_whole_values(values_k[:n], int(largest), edges_e, at_most_v, below_v, at_most_k, below_k)
        else:
            order = _argsort_positive(values_k[:n], order_k[:n], spare_k[:n], radix_b)
            for p in range(n):
                sorted_k[p] = values_k[order[p]]
            _quantile_edges(sorted_k[:n], quantiles_e, edges_e)
            _count_edges_of_sorted(sorted_k[:n], order, edges_e, at_most_k, below_k)
        state = _row_state(seed, first_row + i)
        for k in range(n):  # the tie rule; the bins overwrite the values, which are no longer needed
            at_most, below = at_most_k[k], below_k[k]
            if at_most - below > 1:
                state, u = _next_uniform(state)
                values_k[k] = at_most - np.floor(u * (at_most - below))
            else:
                values_k[k] = at_most
        at += 1
        if n <= max_genes:
            genes_t[at : at + n] = tokens_k[:n]
            values_t[at : at + n] = values_k[:n]
            lengths_n[i] = n + 1
            at += n
            continue
        _sample(n, max_genes, state, order_k, kept_k)
        for k in range(n):
            if kept_k[k]:
                genes_t[at] = tokens_k[k]
                values_t[at] = values_k[k]
                at += 1
        lengths_n[i] = max_genes + 1
    return at


@njit(cache=True, nogil=True)
def _count_sorted(values_k, largest, counts_v, sorted_k):
    """Writes the whole-number `values_k` (1..largest) in ascending order into `sorted_k` by counting them;
    leaves `counts_v` zeroed for the next cell."""
    for k in range(len(values_k)):
        counts_v[int(values_k[k])] += 1
    p = 0
    for v in range(1, largest + 1):
        for _ in range(counts_v[v]):
            sorted_k[p] = v
            p += 1
        counts_v[v] = 0


@njit(cache=True, nogil=True)
def _count_edges_of_whole_values(values_k, largest, edges_e, at_most_v, below_v, at_most_k, below_k):
    """Edges <= and < each value, looked up in per-value tables filled by one sweep over 1..largest."""
    n_edges = len(edges_e)
    at_most, below = 0, 0
    for v in range(1, largest + 1):
        while at_most < n_edges and edges_e[at_most] <= v:
            at_most += 1
        while below < n_edges and edges_e[below] < v:
            below += 1
        at_most_v[v] = at_most
        below_v[v] = below
    for k in range(len(values_k)):
        at_most_k[k] = at_most_v[int(values_k[k])]
        below_k[k] = below_v[int(values_k[k])]


@njit(cache=True, nogil=True)
def _count_edges_of_sorted(sorted_k, order_k, edges_e, at_most_k, below_k):
    """Edges <= and < the value at each column `order_k[p]` of the ascending `sorted_k`, with two
    pointers that only move forward."""
    n_edges = len(edges_e)
    at_most, below = 0, 0
    for p in range(len(sorted_k)):
        x = np.float64(sorted_k[p])
        while at_most < n_edges and edges_e[at_most] <= x:
            at_most += 1
        while below < n_edges and edges_e[below] < x:
            below += 1
        at_most_k[order_k[p]] = at_most
        below_k[order_k[p]] = below


@njit(cache=True, nogil=True)
def _argsort_positive(values_k, order_k, spare_k, counts_b):
    """Positions of the positive float32 `values_k` in ascending order, equal values in input order.

    An LSD radix sort of the values' IEEE bits (for positive floats they order like the values) by
    8-bit digits, skipping the digits on which all values agree (count data: the low mantissa bits):
    two or three linear passes where a comparison sort would take n log n unpredictable branches.
    Returns `order_k` or `spare_k`, whichever holds the result.
    """
    bits_k = values_k.view(np.uint32)
    n = len(values_k)
    same, any_ = bits_k[0], bits_k[0]
    for k in range(n):
        order_k[k] = k
        same &= bits_k[k]
        any_ |= bits_k[k]
    varying = same ^ any_
    for shift in range(0, 32, RADIX_BITS):
        if (varying >> shift) & (RADIX - 1) == 0:
            continue
        counts_b[:] = 0
        for k in range(n):
            counts_b[((bits_k[order_k[k]] >> shift) & (RADIX - 1)) + 1] += 1
        for b in range(RADIX):
            counts_b[b + 1] += counts_b[b]
        for k in range(n):
            digit = (bits_k[order_k[k]] >> shift) & (RADIX - 1)
            spare_k[counts_b[digit]] = order_k[k]
            counts_b[digit] += 1
        order_k, spare_k = spare_k, order_k
    return order_k


@njit(cache=True, nogil=True)
def _sample(n, n_kept, state, scratch_k, kept_k):
    """Marks in `kept_k[:n]` a uniform random `n_kept` of n positions: a partial Fisher-Yates shuffle
    draws the smaller of the kept and the dropped sets."""
    n_drawn = min(n_kept, n - n_kept)
    for k in range(n):
        scratch_k[k] = k
    for j in range(n_drawn):
        state, u = _next_uniform(state)
        r = j + min(int(u * (n - j)), n - j - 1)
        scratch_k[j], scratch_k[r] = scratch_k[r], scratch_k[j]
    drawn_are_kept = n_drawn == n_kept
    kept_k[:n] = not drawn_are_kept
    for j in range(n_drawn):
        kept_k[scratch_k[j]] = drawn_are_kept


@njit(cache=True, nogil=True)
def _quantile_edges(sorted_k, quantiles_e, edges_e):
    """numpy's linear-method quantiles of the ascending float32 `sorted_k`, in its order of operations:
    index `(n - 1) * q`, the float32 difference of the neighbours, and the interpolation taken from the
    upper neighbour when the fraction is 0.5 or more."""
    last = len(sorted_k) - 1
    for e in range(len(quantiles_e)):
        index = last * quantiles_e[e]
        if index >= last:
            edges_e[e] = np.float64(sorted_k[last])
            continue
        below = np.floor(index)
        fraction = index - below
        a, b = sorted_k[int(below)], sorted_k[int(below) + 1]
        step = np.float64(b - a)  # float32 subtraction, as numpy does for float32 values
        if fraction >= 0.5:
            edges_e[e] = np.float64(b) - step * (1.0 - fraction)
        else:
            edges_e[e] = np.float64(a) + step * fraction


@njit(cache=True, nogil=True, inline="always")
def _mix(z):
    """splitmix64's finaliser: a bijection of uint64 that scatters neighbouring inputs."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True, inline="always")
def _row_state(seed, row):
    """The start of row `row`'s stream under `seed`."""
    return _mix(_mix(seed) + np.uint64(row))


@njit(cache=True, nogil=True, inline="always")
def _next_uniform(state):
    """(next state, a uniform float64 in [0, 1) with 53 random bits) of a splitmix64 stream."""
    state = state + np.uint64(0x9E3779B97F4A7C15)
    return state, np.float64(_mix(state) >> np.uint64(11)) * (1.0 / 9007199254740992.0)
