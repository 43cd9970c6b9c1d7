"""`czb benchmark`: any h5ad with an embedding, scored beside the PCA baseline."""

import json

import numpy as np

from czb_core.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_someone_elses_embedding_against_the_baseline(capsys, small_adata, write_h5ad):
    adata = small_adata.copy()
    adata.obsm["X_random"] = np.random.default_rng(0).normal(size=(adata.n_obs, 16)).astype(np.float32)
    path = write_h5ad(adata)
    code, out, err = run_cli(capsys, "benchmark", str(path), "--embedding", "X_random", "--label-key", "cell_type",
                             "--tasks", "clustering", "embedding", "--json")
    assert code == 0, err
    document = json.loads(out)
    rows = {r["metric"]: r for r in document["table"]}
    ari = rows["adjusted_rand_index"]
    assert abs(ari["model"]) < 0.1 and ari["baseline"] > 0.5 and ari["better"] == "baseline"
    (task,) = [t for t in document["baseline"]["task_results"] if t["task_name"] == "clustering"]
    assert task["model"]["type"] == "BASELINE"
    assert {m["metric_type"] for m in task["metrics"]} == {"adjusted_rand_index", "normalized_mutual_info"}


def test_our_run_output_finds_its_original_for_the_baseline(capsys, small_h5ad, tmp_path):
    out_path = tmp_path / "pca.h5ad"
    assert main(["run", str(small_h5ad), "--model", "pca", "--out", str(out_path)]) == 0
    capsys.readouterr()
    code, out, err = run_cli(capsys, "benchmark", str(out_path), "--embedding", "X_pca", "--label-key", "cell_type",
                             "--batch-key", "batch", "--tasks", "clustering", "batch_integration",
                             "--out", str(tmp_path / "m.json"))
    assert code == 0, err
    assert "adjusted_rand_index" in out and "entropy_per_cell" in out
    table = json.loads((tmp_path / "m.json").read_text())["table"]
    assert all(abs(r["delta"]) < 1e-9 for r in table)  # the default PCA run is the baseline itself
    small_h5ad.unlink()
    code, _, err = run_cli(capsys, "benchmark", str(out_path), "--embedding", "X_pca", "--label-key", "cell_type")
    assert code == 2 and "--no-baseline" in err
    code, out, err = run_cli(capsys, "benchmark", str(out_path), "--embedding", "X_pca", "--label-key", "cell_type",
                             "--tasks", "embedding", "--no-baseline")
    assert code == 0 and "silhouette" in out and "baseline" not in out


def test_missing_embedding_or_column_exit_2(capsys, small_adata, write_h5ad):
    adata = small_adata.copy()
    adata.obsm["X_e"] = np.zeros((adata.n_obs, 2), np.float32)
    path = write_h5ad(adata)
    code, _, err = run_cli(capsys, "benchmark", str(path), "--embedding", "X_nope", "--label-key", "cell_type")
    assert code == 2 and "obsm has no 'X_nope'; available: X_e" in err
    code, _, err = run_cli(capsys, "benchmark", str(path), "--embedding", "X_e", "--label-key", "celltype",
                           "--no-baseline")
    assert code == 2 and "celltype" in err and "cell_type" in err
