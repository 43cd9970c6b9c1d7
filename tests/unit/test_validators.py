"""Every check of BaseSingleCellValidator, on headers of generated files."""

import numpy as np
import pytest
import scipy.sparse as sp

from czb_core.errors import DatasetValidationError
from czb_core.io.header import read_header
from czb_core.schema.datasets import SingleCellDataset
from czb_core.schema.report import Severity
from czb_core.schema.validators import BaseSingleCellValidator
from czb_core.types import ModelType, Organism
from tests.helpers.data import log_normalised


class HumanEnsemblValidator(BaseSingleCellValidator):
    """Like Geneformer's: human only, Ensembl ids, raw counts, a vocabulary."""

    model_type = ModelType.GENEFORMER
    display_name = "TestFormer"
    available_organisms = (Organism.HUMAN,)
    required_obs_keys = ("donor_id",)
    required_var_keys = ()
    gene_id_kind = "ensembl"

    def __init__(self, vocab=None):
        self._vocab = vocab

    def vocabulary(self, weights_dirs):
        return self._vocab


class SymbolValidator(BaseSingleCellValidator):
    model_type = ModelType.SCGPT
    display_name = "TestGPT"
    available_organisms = (Organism.HUMAN,)
    required_obs_keys = ()
    required_var_keys = ("feature_name",)
    gene_id_kind = "symbol"


def codes(report):
    return {p.code for p in report.problems}


def test_subclass_missing_a_required_attribute_fails_at_class_creation():
    with pytest.raises(TypeError, match="required_var_keys"):
        class Broken(BaseSingleCellValidator):  # noqa: F841
            model_type = ModelType.UCE
            available_organisms = None
            required_obs_keys = ()


def test_a_fitting_dataset_passes_with_facts(small_h5ad):
    report = HumanEnsemblValidator().check(read_header(small_h5ad))
    assert report.ok, report.format_text()
    assert report.organism is Organism.HUMAN
    assert "detected" in report.facts["organism"]
    assert report.status("raw counts") == "ok"


def test_mouse_ids_on_a_human_only_model(small_adata, write_h5ad):
    mouse = small_adata.copy()
    mouse.var_names = [f"ENSMUSG{i:011d}" for i in range(mouse.n_vars)]
    report = HumanEnsemblValidator().check(read_header(write_h5ad(mouse)))
    (problem,) = [p for p in report.errors if p.code == "organism_unsupported"]
    assert "TestFormer supports homo_sapiens" in problem.message and "mus_musculus" in problem.message
    assert problem.fix


def test_given_organism_contradicted_by_ids(small_h5ad):
    report = HumanEnsemblValidator().check(read_header(small_h5ad), Organism.MOUSE)
    (mismatch,) = [p for p in report.problems if p.code == "organism_mismatch"]
    assert mismatch.severity is Severity.WARNING  # the user's choice stands, with both figures beside it
    assert "organism set to mouse, but the gene names say human" in mismatch.message
    assert "human explains" in mismatch.message and "mouse explains" in mismatch.message
    assert "organism_unsupported" in codes(report)  # and a human-only model refuses what was set


def test_symbols_where_ids_are_needed(small_adata, write_h5ad):
    symbols = small_adata.copy()
    symbols.var_names = symbols.var["feature_name"].astype(str).to_numpy()
    symbols.var = symbols.var.drop(columns="feature_name")
    report = HumanEnsemblValidator().check(read_header(write_h5ad(symbols)), Organism.HUMAN)
    (problem,) = [p for p in report.errors if p.check == "gene ids"]
    assert problem.code == "symbols_not_ids" and "Ensembl" in problem.message
    assert "map symbols" in problem.fix.lower()


def test_ids_read_from_a_var_column(small_adata, write_h5ad):
    adata = small_adata.copy()
    adata.var["ensembl_id"] = adata.var_names.to_numpy()
    adata.var_names = adata.var["feature_name"].astype(str).to_numpy()
    report = HumanEnsemblValidator().check(read_header(write_h5ad(adata)), Organism.HUMAN)
    assert report.ok and report.facts["genes read from"] == "var['ensembl_id']"


def test_symbol_model_reads_feature_name(small_h5ad):
    assert SymbolValidator().check(read_header(small_h5ad)).ok


def test_float_and_negative_values_are_not_counts(small_adata, write_h5ad):
    report = HumanEnsemblValidator().check(read_header(write_h5ad(log_normalised(small_adata))))
    (problem,) = [p for p in report.errors if p.code == "not_raw_counts"]
    assert "non-integer" in problem.message and "layers['counts']" in problem.fix
    scaled = small_adata.copy()
    scaled.X = (small_adata.X.toarray() - 3.0).astype(np.float32)
    report = HumanEnsemblValidator().check(read_header(write_h5ad(scaled)))
    assert any("negative" in p.message for p in report.errors)


def test_duplicate_ids_after_version_stripping(small_adata, write_h5ad):
    dup = small_adata.copy()
    names = dup.var_names.to_numpy().copy()
    names[1] = names[0] + ".7"
    dup.var_names = names
    report = HumanEnsemblValidator().check(read_header(write_h5ad(dup)))
    assert "duplicate_genes" in codes(report)
    assert report.status("duplicate genes") == "error"


def test_nan_values_and_empty_cells(small_adata, write_h5ad):
    bad = small_adata.copy()
    x = bad.X.toarray()
    x[:, 0] = np.nan  # every row, so any sample sees it
    x[3] = 0
    bad.X = sp.csr_matrix(x)
    report = HumanEnsemblValidator().check(read_header(write_h5ad(bad)))
    assert "nonfinite_values" in codes(report)
    empty = small_adata.copy()
    xe = empty.X.tolil()
    xe[[1, 2], :] = 0
    empty.X = sp.csr_matrix(xe)
    report = HumanEnsemblValidator().check(read_header(write_h5ad(empty)))
    (warning,) = [p for p in report.problems if p.code == "empty_cells"]
    assert warning.severity is Severity.WARNING and warning.message.startswith("2 cells")


def test_missing_obs_key_and_vocabulary_overlap(small_adata, write_h5ad):
    adata = small_adata.copy()
    del adata.obs["donor_id"]
    path = write_h5ad(adata)
    ids = list(small_adata.var_names)
    validator = HumanEnsemblValidator(vocab=set(ids[:150]))
    manager = validator.data_manager(read_header(path))
    report = validator.check(manager)
    assert "missing_obs_key" in codes(report)
    assert "vocabulary" not in report.checks_run  # check() never needs the model's files
    validator.check_weights(manager, report, {})
    assert "partial_vocabulary_overlap" in codes(report)
    assert report.facts["vocabulary overlap"].startswith("50.0%")
    unknown = HumanEnsemblValidator(vocab={"ENSG_X"})
    report = unknown.check(manager)
    unknown.check_weights(manager, report, {})
    assert "no_vocabulary_overlap" in codes(report)


def test_validate_dataset_raises_one_error_listing_every_problem(small_adata, write_h5ad):
    adata = log_normalised(small_adata)
    del adata.obs["donor_id"]
    ds = SingleCellDataset(write_h5ad(adata), Organism.MOUSE)
    ds.load_data()
    with pytest.raises(DatasetValidationError) as info:
        HumanEnsemblValidator().validate_dataset(ds)
    text = str(info.value)
    assert isinstance(info.value, ValueError)
    for code in ("organism_unsupported", "missing_obs_key", "not_raw_counts"):
        assert code in text
    assert len(info.value.report.errors) >= 3


def test_validate_dataset_checks_the_dataset_type():
    with pytest.raises(TypeError, match="expects a SingleCellDataset"):
        HumanEnsemblValidator().validate_dataset(object())


def test_a_small_panel_against_a_whole_transcriptome_vocabulary_is_a_warning(small_h5ad):
    ids = list(read_header(small_h5ad).var_names)
    validator = HumanEnsemblValidator(vocab=set(ids) | {f"ENSG9{i:010d}" for i in range(20_000)})
    manager = validator.data_manager(read_header(small_h5ad))
    report = validator.check(manager)
    validator.check_weights(manager, report, {})
    (panel,) = [p for p in report.problems if p.code == "small_gene_panel"]
    assert panel.severity is Severity.WARNING and "cover only 1.5%" in panel.message and "20,300-gene" in panel.message
    assert report.facts["vocabulary covered"] == "300 of the model's 20,300 genes (1.5%)"
