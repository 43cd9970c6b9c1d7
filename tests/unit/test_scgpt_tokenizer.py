"""scGPT's files and tokenizer: hand-worked binning, a plain per-cell reference, seeds, sampling, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from czb_core.errors import ConfigError, InputError, WeightsError
from czb_core.models import tokens as tokens_module
from model_runners.scgpt.files import ScgptArgs, Vocab, load_args, load_vocab
from model_runners.scgpt.tokenizer import COUNTED_MAX, match_genes, tokenize
from tests.helpers.scgpt_files import TINY_ARGS, gene_symbols, write_checkpoint

PAD, CLS = "<pad>", "<cls>"


def vocab_of(genes) -> Vocab:
    ids = {gene: i for i, gene in enumerate(genes)}
    ids.update({PAD: len(ids), CLS: len(ids) + 1, "<eoc>": len(ids) + 2})
    return Vocab(ids, PAD)


def args_with(n_bins=51, max_seq_len=10_000) -> ScgptArgs:
    return ScgptArgs(embsize=8, nheads=2, d_hid=8, nlayers=1, pad_token=PAD, pad_value=-2.0, n_bins=n_bins,
                     max_seq_len=max_seq_len)


def one_cell(values, seed=0, n_bins=5, max_seq_len=10_000):
    """(genes, values) of a single cell whose columns are GENE0.. with these values."""
    genes = gene_symbols(len(values))
    cells = tokenize(sp.csr_matrix(np.array([values], dtype=np.float32)), genes, vocab_of(genes),
                     args_with(n_bins, max_seq_len), seed)
    tokens, binned = cells.cell(0)
    return tokens, binned


# ----------------------------------------------------------------------------- hand-worked cells, 4 edges

def test_distinct_values_on_the_edges_get_one_bin_each():
    # n = 4, quantiles 0, 1/3, 2/3, 1 -> indices 0, 1, 2, 3: edges 10, 20, 30, 40; x = edge j -> bin j + 1
    tokens, binned = one_cell([30, 10, 40, 20])
    assert tokens.tolist() == [4 + 1, 0, 1, 2, 3]  # <cls> (id 5), then the columns in order
    assert binned.tolist() == [-2, 3, 1, 4, 2]


def test_interpolated_edges():
    # sorted 1, 3, 5; indices 0, 2/3, 4/3, 2: edges 1, 3 - 2 * (1/3) = 2.33, 3 + 2 * (1/3) = 3.67, 5
    # 5: 4 edges <= 5, 3 below -> 4; 1: 1 edge <= 1, none below -> 1; 3: two edges <= 3, two below -> 2
    assert one_cell([5, 0, 1, 3])[1].tolist() == [-2, 4, 1, 2]
    assert one_cell([5, 0, 1, 3])[0].tolist() == [5, 0, 2, 3]  # the zero column is not a gene of the cell


def test_ties_are_spread_over_the_bins_of_their_equal_edges():
    # sorted 1, 1, 1, 2: edges 1, 1, 1, 2. A 1 has 3 edges <= it and none below: uniform on 1..3; 2 -> 4
    draws = np.array([one_cell([1, 1, 2, 1], seed=seed)[1][1:] for seed in range(600)])
    assert (draws[:, 2] == 4).all()
    ones = draws[:, [0, 1, 3]].ravel()
    assert set(ones.tolist()) == {1.0, 2.0, 3.0}
    shares = np.bincount(ones.astype(int), minlength=4)[1:] / len(ones)
    assert np.allclose(shares, 1 / 3, atol=0.04)


def test_a_single_gene_gets_a_uniform_bin():
    # every edge equals the value: 4 edges <= it, none below -> uniform on 1..4
    bins = np.array([one_cell([0, 7, 0], seed=seed)[1][1] for seed in range(800)])
    assert np.allclose(np.bincount(bins.astype(int), minlength=5)[1:] / len(bins), 0.25, atol=0.05)


def test_all_equal_values_draw_independently():
    draws = np.array([one_cell([3, 3, 3, 3, 3], seed=seed)[1][1:] for seed in range(400)])
    assert set(np.unique(draws).tolist()) == {1.0, 2.0, 3.0, 4.0}
    assert (draws != draws[:, :1]).any(axis=1).mean() > 0.9  # genes of a cell do not share one draw


def test_more_genes_than_max_seq_len_keep_a_uniform_sample_binned_over_all():
    values = [60, 10, 50, 20, 40, 30]  # distinct: bins over all six are deterministic
    _, full = one_cell(values, n_bins=51)
    kept_counts = np.zeros(6)
    for seed in range(300):
        tokens, binned = one_cell(values, seed=seed, n_bins=51, max_seq_len=4)
        assert len(tokens) == 4 and tokens[0] == 6 + 1
        genes = tokens[1:]
        assert (np.diff(genes) > 0).all()  # column order
        assert binned[1:].tolist() == full[1:][genes].tolist()  # binned before sampling
        kept_counts[genes] += 1
    assert np.allclose(kept_counts / 300, 0.5, atol=0.1)


# ----------------------------------------------------------------------------- a plain per-cell reference

def plain_bins(values: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(edges <= x, edges < x) per value: numpy's quantiles and digitize, as the authors' code computes them."""
    edges = np.quantile(values.astype(np.float32), np.linspace(0, 1, n_bins - 1))
    return np.digitize(values, edges), np.digitize(values, edges, right=True)


def random_cells(n_cells, n_genes, density, seed, whole):
    """Counts (whole numbers, many ties) or continuous values (distinct, no ties) in CSR."""
    rng = np.random.default_rng(seed)
    x = sp.random(n_cells, n_genes, density=density, format="csr", random_state=rng, dtype=np.float32)
    if whole:
        x.data = (rng.negative_binomial(1, 0.3, x.nnz) + 1).astype(np.float32)
    else:
        x.data = (rng.random(x.nnz) * 1000 + 1e-3).astype(np.float32)
    return x


@pytest.mark.parametrize("whole", [False, True])
def test_bins_match_numpy_quantiles_and_digitize(whole):
    """Continuous values (no ties: exact) and counts (ties: within the tie's bins, `left` when no tie)."""
    x = random_cells(60, 400, 0.4, seed=3, whole=whole)
    genes = gene_symbols(400)
    cells = tokenize(x, genes, vocab_of(genes), args_with(), seed=11)
    for i in range(60):
        row = slice(x.indptr[i], x.indptr[i + 1])
        left, right = plain_bins(x.data[row], 51)
        tokens, binned = cells.cell(i)
        assert tokens[1:].tolist() == x.indices[row].tolist()
        binned = binned[1:]
        if not whole:
            assert (left - right <= 1).all()
        assert ((binned <= left) & (binned > right) | ((binned == left) & (left - right <= 1))).all()
        assert (binned[left - right <= 1] == left[left - right <= 1]).all()


def test_counted_and_sorted_paths_give_the_same_bins():
    """Whole numbers above COUNTED_MAX take the radix path; scaling by a power of two keeps every
    comparison, so both paths must give identical bins and draws."""
    x = random_cells(50, 300, 0.5, seed=5, whole=True)
    scaled = x.copy()
    scaled.data *= np.float32(2 ** 14)
    assert x.data.max() <= COUNTED_MAX < scaled.data.min()
    genes = gene_symbols(300)
    a = tokenize(x, genes, vocab_of(genes), args_with(max_seq_len=40), seed=2)
    b = tokenize(scaled, genes, vocab_of(genes), args_with(max_seq_len=40), seed=2)
    assert np.array_equal(a.genes, b.genes) and np.array_equal(a.values, b.values)


def test_float64_input_is_binned_as_float32():
    rng = np.random.default_rng(0)
    x = sp.csr_matrix(rng.random((20, 50)) * (rng.random((20, 50)) < 0.5) * 100)
    genes = gene_symbols(50)
    a = tokenize(x, genes, vocab_of(genes), args_with(), seed=1)
    b = tokenize(x.astype(np.float32), genes, vocab_of(genes), args_with(), seed=1)
    assert np.array_equal(a.values, b.values)


# ----------------------------------------------------------------------------- seeds and threads

def test_a_seed_reproduces_the_tokens_and_another_seed_changes_tied_bins():
    x = random_cells(80, 200, 0.5, seed=1, whole=True)
    genes = gene_symbols(200)
    first = tokenize(x, genes, vocab_of(genes), args_with(max_seq_len=50), seed=7)
    again = tokenize(x, genes, vocab_of(genes), args_with(max_seq_len=50), seed=7)
    other = tokenize(x, genes, vocab_of(genes), args_with(max_seq_len=50), seed=8)
    assert first.seed == 7
    assert np.array_equal(first.genes, again.genes) and np.array_equal(first.values, again.values)
    assert not np.array_equal(first.genes, other.genes)
    assert not np.array_equal(first.values, other.values)


def test_the_thread_split_does_not_change_the_result(monkeypatch):
    x = random_cells(101, 200, 0.5, seed=2, whole=True)
    genes = gene_symbols(200)
    results = []
    for workers in (1, 3):
        monkeypatch.setattr(tokens_module, "worker_count", lambda workers=workers: workers)
        results.append(tokenize(x, genes, vocab_of(genes), args_with(max_seq_len=60), seed=4))
    assert np.array_equal(results[0].genes, results[1].genes)
    assert np.array_equal(results[0].values, results[1].values)
    assert np.array_equal(results[0].offsets, results[1].offsets)


# ----------------------------------------------------------------------------- genes, empty cells, bad input

def test_unknown_genes_are_dropped_and_reported_and_empty_cells_marked():
    vocab = vocab_of(["CD3E", "MS4A1", "NKG7"])
    names = ["MS4A1", "cd3e", "NOTAGENE", "NKG7", "<cls>"]  # case matters; specials are not genes
    x = sp.csr_matrix(np.array([[1, 5, 5, 2, 9], [0, 4, 3, 0, 1], [0, 0, 0, 0, 0]], dtype=np.float32))
    match = match_genes(names, vocab)
    assert match.token_c.tolist() == [1, -1, -1, 2, -1]
    assert match.unknown.tolist() == ["cd3e", "NOTAGENE", "<cls>"]
    cells = tokenize(x, names, vocab, args_with())
    assert cells.n_genes.tolist() == [2, 0, 0]
    assert cells.lengths.tolist() == [3, 1, 1]
    assert cells.cell(1)[0].tolist() == [vocab.cls_id]
    assert cells.cell(0)[0].tolist() == [vocab.cls_id, 1, 2]


def test_no_known_gene_at_all_is_an_input_error():
    with pytest.raises(InputError, match="none of the 2 genes.*gene symbols"):
        tokenize(sp.csr_matrix(np.ones((2, 2))), ["ENSG00000000001", "ENSG00000000002"], vocab_of(["CD3E"]),
                 args_with())


@pytest.mark.parametrize("bad, message", [(-1.0, "negative"), (np.nan, "NaN"), (np.inf, "infinite")])
def test_values_that_are_not_counts_are_refused(bad, message):
    x = sp.csr_matrix(np.array([[1.0, bad]]))
    with pytest.raises(InputError, match=message):
        tokenize(x, ["A", "B"], vocab_of(["A", "B"]), args_with())


def test_a_seed_out_of_range_is_refused():
    with pytest.raises(ConfigError, match="seed"):
        tokenize(sp.csr_matrix(np.ones((1, 1))), ["A"], vocab_of(["A"]), args_with(), seed=-1)


def test_duplicate_and_unsorted_entries_are_summed_in_column_order():
    # raw CSR: columns out of order and column 2 twice (2 + 3 = 5)
    x = sp.csr_matrix((np.array([2.0, 1.0, 3.0, 4.0]), np.array([2, 0, 2, 1]), np.array([0, 4])), shape=(1, 3))
    tokens, binned = tokenize(x, ["A", "B", "C"], vocab_of(["A", "B", "C"]), args_with(n_bins=5)).cell(0)
    assert tokens.tolist() == [4, 0, 1, 2]
    assert binned.tolist() == [-2, 1, 2, 4]  # values 1, 4, 5: edges 1, 3, 4.33, 5


def test_gene_count_mismatch_is_an_input_error():
    with pytest.raises(InputError, match="3 gene names for a matrix of 2 columns"):
        tokenize(sp.csr_matrix(np.ones((1, 2))), ["A", "B", "C"], vocab_of(["A", "B", "C"]), args_with())


# ----------------------------------------------------------------------------- files

def test_files_are_read_with_specials_appended(tmp_path):
    folder = write_checkpoint(tmp_path / "ckpt", gene_symbols(5))
    args = load_args(folder)
    assert (args.embsize, args.nheads, args.n_bins, args.max_seq_len, args.pad_value) == (16, 2, 51, 64, -2.0)
    vocab = load_vocab(folder)
    assert (len(vocab), vocab.pad_id, vocab.cls_id) == (8, 5, 6)
    (folder / "vocab.json").write_text(json.dumps({"A": 0, "B": 1}))
    vocab = load_vocab(folder)
    assert vocab.token_ids == {"A": 0, "B": 1, "<pad>": 2, "<cls>": 3, "<eoc>": 4}


@pytest.mark.parametrize("change, message", [
    ({"nlayers": None}, "lacks nlayers"),
    ({"input_emb_style": "category"}, "input_emb_style is 'category'"),
    ({"embsize": 15}, "multiple of nheads"),
    ({"n_bins": "many"}, "malformed"),
])
def test_bad_args_are_refused(tmp_path, change, message):
    args = {k: v for k, v in dict(TINY_ARGS, **change).items() if v is not None}
    (tmp_path / "args.json").write_text(json.dumps(args))
    with pytest.raises(WeightsError, match=message):
        load_args(tmp_path)


@pytest.mark.parametrize("content, message", [
    ('{"A": 0, "B": 2}', "token ids must be 0..1"),
    ('["A"]', "JSON object"),
    ('{"A": 0', "cannot be read as JSON"),
])
def test_bad_vocabularies_are_refused(tmp_path, content, message):
    (tmp_path / "vocab.json").write_text(content)
    with pytest.raises(WeightsError, match=message):
        load_vocab(tmp_path)


def test_a_missing_file_names_the_checkpoint_layout(tmp_path):
    with pytest.raises(WeightsError, match="best_model.pt, args.json, vocab.json"):
        load_args(tmp_path)
