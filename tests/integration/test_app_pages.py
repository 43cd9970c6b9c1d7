"""Each page under Streamlit's AppTest (in-process, no browser): what it shows for a given dataset."""

import pytest

from czb_core.service.workspace import Workspace
from tests.helpers.apptest import fresh_manager, page  # noqa: F401  (fixture)
from tests.helpers.data import log_normalised

pytestmark = pytest.mark.usefixtures("fresh_manager")

def test_dataset_page_offers_sources_then_summarises_the_demo(small_h5ad, monkeypatch):
    monkeypatch.setenv("CZB_DEMO", str(small_h5ad))
    at = page("dataset")
    assert at.radio[0].options == ["Upload a file", "Path on this server", "Demo dataset"]
    at.radio[0].set_value("Demo dataset").run()
    next(b for b in at.button if b.label == "Use the demo dataset").click().run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Cells"] == "400" and metrics["Genes"] == "300" and metrics["Raw counts in"] == "X"
    assert any("Suggested label column" in m.value and "cell_type" in m.value for m in at.markdown)


def test_server_path_outside_the_allowed_roots_is_refused(tmp_path, small_h5ad, monkeypatch):
    monkeypatch.setenv("CZB_DATA_ROOTS", str(tmp_path / "allowed"))
    at = page("dataset")
    at.radio[0].set_value("Path on this server").run()
    at.text_input[0].set_value(str(small_h5ad)).run()
    next(b for b in at.button if b.label == "Open").click().run()
    assert at.error and "outside the allowed data folders" in at.error[0].value


def test_validate_page_shows_the_matrix_and_blocks(small_adata, write_h5ad):
    ok = Workspace().add_file(write_h5ad(small_adata))
    at = page("validate", dataset=ok.id)
    assert not at.exception
    assert any(e.label == "PCA baseline: 3 of 3 variants can run" for e in at.expander)
    bad = Workspace().add_file(write_h5ad(log_normalised(small_adata)))
    at = page("validate", dataset=bad.id)
    assert any(e.label == "PCA baseline: 0 of 3 variants can run" for e in at.expander)
    assert any("raw integer counts" in e.value and "PCA baseline (all 3 variants)" in e.value for e in at.error)


def test_run_button_is_disabled_while_a_check_blocks(small_adata, write_h5ad):
    bad = Workspace().add_file(write_h5ad(log_normalised(small_adata)))
    at = page("run", dataset=bad.id)
    run_button = next(b for b in at.button if b.label == "Run")
    assert run_button.disabled
    assert any("raw integer counts" in e.value for e in at.error)


def test_run_page_parameters_change_what_the_model_needs(small_h5ad):
    """scVI's batch key starts at the detected batch column; without one, the Census variants need the
    Census batch columns, unless the user picks a constant batch."""
    record = Workspace().add_file(small_h5ad)
    at = page("run", dataset=record.id)
    model_box = next(s for s in at.selectbox if s.label == "Model")
    model_box.set_value("scvi").run()
    next(s for s in at.selectbox if s.label == "Variant").set_value("homo_sapiens").run()
    batch_key = next(s for s in at.selectbox if s.label == "Batch key")
    assert batch_key.value == "batch"  # the detected batch column
    assert "`batch_key`" in batch_key.help  # a readable label, the argument's name in the help
    assert not next(b for b in at.button if b.label == "Run").disabled
    batch_key.set_value("(none)").run()
    assert next(b for b in at.button if b.label == "Run").disabled
    assert any("dataset_id" in e.value for e in at.error)
    next(s for s in at.selectbox if s.label == "Batch key").set_value("unassigned").run()
    assert not at.exception
    assert not next(b for b in at.button if b.label == "Run").disabled


def test_results_page_without_runs_says_so(small_h5ad):
    record = Workspace().add_file(small_h5ad)
    at = page("results", dataset=record.id)
    assert any("No finished run" in i.value for i in at.info)


def test_pages_without_a_dataset_point_to_the_dataset_page():
    for name in ("validate", "run", "results"):
        at = page(name)
        assert any("Choose a dataset first" in i.value for i in at.info), name


def test_run_page_offers_geneformer_perturbation_inputs(small_h5ad):
    record = Workspace().add_file(small_h5ad)
    at = page("run", dataset=record.id)
    next(s for s in at.selectbox if s.label == "Model").set_value("geneformer").run()
    assert not at.exception and not at.error
    helps = " ".join(t.help for t in at.text_input)
    assert all(f"`{name}`" in helps for name in ("feature_deletion", "feature_activation", "feature_map"))
    assert {"Delete genes", "Activate genes", "Map genes to tokens"} <= {t.label for t in at.text_input}
    assert "token_dictionary_file" not in helps  # a variant fact, not a parameter
    assert not next(b for b in at.button if b.label == "Run").disabled


def test_only_an_admin_can_force_a_streamed_run_from_the_run_page(small_h5ad, monkeypatch):
    from pages.common import job_manager

    monkeypatch.setenv("CZB_USER", "ann@lab.org")
    record = Workspace().add_file(small_h5ad, owner="ann@lab.org")
    at = page("run", dataset=record.id)
    assert not [c for c in at.checkbox if c.label.startswith("Stream the matrix")]
    monkeypatch.setenv("CZB_ADMINS", "ann@lab.org")
    at = page("run", dataset=record.id)
    next(c for c in at.checkbox if c.label.startswith("Stream the matrix")).check().run()
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception
    (job,) = job_manager().list()
    assert job.spec.stream and job.model == "pca"
