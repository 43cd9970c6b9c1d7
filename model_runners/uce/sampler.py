"""UCE's cell sentences, built for a block of cells at once (numpy only, no per-cell Python loop).

Per cell: weights log1p(counts) over the usable genes, normalised to sum 1; `sample_size` genes drawn
with replacement in proportion to them; the drawn genes grouped by chromosome, the chromosomes in a
random order, the genes of a chromosome sorted by genomic start; the sentence is
`[CLS]` then, per chromosome, `[chromosome token] genes [chrom right]`, padded with the pad token to
`pad_length` (as the authors' sampler does; the encoder cuts every batch to its sentences' length). The
lengths mark the used positions.

Vectorised: one inverse-CDF search draws every cell's genes (row index + cumulative share, so one
sorted array serves all rows), one random key per (cell, chromosome) shuffles the chromosome order,
and one row-wise sort of a single integer key (chromosome rank, rank of the gene by start) orders every
drawn gene. Randomness comes from a
generator seeded per group of `CHUNK_CELLS` consecutive input rows, so a cell's sentence depends on the
seed and its row in the input, never on the batch size or on how a run splits the input into chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

CHUNK_CELLS = 1024


@dataclass(frozen=True)
class SentenceSpec:
    sample_size: int
    pad_length: int
    pad_token: int
    cls_token: int
    chrom_right_token: int
    chrom_token_offset: int


@dataclass(frozen=True)
class CountsBlock:
    """CSR parts of cells x usable genes (the only scipy-free form the GPU server can also build)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray

    @property
    def n_cells(self) -> int:
        return len(self.indptr) - 1

    def rows(self, start: int, stop: int) -> "CountsBlock":
        lo, hi = self.indptr[start], self.indptr[stop]
        return CountsBlock(self.indptr[start : stop + 1] - lo, self.indices[lo:hi], self.data[lo:hi])


def chunk_rng(seed: int, chunk: int) -> np.random.Generator:
    """The generator of one chunk of cells: independent streams from (seed, chunk number)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(chunk)]))


def draw_genes(block: CountsBlock, sample_size: int, rng: np.random.Generator) -> np.ndarray:
    """`genes_ns`: for each cell, `sample_size` gene columns drawn with replacement, p ∝ log1p(count).

    Every row needs a positive weight (the caller refuses cells without usable counts)."""
    n = block.n_cells
    per_row_n = np.diff(block.indptr)
    cum_t = np.empty(len(block.data) + 1)
    cum_t[0] = 0.0
    np.cumsum(np.log1p(np.maximum(block.data, 0), dtype=np.float64), out=cum_t[1:])
    before_n = cum_t[block.indptr[:-1]]
    total_n = cum_t[block.indptr[1:]] - before_n
    cdf_t = (cum_t[1:] - np.repeat(before_n, per_row_n)) / np.repeat(total_n, per_row_n)
    last_n = block.indptr[1:] - 1
    cdf_t[last_n[per_row_n > 0]] = 1.0  # each row's CDF ends at exactly 1
    cdf_t += np.repeat(np.arange(n, dtype=np.float64), per_row_n)  # rising across rows: row r's lies in (r, r + 1]
    draws_ns = np.arange(n)[:, None] + np.sort(rng.random((n, sample_size)), axis=1)  # sorted: a faster search
    picked_ns = np.searchsorted(cdf_t, draws_ns.ravel(), side="right").reshape(n, sample_size)
    picked_ns = np.minimum(picked_ns, last_n[:, None])  # r + u may round up to r + 1
    return block.indices[picked_ns]


def build_sentences(genes_ns: np.ndarray, token_g: np.ndarray, chrom_g: np.ndarray, start_g: np.ndarray,
                    spec: SentenceSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(`tokens_nl` padded to `pad_length`, `lengths_n`) of drawn genes, grouped as the module says."""
    n, s = genes_ns.shape
    n_genes = len(token_g)
    by_start_g = np.lexsort((np.arange(n_genes), start_g))  # genes by (start, column): ties in a fixed order
    start_rank_g = np.empty(n_genes, dtype=np.int64)
    start_rank_g[by_start_g] = np.arange(n_genes)
    codes, dense_g = np.unique(chrom_g, return_inverse=True)
    shuffled_nc = np.argsort(rng.random((n, len(codes))), axis=1)  # a uniform random chromosome order per cell
    rank_nc = np.empty_like(shuffled_nc)
    np.put_along_axis(rank_nc, shuffled_nc, np.arange(len(codes))[None, :], axis=1)
    cells_n1 = np.arange(n)[:, None]
    key_ns = np.sort(rank_nc[cells_n1, dense_g[genes_ns]] * n_genes + start_rank_g[genes_ns], axis=1)
    genes_ns = by_start_g[key_ns % n_genes]
    chrom_ns = codes[shuffled_nc[cells_n1, key_ns // n_genes]]

    opens_ns = np.ones((n, s), dtype=bool)
    opens_ns[:, 1:] = chrom_ns[:, 1:] != chrom_ns[:, :-1]
    group_ns = np.cumsum(opens_ns, axis=1) - 1
    closes_ns = np.ones((n, s), dtype=bool)
    closes_ns[:, :-1] = opens_ns[:, 1:]
    lengths_n = 1 + s + 2 * (group_ns[:, -1] + 1)
    too_long = lengths_n > spec.pad_length
    if too_long.any():
        raise ValueError(f"{int(too_long.sum())} cells span {int(group_ns[too_long, -1].max()) + 1} chromosomes: their "
                         f"sentences exceed the padded length {spec.pad_length}")

    position_ns = np.arange(s)[None, :] + 2 * group_ns + 2  # CLS, then one opening token per group so far
    rows_ns = np.arange(n)[:, None] * spec.pad_length
    tokens_nl = np.full((n, spec.pad_length), spec.pad_token, dtype=np.int64)
    tokens_nl[:, 0] = spec.cls_token
    flat = tokens_nl.reshape(-1)
    flat[(rows_ns + position_ns).ravel()] = token_g[genes_ns].ravel()
    flat[(rows_ns + position_ns - 1)[opens_ns]] = chrom_ns[opens_ns] + spec.chrom_token_offset
    flat[(rows_ns + position_ns + 1)[closes_ns]] = spec.chrom_right_token
    return tokens_nl, lengths_n.astype(np.int64)


def sample_sentences(block: CountsBlock, token_g: np.ndarray, chrom_g: np.ndarray, start_g: np.ndarray,
                     spec: SentenceSpec, seed: int, rows_n: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(`tokens_nl`, `lengths_n`) group after group of the block's cells, in input order; `rows_n` is each
    cell's row in the input (increasing), and the cells of rows [k * CHUNK_CELLS, (k + 1) * CHUNK_CELLS)
    draw from generator k."""
    group_n = np.asarray(rows_n, dtype=np.int64) // CHUNK_CELLS
    bounds = np.flatnonzero(np.diff(group_n)) + 1
    for start, stop in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(group_n)]])):
        if start == stop:
            continue
        rng = chunk_rng(seed, int(group_n[start]))
        part = block.rows(int(start), int(stop))
        genes_ns = draw_genes(part, spec.sample_size, rng)
        yield build_sentences(genes_ns, token_g, chrom_g, start_g, spec, rng)
