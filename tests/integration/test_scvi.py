"""scVI: training on the dataset (`fit`), mapping onto a Census-format reference served from S3, the
unpickling safety rules, and the validator's messages."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from czb_core.cli import main
from czb_core.errors import Cancelled, ConfigError, DatasetValidationError, WeightsError
from czb_core.io.header import read_header
from czb_core.io.synthetic import make_synthetic_counts
from czb_core.models.compatibility import check_variant
from czb_core.models.pipeline import embed_file
from czb_core.models.registry import get_model
from czb_core.progress import CancelToken
from czb_core.schema.datasets import SingleCellDataset
from czb_core.types import DataType, ModelType
from tests.helpers.data import log_normalised

CENSUS_OBS = {"dataset_id": "ds1", "suspension_type": "cell"}  # the synthetic data has donor_id and assay


def knn_accuracy(emb_nd: np.ndarray, labels: np.ndarray) -> float:
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(KNeighborsClassifier(5), emb_nd, labels, cv=folds).mean())


def census_like(adata: ad.AnnData) -> ad.AnnData:
    out = adata.copy()
    for key, value in CENSUS_OBS.items():
        out.obs[key] = value
    return out


def run_variant(config, path, variant="homo_sapiens", **params):
    """Run an implementation built from `config` (not the registry) and return (emb_nd, report, impl)."""
    implementation = config.load_implementation()(config, variant, **params)
    dataset = SingleCellDataset(path)
    report = implementation.run(dataset)
    return dataset.get_output(ModelType.SCVI, DataType.EMBEDDING), report, implementation


def with_reference(uri: str, sha256: str | None = None, variant: str = "homo_sapiens"):
    """The registry's scVI config with one Census variant pointed at a test reference."""
    config = get_model("scvi")
    pinned = dataclasses.replace(config.variants[variant], weights={"model": uri},
                                 weights_sha256={"model.pt": sha256} if sha256 else {})
    return dataclasses.replace(config, variants={**config.variants, variant: pinned})


# ----------------------------------------------------------------------------- fit


@pytest.fixture(scope="module")
def typed_counts(tmp_path_factory):
    adata = make_synthetic_counts(n_cells=600, n_genes=300, n_types=4, n_batches=2, mean_counts=400, seed=3)
    path = tmp_path_factory.mktemp("fit") / "typed.h5ad"
    adata.write_h5ad(path)
    return adata, path


def test_fit_beats_a_random_projection_and_is_reproducible(typed_counts):
    adata, path = typed_counts
    runs = [embed_file(path, "scvi", "fit", params={"max_epochs": 10, "batch_key": "batch", "seed": 7})
            for _ in range(2)]
    emb_nd = runs[0].emb_nd
    assert emb_nd.shape == (600, 10) and emb_nd.dtype == np.float32 and np.isfinite(emb_nd).all()
    np.testing.assert_allclose(runs[1].emb_nd, emb_nd, atol=1e-5)
    labels = adata.obs["cell_type"].cat.codes.to_numpy()
    logx_ng = np.log1p(adata.X.toarray())
    random_projection = np.mean([knn_accuracy(logx_ng @ np.random.default_rng(s).normal(size=(300, 10)), labels)
                                 for s in range(5)])
    scvi_accuracy = knn_accuracy(emb_nd, labels)
    assert scvi_accuracy >= max(0.9, random_projection + 0.1), (scvi_accuracy, random_projection)
    assert runs[0].record["params"]["batch_key"] == "batch" and runs[0].report.facts["epochs trained"] == 10


def test_fit_through_the_cli_without_batch(capsys, typed_counts, tmp_path):
    _, path = typed_counts
    out = tmp_path / "scvi.h5ad"
    code = main(["run", str(path), "--model", "scvi", "--out", str(out), "--param", "max_epochs=2",
                 "--param", "n_latent=6", "--param", "early_stopping=false", "--seed", "1"])
    assert code == 0, capsys.readouterr().err
    result = ad.read_h5ad(out)
    assert result.obsm["X_scvi"].shape == (600, 6)
    record = result.uns["czb_run"]
    assert record["variant"] == "fit" and int(record["params"]["max_epochs"]) == 2


def test_default_epochs_follow_scvi_tools_rule(typed_counts):
    from scvi.model._utils import get_max_epochs_heuristic

    from model_runners.scvi.fit import default_max_epochs

    for n_cells in (50, 20_000, 20_001, 50_000, 123_457, 1_000_000, 10_000_000):
        assert default_max_epochs(n_cells) == get_max_epochs_heuristic(n_cells)
    with pytest.raises(ConfigError, match="max_epochs must be at least 1"):
        embed_file(typed_counts[1], "scvi", "fit", params={"max_epochs": 0})


def test_cancel_stops_training(typed_counts):
    _, path = typed_counts
    cancel, seen = CancelToken(), []

    def progress(step, done, total):
        seen.append((step, done, total))
        if step == "train epoch" and done == 1:
            cancel.cancel()

    with pytest.raises(Cancelled):
        embed_file(path, "scvi", "fit", params={"max_epochs": 50}, progress=progress, cancel=cancel)
    assert max(done for step, done, _ in seen if step == "train epoch") == 1


# ----------------------------------------------------------------------------- Census-format reference


@pytest.fixture(scope="module")
def reference(tmp_path_factory, s3_server):
    """A tiny scVI reference in the real save format (Ensembl var_names, batch key "batch") on moto S3,
    and query files: 70% and 15% of the reference genes, with the Census batch columns."""
    import scvi

    root = tmp_path_factory.mktemp("reference")
    cells = census_like(make_synthetic_counts(n_cells=500, n_genes=300, n_types=3, n_batches=2, seed=5))
    ref = ad.AnnData(cells.X[:300, :200].copy(), obs=cells.obs.iloc[:300][["batch"]].copy(),
                     var=pd.DataFrame(index=cells.var_names[:200]))
    scvi.settings.seed = 0
    scvi.model.SCVI.setup_anndata(ref, batch_key="batch")
    model = scvi.model.SCVI(ref, n_layers=1, n_latent=4)
    model.train(max_epochs=1, accelerator="cpu", enable_progress_bar=False)
    model_dir = root / "homo_sapiens"
    model.save(str(model_dir))
    bucket = s3_server.new_bucket("scvi")
    s3_server.put_dir(bucket, "models/scvi/homo_sapiens", model_dir)
    query = cells[300:, 60:].copy()  # reference genes 60..199 (70%) and 100 others
    low = cells[300:, 170:].copy()  # reference genes 170..199 (15%)
    paths = {"query": root / "query.h5ad", "low": root / "low.h5ad"}
    query.write_h5ad(paths["query"])
    low.write_h5ad(paths["low"])
    return {
        "uri": f"s3://{bucket}/models/scvi/homo_sapiens/",
        "dir": model_dir,
        "sha256": hashlib.sha256((model_dir / "model.pt").read_bytes()).hexdigest(),
        "query_adata": query,
        **paths,
    }


@pytest.fixture
def s3_env(monkeypatch, s3_server):
    monkeypatch.setenv("CZB_S3_ENDPOINT_URL", s3_server.endpoint_url)


def test_census_variant_maps_a_query_like_scvi_tools_own_loader(reference, s3_env, monkeypatch):
    import scvi
    import scvi.model.base._archesmixin as arches

    def scvi_reads_the_file(*args, **kwargs):
        raise AssertionError("scvi-tools must not unpickle model.pt itself")

    with monkeypatch.context() as patch:
        patch.setattr(arches, "_load_saved_files", scvi_reads_the_file)
        emb_nd, report, _ = run_variant(with_reference(reference["uri"], reference["sha256"]), reference["query"])
    assert emb_nd.shape == (200, 4) and emb_nd.dtype == np.float32
    assert [p.code for p in report.warnings] == ["partial_vocabulary_overlap"]
    assert report.facts["reference gene overlap"].startswith("140 of 200 reference genes (70.0%)")

    query = reference["query_adata"]  # what cz-benchmarks did: scvi-tools loading the directory itself
    adata = ad.AnnData(query.X.copy(), obs=pd.DataFrame(index=query.obs_names), var=pd.DataFrame(index=query.var_names))
    columns = ["dataset_id", "assay", "suspension_type", "donor_id"]
    adata.obs["batch"] = query.obs[columns].astype(str).agg("".join, axis=1)
    scvi.model.SCVI.prepare_query_anndata(adata, str(reference["dir"]))
    model = scvi.model.SCVI.load_query_data(adata, str(reference["dir"]))
    model.is_trained = True
    np.testing.assert_allclose(emb_nd, model.get_latent_representation(), atol=1e-5)


def test_trust_on_first_download_then_tampering_is_refused(reference, s3_env):
    config = with_reference(reference["uri"])  # no pin: the digest of the first download is the pin
    _, report, implementation = run_variant(config, reference["query"], batch_key="unassigned")
    model_pt = implementation.weights_dirs["model"] / "model.pt"
    report = check_variant(read_header(reference["query"]), config, "homo_sapiens",
                           params={"batch_key": "unassigned"})  # cached now: checked before a run
    assert report.warnings[0].code == "partial_vocabulary_overlap"
    data = bytearray(model_pt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, so the cache still counts the entry as complete
    model_pt.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="refusing to unpickle model.pt: .* changed after it was downloaded"):
        run_variant(config, reference["query"])


def test_config_pin_mismatch_is_refused(reference, s3_env):
    with pytest.raises(WeightsError, match="checksum mismatch for 'model.pt'"):
        run_variant(with_reference(reference["uri"], "0" * 64), reference["query"])


def test_weights_override_needs_a_sha256(capsys, reference, s3_env, tmp_path):
    out = tmp_path / "out.h5ad"
    base = ["run", str(reference["query"]), "--model", "scvi", "--variant", "homo_sapiens",
            "--weights", reference["uri"], "--out", str(out)]
    code = main(base)
    err = capsys.readouterr().err
    assert code == 3 and "refusing to unpickle model.pt" in err and "weights_sha256" in err
    assert not out.exists()
    code = main(base + ["--param", f"weights_sha256={'f' * 64}"])
    assert code == 3 and f"but {'f' * 64} was expected" in capsys.readouterr().err
    result = embed_file(reference["query"], "scvi", "homo_sapiens", weights=reference["uri"],
                        params={"weights_sha256": reference["sha256"], "batch_columns": "donor_id"})
    assert result.emb_nd.shape == (200, 4)
    assert result.record["weights_source"] == reference["uri"]
    assert result.record["params"]["weights_sha256"] == reference["sha256"]


def test_low_gene_overlap_is_an_error_at_run_and_validation_time(reference, s3_env):
    config = with_reference(reference["uri"], reference["sha256"])
    with pytest.raises(DatasetValidationError, match="low_vocabulary_overlap.*30 of the 200 genes"):
        run_variant(config, reference["low"])  # weights fetched after validation: the run checks
    report = check_variant(read_header(reference["low"]), config, "homo_sapiens")  # now cached: validation checks
    assert [p.code for p in report.errors] == ["low_vocabulary_overlap"]


# ----------------------------------------------------------------------------- validation


def validate(capsys, path, *argv):
    code = main(["validate", str(path), "--model", "scvi", "--json", *argv])
    return code, json.loads(capsys.readouterr().out)


def codes(report):
    return {p["code"] for p in report["problems"] if p["severity"] == "error"}


def test_census_variant_messages(capsys, small_adata, write_h5ad):
    census = census_like(small_adata)
    symbols = census.copy()
    symbols.var_names = symbols.var["feature_name"].to_numpy()
    symbols.var = symbols.var.drop(columns="feature_name")
    code, report = validate(capsys, write_h5ad(symbols), "--variant", "homo_sapiens")
    assert code == 1 and codes(report) == {"symbols_not_ids"}
    code, report = validate(capsys, write_h5ad(log_normalised(census)), "--variant", "homo_sapiens")
    assert code == 1 and codes(report) == {"not_raw_counts"}

    path = write_h5ad(small_adata)  # no dataset_id, no suspension_type
    code, report = validate(capsys, path, "--variant", "homo_sapiens")
    missing = [p for p in report["problems"] if p["code"] == "missing_obs_key"]
    assert code == 1 and len(missing) == 2
    assert all("batch_columns" in p["fix"] and "batch_key=unassigned" in p["fix"] for p in missing)
    assert report["facts"]["reference gene overlap"] == "checked once the reference weights are downloaded"


def test_chosen_batch_columns_replace_the_census_ones(small_adata, write_h5ad):
    config = get_model("scvi")
    header = read_header(write_h5ad(small_adata))
    implementation = config.load_implementation()
    assert implementation(config, "homo_sapiens", batch_key="unassigned").check(header).ok
    assert implementation(config, "homo_sapiens", batch_columns="donor_id, assay").check(header).ok
    report = implementation(config, "homo_sapiens", batch_columns="donor_id,lane").check(header)
    assert [p.message for p in report.errors] == ["the batch column 'lane' you chose is not in obs."]
    assert implementation(config, "fit").data_needs().obs_keys == ()
    assert implementation(config, "fit", batch_key="lane").check(header).errors[0].code == "missing_obs_key"
    with pytest.raises(ConfigError, match="not both"):
        implementation(config, "fit", batch_key="batch", batch_columns="donor_id")


def test_organisms_per_variant(capsys, small_adata, write_h5ad):
    mouse = census_like(small_adata)
    mouse.var_names = [f"ENSMUSG{i:011d}" for i in range(mouse.n_vars)]
    path = write_h5ad(mouse)
    code, report = validate(capsys, path, "--variant", "homo_sapiens")
    assert code == 1 and codes(report) == {"organism_unsupported"}
    assert validate(capsys, path, "--variant", "mus_musculus")[0] == 0
    assert validate(capsys, path, "--variant", "fit")[0] == 0
