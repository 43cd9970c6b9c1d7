"""Geneformer's dictionaries, restricted unpickler and rank-value tokenizer, against hand-worked cells.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from czb_core.errors import ConfigError, InputError, WeightsError
from czb_core.models import tokens as tokens_module
from czb_core.models.params import parse_list
from czb_core.models.safe_pickle import UnsafePickleError, load_pickle
from model_runners.geneformer.dictionaries import GeneDictionaries, load_dictionaries
from model_runners.geneformer.perturbation import resolve_perturbation, token_map
from model_runners.geneformer.tokenizer import Perturbation, RankValueTokenizer, TokenizerSpec
from tests.helpers.geneformer_files import (
    FILES,
    V1_SPECIALS,
    V2_SPECIALS,
    Exploit,
    as_lists,
    dictionary_contents,
    reference_tokens,
    write_dictionaries,
)

# ----------------------------------------------------------------------------- a hand-worked example

GENES = ["ENSG00000000001", "ENSG00000000002", "ENSG00000000003", "ENSG00000000004", "ENSG00000000005"]
A, B, C, D, E = GENES
MEDIANS = {A: 1.0, B: 2.0, C: 1.0, D: 0.5, E: 4.0}
SYMBOLS = {"GeneA": A, "GeneB": B}
RETIRED = {"ENSG00000099999": C}  # a retired id that now maps to C
# columns: A with a version suffix, B by symbol (lower case), C, the retired id of C, a gene the model
# does not know, D
NAMES = [A + ".7", "geneb", C, "ENSG00000099999", "ENSG00000077777", D]
X = sp.csr_matrix(np.array([
    [2, 4, 1, 1, 100, 0],  # A = B = C (=1+1) in x_norm: a three-way tie, broken by token order
    [1, 0, 0, 0, 0, 1],  # D (median 0.5) before A
    [0, 0, 0, 0, 5, 0],  # only an unknown gene: no tokens
    [0, 0, 0, 0, 0, 0],  # no counts at all
    [0, 0, 3, 0, 0, 2],  # C (3) before D (2 / 0.5 = 4 > 3): D first
], dtype=np.float32))


def hand_dictionaries(specials=V2_SPECIALS) -> GeneDictionaries:
    token, median, mapping = dictionary_contents(GENES, specials, MEDIANS, SYMBOLS, RETIRED)
    return GeneDictionaries(token, median, mapping, len(specials), source="test")


def v2_spec(input_size=4096) -> TokenizerSpec:
    return TokenizerSpec(input_size=input_size, cls_token=2, eos_token=3)


def test_dictionary_lookups_strip_versions_upper_case_and_map_symbols_and_retired_ids():
    d = hand_dictionaries()
    assert d.tokens_of(NAMES).tolist() == [4, 5, 6, 6, -1, 7]
    assert d.special("<cls>") == 2 and d.vocab_size == 9
    assert {A, B, "GENEA", "GENEB", "ENSG00000099999"} <= d.accepted_names
    assert "ENSG00000077777" not in d.accepted_names and "<CLS>" not in d.accepted_names


def test_v2_tokens_by_hand():
    cells = RankValueTokenizer(hand_dictionaries(), v2_spec()).tokenize(X, NAMES)
    assert as_lists(cells) == [[2, 4, 5, 6, 3], [2, 7, 4, 3], [2, 3], [2, 3], [2, 7, 6, 3]]
    assert cells.n_genes.tolist() == [3, 2, 0, 0, 2]


def test_v1_tokens_have_no_specials_and_truncate_to_the_input_size():
    d = hand_dictionaries(V1_SPECIALS)
    cells = RankValueTokenizer(d, TokenizerSpec(input_size=2)).tokenize(X, NAMES)
    # V1 ids are 2 lower (two special tokens); the first cell keeps its top two of three genes
    assert as_lists(cells) == [[2, 3], [5, 2], [], [], [5, 4]]
    assert cells.n_genes.tolist() == [3, 2, 0, 0, 2]


def test_v2_truncation_keeps_cls_and_eos():
    cells = RankValueTokenizer(hand_dictionaries(), v2_spec(input_size=4)).tokenize(X, NAMES)
    assert as_lists(cells)[0] == [2, 4, 5, 3]


def test_ties_follow_token_order_whatever_the_column_order():
    d = hand_dictionaries()
    order = [5, 3, 1, 0, 4, 2]
    shuffled = RankValueTokenizer(d, v2_spec()).tokenize(X[:, order], [NAMES[i] for i in order])
    assert as_lists(shuffled) == as_lists(RankValueTokenizer(d, v2_spec()).tokenize(X, NAMES))


def test_n_counts_covers_every_input_gene_and_obs_n_counts_overrides_it():
    tokenizer = RankValueTokenizer(hand_dictionaries(), v2_spec())
    x_norm = tokenizer.normalized(X, NAMES).toarray()
    # cell 0: 108 counts in all, 100 of them on a gene the model does not know
    assert x_norm[0, 4] == pytest.approx(2 / 108 * 10_000 / 1.0)
    assert x_norm[0, 6] == pytest.approx((1 + 1) / 108 * 10_000 / 1.0)  # two columns of C, summed
    assert x_norm[0, 5] == pytest.approx(4 / 108 * 10_000 / 2.0)
    given = tokenizer.normalized(X, NAMES, n_counts_n=np.array([1000, 2, 5, 1, 5]))
    assert given.toarray()[0, 4] == pytest.approx(2 / 1000 * 10_000)
    # a per-cell factor cannot change a ranking
    rescaled = tokenizer.tokenize(X, NAMES, np.array([1000, 2, 5, 1, 5]))
    assert as_lists(rescaled) == as_lists(tokenizer.tokenize(X, NAMES))
    with pytest.raises(InputError, match="n_counts"):
        tokenizer.tokenize(X, NAMES, np.array([0, 2, 5, 1, 5]))


def test_stored_zeros_are_not_genes_repeated_entries_sum_and_negative_values_are_refused():
    with_zero = sp.csr_matrix((np.array([0.0, 3.0]), np.array([0, 5]), np.array([0, 2])), shape=(1, 6))
    assert as_lists(RankValueTokenizer(hand_dictionaries(), v2_spec()).tokenize(with_zero, NAMES)) == [[2, 7, 3]]
    repeated = sp.csr_matrix((np.array([1.0, 1.0, 3.0]), np.array([0, 0, 5]), np.array([0, 3])), shape=(1, 6))
    assert not repeated.has_canonical_format  # A stored twice: summed to 2, still below D (3 / 0.5)
    assert as_lists(RankValueTokenizer(hand_dictionaries(), v2_spec()).tokenize(repeated, NAMES)) == [[2, 7, 4, 3]]
    with pytest.raises(InputError, match="negative"):
        RankValueTokenizer(hand_dictionaries(), v2_spec()).tokenize(-X, NAMES)


def test_perturbation_by_hand():
    d = hand_dictionaries()
    tokenizer = RankValueTokenizer(d, v2_spec())
    deleted = tokenizer.tokenize(X, NAMES, perturbation=Perturbation(deleted=(4,)))
    assert as_lists(deleted)[:2] == [[2, 5, 6, 3], [2, 7, 3]]
    activated = tokenizer.tokenize(X, NAMES, perturbation=Perturbation(activated=(8, 6)))
    assert as_lists(activated)[:3] == [[2, 8, 6, 4, 5, 3], [2, 8, 6, 7, 4, 3], [2, 8, 6, 3]]
    masked = tokenizer.tokenize(X, NAMES, perturbation=Perturbation(mapped={4: 1}))
    assert as_lists(masked)[:2] == [[2, 1, 5, 6, 3], [2, 7, 1, 3]]
    unchanged = tokenizer.tokenize(X, NAMES, perturbation=Perturbation(deleted=(8,)))  # E is expressed nowhere
    assert not unchanged.differs_from(tokenizer.tokenize(X, NAMES)).any()
    assert deleted.differs_from(tokenizer.tokenize(X, NAMES)).tolist() == [True, True, False, False, False]


def test_perturbation_params_parse_text_and_python_values():
    d = hand_dictionaries()
    assert parse_list(" TP53, ,MYC ") == ("TP53", "MYC") and parse_list(["A"]) == ("A",)
    assert token_map("GENEA=<mask>, ENSG00000000002=0") == {"GENEA": "<mask>", "ENSG00000000002": "0"}
    assert token_map({"GENEA": 1}) == {"GENEA": "1"}
    with pytest.raises(ValueError, match="GENE=TOKEN"):
        token_map("GENEA")
    p = resolve_perturbation(d, "genea", [E + ".3"], "GeneB=<mask>,ENSG00000099999=0")
    assert p == Perturbation(deleted=(4,), activated=(8,), mapped={5: 1, 6: 0})
    assert resolve_perturbation(d, "", (), None) is None
    with pytest.raises(ConfigError, match="not in Geneformer's vocabulary: NOPE, ENSG00000077777"):
        resolve_perturbation(d, "NOPE,ENSG00000077777")
    with pytest.raises(ConfigError, match="both deleted and activated"):
        resolve_perturbation(d, "GeneA", "GeneA")
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        resolve_perturbation(d, mapping="GeneA=99")


def test_tokenizer_equals_the_reference_on_random_data():
    rng = np.random.default_rng(3)
    genes = [f"ENSG{i:011d}" for i in range(1, 301)]
    # half the genes share power-of-two medians, so ties are many and exact in any float formula; values
    # that are equal only on paper (3 / 1.5 vs 2 / 1.0) differ by rounding, which the reference's exact
    # float64 sort follows and the tokenizer mostly does not (see the near-ties test): this data has none
    medians = dict(zip(genes, np.where(rng.random(300) < 0.5, rng.choice([0.5, 1.0, 2.0, 4.0], 300),
                                       rng.lognormal(0, 1, 300))))
    contents = dictionary_contents(genes[:250], V2_SPECIALS, medians, retired={"ENSG00000999999": genes[7]})
    names = genes + ["ENSG00000999999.2", genes[9]]  # a retired id and a duplicated column
    x = sp.random(120, len(names), density=0.3, random_state=4, data_rvs=lambda n: rng.integers(0, 6, n)).tocsr()
    d = GeneDictionaries(*contents, n_special=4)
    for size in (4096, 20):
        cells = RankValueTokenizer(d, v2_spec(size)).tokenize(x, names)
        assert as_lists(cells) == reference_tokens(x, names, contents, size, True)


@pytest.mark.parametrize("workers", [1, 3])
def test_large_cells_equal_the_reference_whatever_the_thread_split(monkeypatch, workers):
    """Cells of hundreds of genes, a third of them in groups of exactly equal values (one count value over
    a median of 1): the bucket sort's crowded buckets, truncation, and rows split between threads whose
    outputs close up where unknown genes and columns of a shared gene left room."""
    monkeypatch.setattr(tokens_module, "worker_count", lambda: workers)
    rng = np.random.default_rng(5)
    genes = [f"ENSG{i:011d}" for i in range(1, 1501)]
    medians = dict(zip(genes, np.where(rng.random(1500) < 0.3, 1.0, rng.lognormal(0, 1, 1500))))
    contents = dictionary_contents(genes[:1400], V2_SPECIALS, medians)
    names = genes + genes[:50]  # 100 genes the model does not know, 50 genes in two columns each
    d = GeneDictionaries(*contents, n_special=4)
    x = sp.random(30, len(names), density=0.3, random_state=6, data_rvs=lambda n: rng.integers(1, 4, n)).tocsr()
    for size in (4096, 300):
        cells = RankValueTokenizer(d, v2_spec(size)).tokenize(x, names)
        assert as_lists(cells) == reference_tokens(x, names, contents, size, True)


def test_near_ties_follow_the_sort_keys_grid_not_float64_rounding():
    """The rule exactly: values whose doubles agree in all but the last 15 mantissa bits (the bits the
    token takes in the sort key) are ties, in token order; other values rank by value, however close.

    10 counts over a median of 10 and 1 count over a median of 1 are the same x_norm on paper; float64
    puts the first one ulp higher, inside one grid step, so token order decides. 49 counts over a median
    of 49 come out one ulp below 1 count over a median of 1, across a grid line: the value decides.
    """
    genes = ["ENSG00000000001", "ENSG00000000002"]
    tokenizer = RankValueTokenizer(GeneDictionaries(*dictionary_contents(
        genes, V2_SPECIALS, dict(zip(genes, [1.0, 10.0]))), n_special=4), v2_spec())
    scale = 10_000 / 11
    assert 10 * scale * (1 / 10.0) > 1 * scale * (1 / 1.0)  # a float64 argsort would put the second gene first
    x = sp.csr_matrix(np.array([[1.0, 10.0]]))
    assert as_lists(tokenizer.tokenize(x, genes)) == [[2, 4, 5, 3]]
    assert as_lists(tokenizer.tokenize(x[:, ::-1], genes[::-1])) == [[2, 4, 5, 3]]
    tokenizer = RankValueTokenizer(GeneDictionaries(*dictionary_contents(
        genes, V2_SPECIALS, dict(zip(genes, [49.0, 1.0]))), n_special=4), v2_spec())
    scale = 10_000 / 50
    assert 49 * scale * (1 / 49.0) < 1 * scale * (1 / 1.0)
    assert as_lists(tokenizer.tokenize(sp.csr_matrix(np.array([[49.0, 1.0]])), genes)) == [[2, 5, 4, 3]]


def test_nan_and_infinite_counts_are_refused():
    tokenizer = RankValueTokenizer(hand_dictionaries(), v2_spec())
    for bad, column in ((np.nan, 1), (np.inf, 1), (np.inf, 4)):  # 4: a gene the model does not know
        x = X.toarray()
        x[0, column] = bad
        with pytest.raises(InputError, match="NaN or infinite"):
            tokenizer.tokenize(sp.csr_matrix(x), NAMES)
    with pytest.raises(InputError, match="n_counts"):
        tokenizer.tokenize(X, NAMES, np.array([np.inf, 2, 5, 1, 5]))


# ----------------------------------------------------------------------------- dictionaries on disk


def test_dictionaries_load_from_nested_folders_with_the_restricted_unpickler(tmp_path):
    contents = dictionary_contents(GENES, V1_SPECIALS, MEDIANS, SYMBOLS)
    write_dictionaries(tmp_path / "dicts" / "gene_dictionaries_30m", "gc30M", contents)
    d = load_dictionaries(tmp_path / "dicts", FILES["gc30M"], n_special=2)
    assert d.tokens_of([A, "genea"]).tolist() == [2, 2]
    assert load_dictionaries(tmp_path / "dicts", FILES["gc30M"], n_special=2) is d  # read once per version
    with pytest.raises(WeightsError, match="token_dictionary_gc95M.pkl is missing"):
        load_dictionaries(tmp_path / "dicts", FILES["gc95M"], n_special=4)


def test_dictionaries_of_the_wrong_family_are_refused(tmp_path):
    write_dictionaries(tmp_path, "gc30M", dictionary_contents(GENES, V1_SPECIALS, MEDIANS))
    with pytest.raises(WeightsError, match="expected 4 special tokens first"):
        load_dictionaries(tmp_path, FILES["gc30M"], n_special=4)
    token, median, mapping = dictionary_contents(GENES, V2_SPECIALS, MEDIANS)
    del median[B]
    with pytest.raises(WeightsError, match="1 genes of the token dictionary have no positive median"):
        GeneDictionaries(token, median, mapping, 4)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_rebuilds_numpy_scalars_in_both_numpy_spellings(tmp_path, protocol):
    value = {"<pad>": np.int64(0), "ENSG1": np.float64(1.25), "f": np.float32(2.5), "s": "x", "n": [1, 2.0]}
    data = pickle.dumps(value, protocol=protocol)
    (tmp_path / "new.pkl").write_bytes(data)
    assert load_pickle(tmp_path / "new.pkl") == value
    if protocol == 2:  # text opcodes: rewrite into the numpy 1.x module name the real files use
        (tmp_path / "old.pkl").write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
        loaded = load_pickle(tmp_path / "old.pkl")
        assert loaded == value and type(loaded["ENSG1"]) is np.float64


def test_restricted_unpickler_refuses_code_and_arrays_and_reports_truncation(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"ENSG1": Exploit(marker)}))
    with pytest.raises(UnsafePickleError, match="evil.pkl: refusing to load posix.system"):
        load_pickle(tmp_path / "evil.pkl")
    assert not marker.exists()
    (tmp_path / "array.pkl").write_bytes(pickle.dumps({"a": np.arange(3)}))
    with pytest.raises(UnsafePickleError, match="refusing to load numpy"):
        load_pickle(tmp_path / "array.pkl")
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps({"a": 1.0, "b": "x" * 100})[:20])
    with pytest.raises(WeightsError, match="cut.pkl cannot be read as a pickle"):
        load_pickle(tmp_path / "cut.pkl")
