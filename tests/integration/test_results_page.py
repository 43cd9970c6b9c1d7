"""The Results page under AppTest: the scoreboard, the baseline counted once, per-class accuracy, names.

Two real PCA runs of the small dataset (default = the baseline itself, and 10 components) are embedded and
scored with the library's own code and stored as finished jobs, as the job workers would leave them; the
UMAP file holds the first two components (the page only draws it).
"""

import json

import numpy as np
import pandas as pd
import pytest

from czb_core.models.pipeline import embed_file, write_run_h5ad
from czb_core.progress import no_progress
from czb_core.service.jobs.artifacts import EMBEDDING_H5AD, METRICS_DIR, RECORD_JSON, UMAP_NPY, record_json
from czb_core.service.jobs.scoring import score_document
from czb_core.service.jobs.spec import JobSpec
from czb_core.service.jobs.store import DONE, JobStore
from czb_core.service.workspace import DatasetRecord, Workspace
from czb_core.tasks.options import MetricOptions
from czb_core.tasks.scoreboard import BASELINE_ROW
from tests.helpers.apptest import fresh_manager, page  # noqa: F401  (fixture)

pytestmark = [pytest.mark.usefixtures("fresh_manager"), pytest.mark.slow]  # ~25 s to embed and score the runs
OPTIONS = MetricOptions(label_key="cell_type", batch_key="batch", tasks=("clustering", "embedding",
                                                                         "label_prediction", "batch_integration"))


def finished_pca_run(workspace: Workspace, dataset: DatasetRecord, params: dict) -> str:
    """A done job of the dataset's owner with its artifacts and one done scoring run; returns the job id."""
    store = JobStore(workspace.db_path)
    owner = dataset.owner
    job, _ = store.submit(JobSpec(dataset.sha256, "pca", "default", params), owner, "cpu", dataset.id)
    result = embed_file(workspace.dataset_path(dataset.id, owner), "pca", params=params,
                        input_sha256=dataset.sha256)
    result.record["job"] = {"id": job.id, "owner": owner, "spec_key": job.spec_key, "device": "cpu", "notes": []}
    directory = workspace.root / "jobs" / job.id
    directory.mkdir(parents=True)
    write_run_h5ad(result, directory / EMBEDDING_H5AD)
    np.save(directory / UMAP_NPY, result.emb_nd[:, :2].astype(np.float32))
    (directory / RECORD_JSON).write_bytes(record_json(result.record))
    store.set_status(job.id, DONE, message="done", artifact_dir=directory)
    job = store.get(job.id)
    document = score_document(workspace, job, OPTIONS, no_progress)
    path = directory / METRICS_DIR / f"{OPTIONS.key()}.json"
    path.parent.mkdir()
    path.write_text(json.dumps(document, default=str))
    score = store.create_score(job.id, OPTIONS, owner)
    store.finish_score(score.id, DONE, document_path=path)
    return job.id


@pytest.fixture(scope="module")
def module_home(tmp_path_factory, small_adata):
    """One workspace with both runs for every test here: embedding and scoring them takes ~20 s."""
    home = tmp_path_factory.mktemp("results_home")
    path = home.parent / "small.h5ad"
    small_adata.write_h5ad(path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CZB_HOME", str(home))
        workspace = Workspace()
        record = workspace.add_file(path)
        default = finished_pca_run(workspace, record, {})
        ten = finished_pca_run(workspace, record, {"n_comps": 10})
    return home, (record, default, ten)


@pytest.fixture
def two_runs(module_home, monkeypatch):
    home, runs = module_home
    monkeypatch.setenv("CZB_HOME", str(home))
    return runs


def scoreboard_frame(at) -> pd.DataFrame:
    return next(d for d in at.dataframe if "Δ ARI" in d.value.columns).value


def test_scoreboard_has_one_row_per_run_and_the_baseline_once(two_runs):
    record, default, ten = two_runs
    at = page("results", dataset=record.id)
    assert not at.exception
    board = scoreboard_frame(at)
    assert len(board) == 2 and BASELINE_ROW not in board.index  # the default PCA run is the baseline
    default_row = board.loc[[i for i in board.index if default[:6] in i][0]]
    ten_row = board.loc[[i for i in board.index if "n_comps=10" in i][0]]
    assert default_row["Δ Silhouette"] == 0 and default_row["Embedding size"] == 50
    assert ten_row["Embedding size"] == 10
    assert ten_row["Δ Silhouette"] == pytest.approx(ten_row["Silhouette"] - default_row["Silhouette"])
    comparison = next(d for d in at.dataframe if "PCA baseline" in d.value.columns and "Meaning" not in d.value)
    assert [c for c in comparison.value.columns if "pca / default" in c] == [c for c in comparison.value.columns
                                                                              if "n_comps=10" in c]
    assert len(comparison.value.columns) == 2  # "PCA baseline" and the 10-component run, not the default twice


def test_full_table_has_readable_names_and_per_class_accuracy(two_runs, small_adata):
    record, default, ten = two_runs
    at = page("results", dataset=record.id)
    table = next(d for d in at.dataframe if "Meaning" in d.value.columns).value
    assert "Accuracy, mean of kNN / LR / RF" in set(table["Metric"])
    assert table["Meaning"].str.len().gt(0).all()
    toggle = next(t for t in at.toggle if t.label.startswith("Per-cell-type"))
    toggle.set_value(True).run()
    assert not at.exception
    per_class = next(d for d in at.dataframe if "accuracy" in d.value.columns).value
    assert set(per_class.index) == set(small_adata.obs["cell_type"].astype(str))
    assert per_class["cells"].sum() == 400 and per_class["accuracy"].between(0, 1).all()


def test_downloads_are_named_by_run_and_reproducible(two_runs):
    record, default, ten = two_runs
    at = page("results", dataset=record.id)
    script = next(c for c in at.code if "czb run" in c.value).value
    stem = f"small__pca-default__{at.selectbox(key='download_run').value}"
    assert f"--out {stem}.h5ad" in script and record.sha256 in script
    assert f"--out {stem}.metrics.json" in script and "--label-key cell_type --batch-key batch" in script
