"""The tokenizer lab's ESM-2 Fg finds a gene table in model weights already in the cache, through each
runner's own knowledge of its files (here UCE's model files, imported as an admin would), and says what to
do when none is there."""

from __future__ import annotations

import pytest

from czb_core.errors import InputError
from czb_core.models.weights import WeightsCache
from czb_core.models.weights_admin import import_weights
from czb_core.tokenizer_lab.fg import cached_esm2_path, read_gene_table
from czb_core.types import Organism
from tests.helpers.uce_files import SpeciesGenes, write_model_files

HUMAN_TABLE = "Homo_sapiens.GRCh38.gene_symbol_to_embedding_ESM2.pt"


def test_the_lab_reads_the_esm2_table_of_cached_uce_model_files(tmp_path, monkeypatch):
    root = tmp_path / "data"
    monkeypatch.setenv("CZB_DATA_ROOTS", str(root))
    with pytest.raises(InputError, match="no cached ESM-2 gene table for homo_sapiens"):
        cached_esm2_path(Organism.HUMAN)
    human = SpeciesGenes("human", HUMAN_TABLE, ["TP53", "GAPDH", "ACTB"], ["17", "12", "7"],
                         [7_661_779, 6_534_512, 5_526_409])
    write_model_files(root / "model_files", [human], token_dim=8)
    [entry] = import_weights("uce", "4l", root / "model_files", role="model_files")

    path = cached_esm2_path(Organism.HUMAN)
    assert path == WeightsCache().cached_files(entry.uri) / "protein_embeddings" / HUMAN_TABLE
    table = read_gene_table(path)
    assert set(table.keys) == {"TP53", "GAPDH", "ACTB"} and table.vectors_gd.shape == (3, 8)
    with pytest.raises(InputError, match="mus_musculus"):  # the files hold no mouse table
        cached_esm2_path(Organism.MOUSE)


def test_transcriptformer_names_its_gene_table_of_a_species(tmp_path):
    from czb_core.models.registry import get_model
    from tests.helpers.transcriptformer_files import write_checkpoint

    config = get_model("transcriptformer")
    folder = write_checkpoint(tmp_path / "tf", {"homo_sapiens": ["ENSG00000141510", "ENSG00000111640"]}, seed=0)
    runner = config.load_implementation()
    found = runner.esm2_gene_table(config.variant(), {"model": tmp_path / "tf"}, Organism.HUMAN)
    assert found is not None and found.name == "homo_sapiens_gene.h5" and found.is_relative_to(folder)
    assert runner.esm2_gene_table(config.variant(), {"model": tmp_path / "tf"}, Organism.MOUSE) is None
    assert runner.esm2_gene_table(config.variant(), {}, Organism.HUMAN) is None
