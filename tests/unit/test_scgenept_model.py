"""scGenePT pieces without a server: the perturbation grammar and flags, close names, the training screen's
genes from GEARS files, the checkpoint checks, and the variants of the real config."""

from __future__ import annotations

import numpy as np
import pytest

from czb_core.errors import ConfigError, WeightsError
from czb_core.models.registry import get_model
from model_runners.scgenept.inference import load_network
from model_runners.scgenept.perturbation import (
    close_names,
    flags_of,
    parse_perturbation,
    read_training_conditions,
    trained_genes,
)
from tests.helpers.scgenept_files import CHECKPOINT_NAME, HEADS, write_checkpoint, write_gears_zip


@pytest.mark.parametrize("text, genes", [("CEBPB+ctrl", ("CEBPB",)), ("ctrl+CEBPB", ("CEBPB",)),
                                         (" FOSB + CEBPB ", ("FOSB", "CEBPB"))])
def test_perturbations_parse(text, genes):
    assert parse_perturbation(text).genes == genes


@pytest.mark.parametrize("text", ["", "ctrl", "ctrl+ctrl", "CEBPB", "A+B+C", "A+A", "A+"])
def test_malformed_perturbations_are_refused(text):
    with pytest.raises(ConfigError, match="GENE\\+ctrl or GENE1\\+GENE2"):
        parse_perturbation(text)


def test_flags_mark_each_perturbed_gene_on_the_axis():
    axis = np.array(["A", "B", "C", "D"])
    np.testing.assert_array_equal(flags_of(parse_perturbation("C+ctrl"), axis), [0, 0, 1, 0])
    np.testing.assert_array_equal(flags_of(parse_perturbation("D+A"), axis), [1, 0, 0, 1])
    with pytest.raises(ConfigError, match="not on the gene axis"):
        flags_of(parse_perturbation("E+ctrl"), axis)


def test_close_names_ignore_case_and_rank_by_similarity():
    names = ["CEBPB", "CEBPA", "CEBPG", "TP53", "MYC"]
    assert close_names("cebpb", names)[0] == "CEBPB"
    assert "TP53" not in close_names("CEBPZ", names)
    assert close_names("QQQQ", names) == []


def test_training_genes_from_the_gears_zip_and_folder(tmp_path):
    conditions = ["ctrl", "A+ctrl", "B+C", "ctrl+D"]
    write_gears_zip(tmp_path / "zip", "norman", conditions)
    assert read_training_conditions(tmp_path / "zip") == sorted(conditions)
    assert trained_genes(conditions) == {"A", "B", "C", "D"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="perturb_processed.h5ad"):
        read_training_conditions(tmp_path / "empty")


def test_checkpoint_sizes_come_from_the_tensors(tmp_path):
    folder = write_checkpoint(tmp_path / "m", 30, ["genept_encoder"])
    model = load_network(folder, HEADS, ["genept_encoder"])
    assert model.vocab_size == 33 and len(model.network.transformer_encoder.layers) == 2
    assert model.network.genept_encoder.proj_layer.in_features == 12


def test_incomplete_or_mismatched_checkpoints_are_refused(tmp_path):
    write_checkpoint(tmp_path / "a", 30, ["gopt_encoder_c"], drop=["decoder.fc.4.weight"])
    with pytest.raises(WeightsError, match="decoder.fc.4.weight"):
        load_network(tmp_path / "a", HEADS, ["gopt_encoder_c"])
    write_checkpoint(tmp_path / "b", 30, ["gopt_encoder_c"])
    with pytest.raises(WeightsError, match="another scGenePT flavour"):
        load_network(tmp_path / "b", HEADS, ["genept_encoder"])
    write_checkpoint(tmp_path / "b", 30, [], seed=3)
    (tmp_path / "b" / "best_model_seed_42.pt").write_bytes((tmp_path / "b" / CHECKPOINT_NAME).read_bytes())
    with pytest.raises(WeightsError, match="exactly one"):
        load_network(tmp_path / "b", HEADS, [])


def test_every_published_flavour_and_screen_is_a_variant():
    config = get_model("scgenept")
    assert len(config.variants) == 14
    go_all = config.variant("scgenept_go_all_gpt_concat__norman")
    assert go_all.resources["text_encoders"] == ["gopt_encoder_f"]  # the authors' attribute name for GO-all
    assert go_all.weights["model"] == "s3://czi-scgenept-public/models/finetuned/scgenept_go_all/norman"
    assert config.variant("scgpt__adamson").resources["text_encoders"] == []
