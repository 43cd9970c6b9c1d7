"""scGenePT runs end to end on tiny files in the real formats served by a loopback S3 server.

The variants under test are the real config's GO-C and NCBI flavours on Adamson, with their URIs pointed
at the moto bucket and the head count set to the tiny checkpoint's. The batched prediction is checked
against a one-cell reference written with plain torch.nn (tests/helpers/scgenept_files.py) on the same
sampled, normalised control cells.
"""

from __future__ import annotations

import dataclasses
import json
import time

import anndata as ad
import numpy as np
import pytest

from czb_core.errors import ConfigError, DatasetValidationError
from czb_core.models.registry import get_model
from czb_core.schema.datasets import SingleCellDataset
from czb_core.schema.normalization import log_normalize
from model_runners.scgenept.model import CONTROL_CELL_COLUMN, Scgenept
from tests.helpers.scgenept_files import (
    CHECKPOINT_NAME,
    HEADS,
    PlainScGenePT,
    write_checkpoint,
    write_gears_zip,
    write_vocab,
)

N_VOCAB = 200  # of the 300 genes: the gene axis is these (in dataset order)
FLAVOURS = {"go": ("scgenept_go_c_gpt_concat__adamson", ["gopt_encoder_c"]),
            "ncbi": ("scgenept_ncbi_gpt__adamson", ["genept_encoder"])}


@pytest.fixture(scope="module")
def symbols(small_adata):
    return list(map(str, small_adata.var["feature_name"]))


@pytest.fixture(scope="module")
def served(s3_server, tmp_path_factory, symbols):
    root = tmp_path_factory.mktemp("scgenept")
    vocab_genes = sorted(symbols[:N_VOCAB]) + ["NOTINDATA"]
    write_vocab(root / "vocab", vocab_genes)
    for name, (_, encoders) in FLAVOURS.items():
        write_checkpoint(root / name, len(vocab_genes), encoders, seed=len(name))
    trained = [f"{symbols[3]}+ctrl", f"{symbols[5]}+ctrl", f"{symbols[3]}+{symbols[7]}", "NOTINDATA+ctrl", "ctrl"]
    write_gears_zip(root / "gears", "adamson", trained)
    bucket = s3_server.new_bucket("scgenept")
    for name in ("vocab", "go", "ncbi", "gears"):
        s3_server.put_dir(bucket, f"scgenept/{name}", root / name)
    return bucket, root


@pytest.fixture
def config(served, s3_server, monkeypatch):
    monkeypatch.setenv("CZB_S3_ENDPOINT_URL", s3_server.endpoint_url)
    bucket, _ = served
    real = get_model("scgenept")
    variants = {}
    for name, (real_name, _) in FLAVOURS.items():
        weights = {"model": f"s3://{bucket}/scgenept/{name}",
                   "vocab": f"s3://{bucket}/scgenept/vocab/vocab.json",
                   "training_data": f"s3://{bucket}/scgenept/gears/6154417"}
        variant = real.variant(real_name)
        resources = {**variant.resources, "n_heads": HEADS}  # the tiny checkpoint's head count
        variants[name] = dataclasses.replace(variant, name=name, weights=weights, resources=resources)
    return dataclasses.replace(real, variants=variants, default_variant="go")


@pytest.fixture(scope="module")
def perturb_h5ad(small_adata, tmp_path_factory):
    adata = small_adata[:80].copy()
    adata.obs["condition"] = np.where(np.arange(80) < 50, "ctrl", "X+ctrl")
    path = tmp_path_factory.mktemp("data") / "perturb.h5ad"
    adata.write_h5ad(path)
    return path


def run(config, path, variant="go", **params):
    impl = Scgenept(config, variant, **params)
    dataset = SingleCellDataset(path)
    dataset.load_data()
    return impl, dataset, impl.run_model(dataset, device="cpu")


@pytest.mark.parametrize("flavour", ["go", "ncbi"])
def test_batched_prediction_equals_one_cell_reference(config, served, perturb_h5ad, symbols, small_adata, flavour):
    gene = symbols[3]
    impl, dataset, out = run(config, perturb_h5ad, flavour, perturbation=f"{gene}+ctrl", n_cells=7, batch_size=3)
    axis = [s for s in symbols if s in set(symbols[:N_VOCAB])]
    assert out.pred_ng.shape == (7, len(axis)) and list(out.genes_g) == axis
    vocab_ids = {g: i for i, g in enumerate(sorted(symbols[:N_VOCAB]) + ["NOTINDATA"])}
    tokens = np.array([vocab_ids[g] for g in axis])
    flags = np.array([g == gene for g in axis], dtype=np.int64)
    reference = PlainScGenePT(served[1] / flavour / CHECKPOINT_NAME, FLAVOURS[flavour][1])
    rows = [dataset.adata.obs_names.get_loc(name) for name in out.obs[CONTROL_CELL_COLUMN]]
    x = log_normalize(dataset.adata.X[rows])[:, [symbols.index(g) for g in axis]]
    expected = np.stack([reference.predict(tokens, x[i], flags) for i in range(7)])
    np.testing.assert_allclose(out.pred_ng, expected, rtol=1e-4, atol=1e-4)
    assert all(dataset.adata.obs["condition"].iloc[r] == "ctrl" for r in rows)
    assert "largest predicted increases (control mean -> predicted)" in out.facts


def test_seeded_sampling_is_reproducible_and_flags_matter(config, perturb_h5ad, symbols):
    _, _, a = run(config, perturb_h5ad, perturbation=f"{symbols[3]}+ctrl", n_cells=5, seed=4)
    _, _, b = run(config, perturb_h5ad, perturbation=f"{symbols[3]}+ctrl", n_cells=5, seed=4)
    _, _, c = run(config, perturb_h5ad, perturbation=f"{symbols[3]}+ctrl", n_cells=5, seed=5)
    _, _, d = run(config, perturb_h5ad, perturbation=f"{symbols[3]}+{symbols[7]}", n_cells=5, seed=4)
    np.testing.assert_array_equal(a.pred_ng, b.pred_ng)
    assert list(a.obs[CONTROL_CELL_COLUMN]) == list(b.obs[CONTROL_CELL_COLUMN])
    assert list(a.obs[CONTROL_CELL_COLUMN]) != list(c.obs[CONTROL_CELL_COLUMN])
    assert not np.allclose(a.pred_ng, d.pred_ng)


def test_untrained_perturbation_is_refused_with_close_names(config, perturb_h5ad, symbols):
    gene = symbols[3]
    with pytest.raises(DatasetValidationError) as err:
        run(config, perturb_h5ad, perturbation=f"{gene.lower()}X+ctrl")
    assert "not perturbed in the adamson screen" in str(err.value) and gene in str(err.value)


def test_trained_gene_missing_from_dataset_is_refused(config, perturb_h5ad):
    with pytest.raises(DatasetValidationError, match="NOTINDATA is not among the dataset's genes"):
        run(config, perturb_h5ad, perturbation="NOTINDATA+ctrl")


def test_bad_inputs_are_refused(config, perturb_h5ad, symbols):
    with pytest.raises(ConfigError, match="GENE\\+ctrl or GENE1\\+GENE2"):
        Scgenept(config, "go", perturbation="A+B+C")
    with pytest.raises(DatasetValidationError, match="no cell has condition == 'control'"):
        run(config, perturb_h5ad, perturbation=f"{symbols[3]}+ctrl", control_value="control")
    with pytest.raises(DatasetValidationError, match="needs a perturbation"):
        run(config, perturb_h5ad)


def test_checkpoint_of_another_flavour_is_refused(config, served, perturb_h5ad, symbols):
    bucket, _ = served
    wrong = dataclasses.replace(config.variant("go"), weights={**config.variant("go").weights,
                                                                 "model": f"s3://{bucket}/scgenept/ncbi"})
    swapped = dataclasses.replace(config, variants={"go": wrong})
    with pytest.raises(Exception, match="another scGenePT flavour"):
        run(swapped, perturb_h5ad, perturbation=f"{symbols[3]}+ctrl")


def test_czb_perturb_predict_writes_the_prediction_and_czb_benchmark_scores_it(
        config, perturb_h5ad, symbols, tmp_path, monkeypatch, capsys):
    from czb_core.cli import main
    from czb_core.models import pipeline
    from czb_core.tasks import perturbation

    for module in (pipeline, perturbation):  # the tiny variants on the loopback S3
        monkeypatch.setattr(module, "get_model", lambda name: config)
    out = tmp_path / "pred.h5ad"
    code = main(["perturb-predict", str(perturb_h5ad), "--variant", "go", "--perturbation", f"{symbols[3]}+ctrl",
                 "--n-cells", "6", "--seed", "2", "--device", "cpu", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "predicted expression of 6 sampled control cells" in printed.out
    result = ad.read_h5ad(out)
    assert result.n_obs == 6 and CONTROL_CELL_COLUMN in result.obs and result.n_vars > 0
    record = result.uns["czb_run"]
    assert record["params"]["perturbation"] == f"{symbols[3]}+ctrl"
    assert list(record["prediction_shape"]) == [6, result.n_vars]
    scores = tmp_path / "scores.json"
    code = main(["benchmark", str(perturb_h5ad), "--task", "perturbation", "--prediction", str(out),
                 "--condition", "X+ctrl", "--out", str(scores)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    document = json.loads(scores.read_text())
    table = {(row["metric"], row["genes"]): row for row in document["metrics"]}
    data = ad.read_h5ad(perturb_h5ad)
    x_log = np.log1p(data.X.toarray() * (1e4 / data.X.toarray().sum(1, keepdims=True)))[:, [
        list(data.var["feature_name"]).index(g) for g in result.var_names]]
    truth_g = x_log[data.obs["condition"].to_numpy() == "X+ctrl"].mean(0)
    control_g = x_log[data.obs["condition"].to_numpy() == "ctrl"].mean(0)
    assert table[("mean_squared_error", "all")]["model"] == pytest.approx(np.mean((truth_g - result.X.mean(0)) ** 2))
    assert table[("mean_squared_error", "all")]["no change"] == pytest.approx(np.mean((truth_g - control_g) ** 2))
    assert "mean perturbation effect" not in table[("mean_squared_error", "all")]  # no other condition here
    assert "no other perturbed condition" in printed.err


def test_a_prediction_job_has_no_umap_nor_embedding_metrics_and_the_results_page_reads_it(
        config, perturb_h5ad, symbols, monkeypatch, tmp_path):
    """Through the job manager (worker threads): the prediction is stored, offered in its own formats and
    shown on the Results page with the observed change beside the predicted one."""
    import streamlit as st

    from czb_core.models import pipeline
    from czb_core.service.jobs import JobManager, artifacts
    from czb_core.service.jobs import manager as manager_module
    from czb_core.service.workspace import Workspace
    from czb_core.tasks import perturbation
    from tests.helpers.apptest import page

    for module in (pipeline, perturbation, manager_module):
        monkeypatch.setattr(module, "get_model", lambda name: config)
    st.cache_resource.clear()
    st.cache_data.clear()
    adata = ad.read_h5ad(perturb_h5ad)
    adata.obs["condition"] = adata.obs["condition"].astype(str).replace("X+ctrl", f"{symbols[3]}+ctrl")
    path = tmp_path / "perturbed.h5ad"
    adata.write_h5ad(path)
    workspace = Workspace()
    dataset_id = workspace.add_file(path).id
    manager = JobManager(workspace, processes=False)
    try:
        job = manager.submit(dataset_id, "scgenept", "go", params={"perturbation": f"{symbols[3]}+ctrl", "n_cells": 6},
                             metrics={"label_key": "condition"})
        deadline = time.monotonic() + 120
        while (job := manager.get(job.id)).status not in ("done", "failed") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job.status == "done", job.error
        assert manager.scores(job.id) == []  # no embedding metrics for predicted expression
        directory = job.artifact_dir
        assert artifacts.is_complete(directory) and not (directory / artifacts.UMAP_NPY).exists()
        assert artifacts.formats_of(directory) == ["prediction (h5ad)", "run record (JSON)"]
        name, _, data = artifacts.export_bytes(directory, "prediction (h5ad)")
        assert name == "prediction.h5ad" and data == (directory / artifacts.EMBEDDING_H5AD).read_bytes()
        # the run fetched the training screen: the Run page now offers exactly its perturbations
        assert Scgenept(config, "go").perturbation_choices() == sorted(
            [f"{symbols[3]}+ctrl", f"{symbols[5]}+ctrl", f"{symbols[3]}+{symbols[7]}", "NOTINDATA+ctrl"])
    finally:
        manager.shutdown(timeout=5)
    monkeypatch.setattr("pages.common.JobManager", lambda: JobManager(workspace, start_workers=False))
    at = page("results", dataset=dataset_id)
    assert not at.exception, at.exception
    assert "Perturbation predictions" in [s.value for s in at.subheader]
    markdown = " ".join(m.value for m in at.markdown)
    assert "Top 20 predicted increases" in markdown and "Metrics against the observed cells" in markdown
    up, down, metrics = (d.value for d in at.dataframe)  # in page order (a plain table keeps no key here)
    assert {"model", "no change"} <= set(metrics.columns)
    assert list(up.columns) == ["gene", "control_mean", "predicted_mean", "change"]
    assert (up["change"].diff().dropna() <= 0).all()
    assert (down["change"].diff().dropna() >= 0).all() and down["change"].iloc[0] <= up["change"].iloc[-1]
    st.cache_resource.clear()
    st.cache_data.clear()
