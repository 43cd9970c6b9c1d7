"""The Tokenizer lab page under AppTest: the form, a split refused with its reason, Start queueing one job per
tokenizer and seed, and the results of finished trainings (table, plots, downloads).

Finished trainings are made by a job manager on worker threads before the page opens (a tiny model, about a
second each); the page's own manager then finds them done in the store, as after a server restart.
"""

from __future__ import annotations

import pytest
from streamlit.testing.v1.element_tree import AppTestError

from czb_core.service.jobs import JobManager
from czb_core.service.workspace import Workspace
from czb_core.tokenizer_lab import LAB_MODEL
from tests.helpers.apptest import fresh_manager, page  # noqa: F401  (fixture)
from tests.integration.test_tokenizer_lab_jobs import BINNED, RANKED, SPLIT, TINY, lab_counts, wait_for

pytestmark = pytest.mark.usefixtures("fresh_manager")


@pytest.fixture
def dataset(write_h5ad):
    return Workspace().add_file(write_h5ad(lab_counts(), "lab.h5ad"))


@pytest.fixture(scope="module")
def finished_home(tmp_path_factory):
    """A workspace whose dataset has four done trainings: two tokenizers, two seeds each."""
    home = tmp_path_factory.mktemp("lab_home")
    path = home.parent / "lab.h5ad"
    lab_counts().write_h5ad(path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CZB_HOME", str(home))
        manager = JobManager(Workspace(), processes=False)
        record = manager.workspace.add_file(path)
        jobs = [manager.submit_lab(record.id, SPLIT, tokenizer, seed, TINY)
                for tokenizer in (RANKED, BINNED) for seed in (0, 1)]
        for job in jobs:
            wait_for(manager, job.id, ("done",))
        manager.shutdown(timeout=10)
    return home, record


def start_button(at):
    return next(b for b in at.button if b.label.startswith("Start"))


def test_the_form_offers_the_split_values_tokenizers_and_settings(dataset):
    at = page("tokenizer_lab", dataset=dataset.id)
    assert not at.exception
    assert at.selectbox[1].value == "donor_id"  # the only column with three or more values besides the label
    assert (at.multiselect(key="train_donor_id").value, at.multiselect(key="val_donor_id").value,
            at.multiselect(key="test_donor_id").value) == (["donor0_0"], ["donor0_1"], ["donor1_0"])
    assert at.multiselect[3].options == ["geneformer", "scgpt", "scbert", "scfoundation", "uce"]
    assert not at.error
    button = start_button(at)
    assert button.label == "Start 6 trainings" and not button.disabled
    assert "No trainings yet." in [c.value for c in at.caption]


def test_a_value_in_both_train_and_test_is_an_error_and_start_is_refused(dataset):
    at = page("tokenizer_lab", dataset=dataset.id)
    at.multiselect(key="test_donor_id").set_value(["donor0_0"]).run()
    assert any("train and test share split values ['donor0_0']" in e.value for e in at.error)
    button = start_button(at)
    assert button.disabled
    with pytest.raises(AppTestError, match="disabled"):
        button.click()
    at.multiselect(key="val_donor_id").set_value([]).run()
    assert any("at least one 'donor_id' value for val" in e.value for e in at.error)


def test_start_queues_one_job_per_tokenizer_and_seed(dataset):
    from pages.common import job_manager

    at = page("tokenizer_lab", dataset=dataset.id)
    at.multiselect[3].set_value(["scgpt"])
    at.number_input[0].set_value(2)  # seeds
    at.run()
    start_button(at).click().run()
    assert not at.exception
    manager = job_manager()
    jobs = manager.list(dataset_id=dataset.id)
    try:
        assert sorted((job.model, job.variant, job.spec.params["seed"]) for job in jobs) == [
            (LAB_MODEL, "scgpt", 0), (LAB_MODEL, "scgpt", 1)]
        assert jobs[0].spec.params["train"] == ["donor0_0"] and jobs[0].spec.params["test"] == ["donor1_0"]
        assert "2 trainings queued" in at.success[0].value
        assert at.query_params["experiment"]
    finally:
        for job in jobs:
            manager.cancel(job.id)


def test_finished_trainings_show_the_summary_plots_and_downloads(finished_home, monkeypatch):
    home, record = finished_home
    monkeypatch.setenv("CZB_HOME", str(home))
    at = page("tokenizer_lab", dataset=record.id)
    assert not at.exception
    summary = next(d.value for d in at.dataframe if "mcc_mean" in d.value.columns)
    assert summary["tokenizer"].tolist() == [RANKED.name, BINNED.name] and summary["n_seeds"].tolist() == [2, 2]
    assert len(at.get("plotly_chart")) == 3  # metrics per tokenizer, best confusion matrix, learning curves
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels[:4] == ["Summary (CSV)", "Runs (CSV)", "Learning curves (CSV)", "Best confusion matrix (CSV)"]
    assert sorted(labels[4:]) == sorted(f"{t.name} · seed {s}" for t in (RANKED, BINNED) for s in (0, 1))
    at.radio[0].set_value("train_loss").run()
    assert not at.exception and len(at.get("plotly_chart")) == 3
