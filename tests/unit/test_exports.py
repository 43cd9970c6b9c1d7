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
