"""Fg, Fe, Fc and muP modules of the tokenizer lab on hand-worked cells and tiny files."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import torch

from czb_core.errors import InputError, WeightsError
from czb_core.tokenizer_lab.fc import (
    CLOSE_CHROM,
    FIRST_CHROM,
    ChromosomeMap,
    FcSpec,
    build_sentence,
    chromosome_map,
    group_by_chromosome,
    order_by_chromosome,
    order_by_expression,
    pad_sentences,
    resample_weighted,
)
from czb_core.tokenizer_lab.fe import AutoBinFe, FeSpec, build_fe, discretise, integer_bins, quantile_bins
from czb_core.tokenizer_lab.fg import FgSpec, FrozenFg, align_table, build_fg, read_gene_table, reduce_to_width
from czb_core.tokenizer_lab.mup import MuLinear, attention_scale
from czb_core.tokenizer_lab.presets import PRESETS, parse_tokenizer
from czb_core.tokenizer_lab.train import confusion_matrix, cosine_with_warmup, mcc_from_confusion
from czb_core.types import Organism

# -- Fc -------------------------------------------------------------------------------------------


def test_expression_order_is_descending_with_stable_ties():
    values_k = np.array([1.0, 3.0, 2.0, 3.0])
    assert order_by_expression(values_k).tolist() == [1, 3, 2, 0]


def test_median_normalised_order_ranks_by_value_minus_median():
    values_k = np.array([5.0, 2.0, 3.0])
    medians_k = np.array([4.5, 0.5, 1.0])  # residuals 0.5, 1.5, 2.0
    assert order_by_expression(values_k, medians_k).tolist() == [2, 1, 0]


CHROMS = ChromosomeMap(chrom_g=np.array([0, 1, 0, 1, 2, -1]), start_g=np.array([300, 50, 100, 10, 7, 0]),
                       names=("1", "2", "X"))


def test_chromosome_order_groups_chromosomes_and_sorts_by_start():
    genes_k = np.array([0, 1, 2, 3, 4])
    order = order_by_chromosome(genes_k, CHROMS, np.random.default_rng(0))
    chrom_seq = CHROMS.chrom_g[genes_k[order]]
    assert sorted(set(chrom_seq.tolist())) == [0, 1, 2]
    assert (np.diff(np.flatnonzero(np.diff(chrom_seq) != 0)) >= 1).all()  # each chromosome one contiguous run
    within = {c: CHROMS.start_g[genes_k[order]][chrom_seq == c].tolist() for c in (0, 1, 2)}
    assert within == {0: [100, 300], 1: [10, 50], 2: [7]}
    orders = {tuple(CHROMS.chrom_g[genes_k[order_by_chromosome(genes_k, CHROMS, np.random.default_rng(s))]])
              for s in range(30)}
    assert len(orders) > 1  # chromosome order is shuffled


def test_uce_grouping_wraps_each_chromosome_in_open_and_close_tokens():
    genes_s = np.array([2, 0, 3, 1, 0])
    positions, specials = group_by_chromosome(genes_s, CHROMS, np.random.default_rng(1))
    assert len(positions) == len(genes_s) + 2 * 2
    runs, current = [], None
    for pos, code in zip(positions, specials):
        if code >= FIRST_CHROM:
            current = [code - FIRST_CHROM, []]
        elif code == CLOSE_CHROM:
            runs.append(current)
        else:
            current[1].append(CHROMS.start_g[genes_s[pos]])
    assert sorted(r[0] for r in runs) == [0, 1]
    for chrom, starts in runs:
        assert starts == sorted(starts)
        assert len(starts) == {0: 3, 1: 2}[chrom]
    assert (positions[specials > 0] == -1).all() and (positions[specials == 0] >= 0).all()


def test_weighted_resampling_follows_log1p_weights():
    values_k = np.array([np.e - 1, np.e**3 - 1, 0.0])  # log1p weights 1, 3, 0
    picks = resample_weighted(values_k, 40_000, np.random.default_rng(0))
    share = np.bincount(picks, minlength=3) / len(picks)
    assert share[2] == 0
    assert share[0] == pytest.approx(0.25, abs=0.01) and share[1] == pytest.approx(0.75, abs=0.01)


def test_sentence_truncates_and_pads():
    spec = FcSpec("expression", "truncate", "sum", max_length=2)
    genes_k, values_k = np.array([4, 7, 9]), np.array([1.0, 5.0, 3.0], dtype=np.float32)
    s = build_sentence(spec, genes_k, values_k, values_k, np.random.default_rng(0))
    assert s.genes_l.tolist() == [7, 9] and s.values_l.tolist() == [5.0, 3.0]
    short = build_sentence(spec, genes_k[:1], values_k[:1], values_k[:1], np.random.default_rng(0))
    genes_bl, values_bl, special_bl = pad_sentences([s, short], pad_gene=10)
    assert genes_bl.tolist() == [[7, 9], [4, 10]] and values_bl[1, 1] == 0 and special_bl.sum() == 0


def test_uce_sentence_has_sample_size_genes_and_needs_coordinates():
    spec = FcSpec("chromosome", "uce", "identity", max_length=100, sample_size=12)
    genes_k, values_k = np.array([0, 1, 2, 3, 4]), np.ones(5, dtype=np.float32)
    s = build_sentence(spec, genes_k, values_k, values_k, np.random.default_rng(0), chroms=CHROMS)
    assert (s.special_l == 0).sum() == 12
    with pytest.raises(ValueError, match="gene coordinates"):
        build_sentence(spec, genes_k, values_k, values_k, np.random.default_rng(0))


def test_chromosome_map_from_bundled_coordinates():
    chroms = chromosome_map(np.array(["ENSG00000141510.17", "nope"]), np.array(["x", "BRCA1"]), Organism.HUMAN)
    assert chroms.known_g.all()  # TP53 by id, BRCA1 by symbol
    assert chroms.names[chroms.chrom_g[0]] == "chr17" and chroms.names[chroms.chrom_g[1]] == "chr17"
    assert chroms.start_g[1] > chroms.start_g[0]


def test_chromosome_map_refuses_species_without_coordinates():
    with pytest.raises(InputError, match="gene coordinates"):
        chromosome_map(np.array(["ENSGALG00000000003"]), np.array(["PANX2"]), Organism.CHICKEN)


# -- Fe -------------------------------------------------------------------------------------------


def test_quantile_bins_hand_worked():
    # 3 bins: edges at the cell's 1/3 and 2/3 quantiles of [1, 2, 3, 4] = 2.0 and 3.0
    bins = quantile_bins(np.array([1.0, 2.0, 3.0, 4.0]), 3, np.random.default_rng(0))
    assert bins.tolist() == [1.0, 2.0, 3.0, 3.0]


def test_quantile_bins_tie_draws_between_sides():
    values_k = np.array([1.0, 1.0, 1.0, 1.0, 5.0])  # every interior edge equals 1
    seen = set()
    for seed in range(20):
        seen |= set(quantile_bins(values_k, 4, np.random.default_rng(seed))[:4].tolist())
    assert seen <= {1.0, 2.0, 3.0, 4.0} and len(seen) > 1


def test_integer_bins_floor_and_clip():
    assert integer_bins(np.array([0.2, 1.9, 6.99, 9.5]), 7).tolist() == [0.0, 1.0, 6.0, 7.0]


def test_fe_modules_shapes_and_zero():
    values_bl = torch.tensor([[0.5, 2.0], [3.0, 0.0]])
    for kind in ("zero", "linear", "mlp", "quantile", "integer", "autobin"):
        out = build_fe(FeSpec(kind), 16, 16)(values_bl)
        assert out.shape == (2, 2, 16)
    assert build_fe(FeSpec("zero"), 8, 8)(values_bl).abs().sum() == 0
    assert discretise(FeSpec("linear"), np.array([1.5]), np.random.default_rng(0)).tolist() == [1.5]


def test_autobin_output_is_convex_mix_of_bin_vectors():
    fe = AutoBinFe(4, 5)
    with torch.no_grad():
        fe.bin_vectors.weight.copy_(torch.eye(5, 4) * 10)
    out = fe(torch.tensor([[1.0]]))[0, 0]
    assert out.sum().item() == pytest.approx(10 * (1 - torch.softmax(
        fe.second(torch.nn.functional.leaky_relu(fe.first(torch.tensor([[1.0]])), 0.1))
        + torch.nn.functional.leaky_relu(fe.first(torch.tensor([[1.0]])), 0.1), -1)[0, 4].item()), rel=1e-5)


# -- Fg -------------------------------------------------------------------------------------------

SYMBOLS = np.array(["TP53", "BRCA1", "EGFR", "MYC"])
IDS = np.array(["ENSG00000141510", "ENSG00000012048", "ENSG00000146648", "ENSG00000136997"])


def test_readers_on_tiny_files(tmp_path):
    vec = {"tp53": [1.0, 2.0, 3.0], "BRCA1": [4.0, 5.0, 6.0], "EGFR": [7.0, 8.0, 9.5]}
    torch.save({k: torch.tensor(v) for k, v in vec.items()}, tmp_path / "Homo_sapiens.ESM2.pt")
    (tmp_path / "genept.pickle").write_bytes(pickle.dumps(vec, protocol=4))
    (tmp_path / "gene2vec.txt").write_text("3 3\n" + "".join(f"{k}\t{' '.join(map(str, v))}\n" for k, v in vec.items()))
    with h5py.File(tmp_path / "homo_sapiens_gene.h5", "w") as fh:
        keys = ["ENSG00000141510.17", "ENSG00000012048", "ENSG00000146648"]
        fh.create_dataset("keys", data=np.array([k.encode() for k in keys]))
        for k, v in zip(keys, vec.values()):
            fh.create_dataset(f"arrays/{k}", data=np.array(v, dtype=np.float32))
    for name in ("Homo_sapiens.ESM2.pt", "genept.pickle", "gene2vec.txt", "homo_sapiens_gene.h5"):
        table = read_gene_table(tmp_path / name)
        vectors_gd, covered_g = align_table(table, IDS, SYMBOLS)
        assert covered_g.tolist() == [True, True, True, False], name
        np.testing.assert_allclose(vectors_gd, np.array(list(vec.values())), err_msg=name)


def test_table_covering_under_half_is_refused(tmp_path):
    torch.save({"TP53": torch.ones(3)}, tmp_path / "t.pt")
    with pytest.raises(InputError, match="covers 1 of 4 genes"):
        build_fg(FgSpec("esm2", str(tmp_path / "t.pt")), IDS, SYMBOLS, 3)


def test_bad_table_files_are_refused(tmp_path):
    (tmp_path / "bad.txt").write_text("TP53 1 x\n")
    with pytest.raises(WeightsError, match="line 1"):
        read_gene_table(tmp_path / "bad.txt")
    (tmp_path / "ragged.txt").write_text("TP53 1 2\nMYC 1\n")
    with pytest.raises(WeightsError, match="one length"):
        read_gene_table(tmp_path / "ragged.txt")
    with pytest.raises(InputError, match="unknown gene-table format"):
        (tmp_path / "t.csv").write_text("")
        read_gene_table(tmp_path / "t.csv")


def test_pca_reduction_keeps_the_leading_directions():
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(50, 2)) * [10.0, 5.0]
    vectors_gd = latent @ rng.normal(size=(2, 6)) + rng.normal(size=(50, 6)) * 1e-3
    reduced = reduce_to_width(vectors_gd, 2)
    assert reduced.shape == (50, 2)
    centred = vectors_gd - vectors_gd.mean(0)
    assert (reduced**2).sum() == pytest.approx((centred**2).sum(), rel=1e-4)
    with pytest.raises(InputError, match="fewer than the model width"):
        reduce_to_width(vectors_gd, 8)


def test_frozen_fg_is_not_trained_and_pads_with_zero():
    fg = FrozenFg(np.ones((2, 3), dtype=np.float32), np.array([True, False, True]))
    assert list(fg.parameters()) == []
    out = fg(torch.tensor([0, 1, 2, 3]))
    assert out.sum(dim=1).tolist() == [3.0, 0.0, 3.0, 0.0]


# -- muP, metrics, schedule, presets --------------------------------------------------------------


def test_mulinear_equals_plain_linear_at_base_width_and_scales_beyond():
    torch.manual_seed(0)
    base = MuLinear(128, 128, "hidden", 128)
    assert base.weight_multiplier == 1.0
    assert base.weight.std().item() == pytest.approx(1 / np.sqrt(128), rel=0.05)
    wide = MuLinear(512, 512, "hidden", 128)
    assert wide.weight_multiplier == pytest.approx(0.25)
    assert wide.weight.std().item() == pytest.approx(1 / np.sqrt(512), rel=0.05)  # same fan-in init
    x = torch.randn(4, 512)
    wide(x).sum().backward()
    expected = (x.sum(0)[None, :].expand(512, 512)) * 0.25 * 16  # chain rule x multiplier x (n/n0)^2
    torch.testing.assert_close(wide.weight_unscaled.grad, expected, rtol=1e-4, atol=1e-4)
    out = MuLinear(512, 10, "output", 128)
    assert out.weight.std().item() == pytest.approx(np.sqrt(128) / 512, rel=0.1)  # 1/n scaling
    assert attention_scale(32, 32) == pytest.approx(1 / np.sqrt(32))
    assert attention_scale(128, 32) == pytest.approx(np.sqrt(32) / 128)


def test_mcc_matches_the_definition():
    from sklearn.metrics import matthews_corrcoef

    rng = np.random.default_rng(0)
    true_n, pred_n = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    pred_n[:150] = true_n[:150]
    counts_cc = confusion_matrix(true_n, pred_n, 4)
    assert counts_cc.sum() == 300 and np.trace(counts_cc) == (true_n == pred_n).sum()
    assert mcc_from_confusion(counts_cc) == pytest.approx(matthews_corrcoef(true_n, pred_n))
    assert mcc_from_confusion(confusion_matrix(true_n, np.zeros(300, dtype=int), 4)) == 0.0


def test_cosine_schedule_warms_up_then_decays_to_zero():
    f = cosine_with_warmup(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)


def test_presets_and_composition():
    assert PRESETS["geneformer"].fe.kind == "zero" and PRESETS["geneformer"].fc.median_normalise
    assert PRESETS["uce"].fc.tailor == "uce" and PRESETS["uce"].fc.max_length == 1024
    spec = parse_tokenizer("fg=gene2vec:/x.txt,fe=quantile,fc=random,max=300")
    assert (spec.fg.kind, spec.fg.path, spec.fe.bins, spec.fc.order, spec.fc.max_length) == (
        "gene2vec", "/x.txt", 50, "random", 300)
    from czb_core.errors import ConfigError

    for bad in ("bert", "fe=nope", "fc=diagonal", "fg=genept", "colour=red"):
        with pytest.raises(ConfigError):
            parse_tokenizer(bad)
