"""Downloads round-trip with the cells in order, and the plot subsample keeps every label."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from czb_core.io.exports import cell_ids_txt, to_csv, to_npy, to_parquet
from czb_core.service.jobs.artifacts import record_json
from czb_core.viz.umap import stratified_subsample


@pytest.fixture
def embedding():
    rng = np.random.default_rng(0)
    emb_nd = rng.normal(size=(7, 3)).astype(np.float32) * 1e3
    obs_names = pd.Index([f"AAAC-{i}" for i in rng.permutation(7)])  # not sorted: order must survive
    return emb_nd, obs_names


def test_parquet_round_trip(embedding):
    emb_nd, obs_names = embedding
    frame = pd.read_parquet(io.BytesIO(to_parquet(emb_nd, obs_names, "X_pca")))
    assert list(frame.columns) == ["cell_id", "X_pca_0", "X_pca_1", "X_pca_2"]
    assert list(frame["cell_id"]) == list(obs_names)
    assert (frame.dtypes.iloc[1:] == np.float32).all()
    np.testing.assert_array_equal(frame.iloc[:, 1:].to_numpy(), emb_nd)


def test_csv_round_trip_is_exact_for_float32(embedding):
    emb_nd, obs_names = embedding
    frame = pd.read_csv(io.BytesIO(to_csv(emb_nd, obs_names, "X_scgpt")))
    assert list(frame["cell_id"]) == list(obs_names) and frame.columns[1] == "X_scgpt_0"
    np.testing.assert_array_equal(frame.iloc[:, 1:].to_numpy().astype(np.float32), emb_nd)


def test_npy_with_cell_ids_in_the_same_order(embedding):
    emb_nd, obs_names = embedding
    loaded = np.load(io.BytesIO(to_npy(emb_nd)))
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, emb_nd)
    assert cell_ids_txt(obs_names).decode().splitlines() == list(obs_names)


def test_mismatched_ids_are_refused(embedding):
    emb_nd, obs_names = embedding
    with pytest.raises(ValueError, match="6 cell ids for 7 embedding rows"):
        to_parquet(emb_nd, obs_names[:6], "X_pca")


def test_record_json_writes_any_value():
    record = {"model": "pca", "shape": [7, 3], "when": pd.Timestamp("2024-01-01")}
    assert json.loads(record_json(record)) == {"model": "pca", "shape": [7, 3], "when": "2024-01-01 00:00:00"}


def test_plot_subsample_keeps_shares_and_rare_labels():
    labels_n = np.array(["T"] * 9000 + ["B"] * 990 + ["rare"] * 10)
    picked = stratified_subsample(labels_n, max_points=1000, seed=0)
    counts = pd.Series(labels_n[picked]).value_counts()
    assert counts["T"] == 900 and counts["B"] == 99 and counts["rare"] == 10
    assert np.all(np.diff(picked) > 0)
    np.testing.assert_array_equal(stratified_subsample(labels_n, max_points=1000, seed=0), picked)
    np.testing.assert_array_equal(stratified_subsample(labels_n[:50], max_points=1000), np.arange(50))


def test_downloads_of_a_run_share_one_stem():
    from czb_core.io.exports import download_name, run_file_stem

    stem = run_file_stem("my data (v2).h5ad", "scgpt", "human", "3f2a9c1e0b7d")
    assert stem == "my_data_v2__scgpt-human__3f2a9c1e0b7d"
    assert run_file_stem("/srv/x/pbmc.h5", "uce", "4l", "ab") == "pbmc__uce-4l__ab"
    assert [download_name(stem, n) for n in ("embedding.h5ad", "embedding_npy.zip", "run_record.json")] == [
        f"{stem}.h5ad", f"{stem}.npy.zip", f"{stem}.run_record.json"]


@pytest.mark.slow  # two PCA runs of the small dataset (~20 s on a busy 2-core machine)
def test_reproduce_script_recreates_the_embedding_through_the_cli(small_h5ad, tmp_path, monkeypatch):
    """The script's `czb run` line, run by the CLI in a folder holding the input under its name, gives the
    same embedding; its sha256 line accepts the file; its `czb benchmark` line parses with the metrics' options."""
    import shlex
    import shutil
    import subprocess

    import anndata as ad

    from czb_core.cli import build_parser, main
    from czb_core.io.hashing import sha256_file
    from czb_core.models.pipeline import embed_file
    from czb_core.models.reproduce import reproduce_script

    result = embed_file(small_h5ad, "pca", params={"n_comps": 12, "seed": 3}, input_sha256=sha256_file(small_h5ad))
    run_record = json.loads(record_json(result.record))  # as the job stores it
    options = {"label_key": "cell_type", "batch_key": "batch", "split_key": None, "train": None, "test": None,
               "tasks": None, "seed": 42, "max_cells": 1000}
    script = reproduce_script(run_record, "cells.h5ad", "cells__pca-default__j1", options)
    lines = script.splitlines()
    run_line = next(line for line in lines if line.startswith("czb run "))
    assert "--param n_comps=12" in run_line and "--seed 3" in run_line and "--organism homo_sapiens" in run_line
    assert "n_top_genes" not in run_line and "--weights" not in run_line  # defaults are left out

    work = tmp_path / "again"
    work.mkdir()
    shutil.copy(small_h5ad, work / "cells.h5ad")
    monkeypatch.chdir(work)
    check = next(line for line in lines if "sha256sum" in line)
    assert subprocess.run(["sh", "-c", check], capture_output=True).returncode == 0
    assert main(shlex.split(run_line)[1:]) == 0
    again = ad.read_h5ad(work / "cells__pca-default__j1.h5ad")
    np.testing.assert_allclose(again.obsm["X_pca"], result.emb_nd, rtol=1e-5, atol=1e-6)

    bench = build_parser().parse_args(shlex.split(next(line for line in lines if line.startswith("czb benchmark")))[1:])
    assert (bench.data, bench.embedding, bench.label_key, bench.batch_key, bench.seed, bench.max_cells, bench.out) == (
        "cells__pca-default__j1.h5ad", "X_pca", "cell_type", "batch", 42, 1000, "cells__pca-default__j1.metrics.json")


def test_reproduce_names_weights_only_when_they_are_not_the_variants_own():
    from czb_core.models.reproduce import run_command

    record = {"model": "scvi", "variant": "homo_sapiens", "organism": "homo_sapiens (given)", "device": "cuda:0",
              "params": {"batch_size": 128, "seed": 0, "batch_key": "donor"}, "weights_source": "/mirror/scvi"}
    argv = run_command(record, "d.h5ad", "o.h5ad")
    assert argv[argv.index("--weights") + 1] == "/mirror/scvi" and argv[argv.index("--device") + 1] == "cuda"
    assert "batch_key=donor" in argv
    from czb_core.models.reproduce import _configured_weights

    record["weights_source"] = _configured_weights(record)
    assert "--weights" not in run_command(record, "d.h5ad", "o.h5ad")
