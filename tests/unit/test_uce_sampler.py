"""UCE's sentence sampler: genes drawn in proportion to log1p(counts), grouped by chromosome in a shuffled
order, sorted by start, with CLS, chromosome and closing tokens, padded to the full length."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp

from model_runners.uce.sampler import (
    CHUNK_CELLS,
    CountsBlock,
    SentenceSpec,
    build_sentences,
    draw_genes,
    sample_sentences,
)

SPEC = SentenceSpec(sample_size=1024, pad_length=1536, pad_token=0, cls_token=3, chrom_right_token=2,
                    chrom_token_offset=500)


def block_of(x_ng) -> CountsBlock:
    x = sp.csr_matrix(x_ng)
    return CountsBlock(x.indptr, x.indices, x.data)


def genes(n_genes: int, n_chrom: int, seed: int = 0):
    """Tokens 10.., chromosome codes 0..n_chrom-1 (two genes share a start), random starts."""
    rng = np.random.default_rng(seed)
    token_g = np.arange(10, 10 + n_genes)
    chrom_g = rng.integers(0, n_chrom, n_genes)
    start_g = rng.integers(0, 10**6, n_genes)
    start_g[1] = start_g[0]
    return token_g, chrom_g, start_g


def parse(tokens_l: np.ndarray, length: int, spec: SentenceSpec = SPEC):
    """A sentence read back token by token: [(chromosome code, [gene tokens])]."""
    assert tokens_l[0] == spec.cls_token
    assert np.all(tokens_l[length:] == spec.pad_token)
    groups, i = [], 1
    while i < length:
        chrom = int(tokens_l[i]) - spec.chrom_token_offset
        assert chrom >= 0
        j = i + 1
        while tokens_l[j] != spec.chrom_right_token:
            j += 1
        groups.append((chrom, tokens_l[i + 1 : j].tolist()))
        i = j + 1
    assert i == length
    return groups


def test_genes_are_drawn_in_proportion_to_log1p_counts():
    counts_g = np.array([0, 1, 2, 5, 0, 30, 100, 3], dtype=np.float32)
    expected_g = np.log1p(counts_g) / np.log1p(counts_g).sum()
    tally_g = np.zeros(len(counts_g))
    n_seeds = 300
    for seed in range(n_seeds):
        drawn = draw_genes(block_of(counts_g[None, :]), SPEC.sample_size, np.random.default_rng(seed))
        tally_g += np.bincount(drawn.ravel(), minlength=len(counts_g))
    n = n_seeds * SPEC.sample_size
    observed_g = tally_g / n
    assert observed_g[counts_g == 0].sum() == 0
    sigma_g = np.sqrt(expected_g * (1 - expected_g) / n)
    assert np.all(np.abs(observed_g - expected_g) < 5 * sigma_g + 1e-12)


def test_each_cell_draws_only_its_own_genes():
    rng = np.random.default_rng(1)
    x = (rng.random((50, 200)) < 0.05) * rng.integers(1, 20, (50, 200))
    x[:, 0] = np.maximum(x[:, 0], 1)
    drawn_ns = draw_genes(block_of(x), 64, rng)
    assert np.all(x[np.arange(50)[:, None], drawn_ns] > 0)


def test_sentences_are_grouped_by_chromosome_sorted_by_start_and_padded():
    token_g, chrom_g, start_g = genes(120, 6)
    rng = np.random.default_rng(2)
    x = rng.integers(0, 4, (40, 120))
    x[:, :3] += 1
    genes_ns = draw_genes(block_of(x), SPEC.sample_size, rng)
    tokens_nl, lengths_n = build_sentences(genes_ns, token_g, chrom_g, start_g, SPEC, rng)
    assert tokens_nl.shape == (40, SPEC.pad_length)
    gene_of_token = {t: g for g, t in enumerate(token_g)}
    for i in range(40):
        groups = parse(tokens_nl[i], lengths_n[i])
        assert lengths_n[i] == 1 + SPEC.sample_size + 2 * len(groups)
        assert len({chrom for chrom, _ in groups}) == len(groups)  # one group per chromosome
        drawn = []
        for chrom, tokens in groups:
            g = np.array([gene_of_token[t] for t in tokens])
            assert np.all(chrom_g[g] == chrom)
            assert np.all(np.diff(start_g[g]) >= 0)
            drawn += g.tolist()
        assert sorted(drawn) == sorted(genes_ns[i].tolist())  # the drawn genes, each once per draw


def test_chromosome_order_is_shuffled_uniformly():
    token_g, chrom_g, start_g = np.arange(10, 13), np.array([0, 1, 2]), np.array([5, 6, 7])
    n = 3000
    genes_ns = np.tile(np.arange(3), (n, 342))[:, :SPEC.sample_size]
    tokens_nl, lengths_n = build_sentences(genes_ns, token_g, chrom_g, start_g, SPEC, np.random.default_rng(3))
    orders = [tuple(c for c, _ in parse(tokens_nl[i], lengths_n[i])) for i in range(n)]
    counts = {order: orders.count(order) for order in itertools.permutations(range(3))}
    assert sum(counts.values()) == n
    assert all(abs(c - n / 6) < 5 * np.sqrt(n / 6) for c in counts.values())


def test_sentences_depend_on_seed_and_position_not_on_how_cells_are_grouped():
    token_g, chrom_g, start_g = genes(80, 4)
    rng = np.random.default_rng(4)
    x = sp.csr_matrix(rng.integers(0, 3, (CHUNK_CELLS + 10, 80)) + (np.arange(80) == 0))
    block = CountsBlock(x.indptr, x.indices, x.data)
    rows_n = np.arange(x.shape[0])
    first = [t for t, _ in sample_sentences(block, token_g, chrom_g, start_g, SPEC, seed=5, rows_n=rows_n)]
    again = [t for t, _ in sample_sentences(block, token_g, chrom_g, start_g, SPEC, seed=5, rows_n=rows_n)]
    other = [t for t, _ in sample_sentences(block, token_g, chrom_g, start_g, SPEC, seed=6, rows_n=rows_n)]
    assert [len(t) for t in first] == [CHUNK_CELLS, 10]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])
    # the last 10 cells sampled on their own, as the second chunk of a chunked run: the same sentences
    tail = x[CHUNK_CELLS:]
    alone = [t for t, _ in sample_sentences(CountsBlock(tail.indptr, tail.indices, tail.data), token_g, chrom_g,
                                            start_g, SPEC, seed=5, rows_n=rows_n[CHUNK_CELLS:])]
    assert np.array_equal(alone[0], first[1])
    # cells left out of one group (a filter) do not move the draws of the next group: keyed by input row
    kept = np.r_[0:5, 7:CHUNK_CELLS + 10]
    part = x[kept]
    gapped = [t for t, _ in sample_sentences(CountsBlock(part.indptr, part.indices, part.data), token_g, chrom_g,
                                             start_g, SPEC, seed=5, rows_n=kept)]
    assert np.array_equal(gapped[1], first[1])


def test_a_cell_spanning_too_many_chromosomes_is_refused():
    n_genes = 300
    token_g, chrom_g, start_g = np.arange(10, 10 + n_genes), np.arange(n_genes), np.arange(n_genes)
    genes_ns = np.tile(np.arange(n_genes), 4)[: SPEC.sample_size][None, :]
    with pytest.raises(ValueError, match="exceed the padded length 1536"):
        build_sentences(genes_ns, token_g, chrom_g, start_g, SPEC, np.random.default_rng(0))
