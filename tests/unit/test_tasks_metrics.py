"""Each task metric against an independent computation on small synthetic embeddings."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from sklearn.metrics import adjusted_rand_score, silhouette_score

from czb_core.tasks.batch_integration import entropy_per_cell, silhouette_batch
from czb_core.tasks.clustering import clustering_metrics, leiden_clusters
from czb_core.tasks.embedding import silhouette_label
from czb_core.tasks.label_prediction import fold_scores, label_prediction_metrics
from czb_core.tasks.neighbors import KnnGraph, compute_knn, neighbors_adata


def blobs(n_per_class=120, n_classes=4, dims=10, spread=20.0, seed=0):
    """Gaussian clusters, well apart when spread >> 1."""
    rng = np.random.default_rng(seed)
    labels_n = np.repeat([f"type{i}" for i in range(n_classes)], n_per_class)
    centers_cd = rng.normal(scale=spread, size=(n_classes, dims))
    codes_n = pd.Categorical(labels_n).codes
    emb_nd = centers_cd[codes_n] + rng.normal(size=(len(labels_n), dims))
    return emb_nd, pd.Series(labels_n)


def metric(metrics, metric_type, classifier=None):
    hits = [m for m in metrics if m.metric_type == metric_type and m.params.get("classifier") == classifier]
    assert len(hits) == 1, (metric_type, classifier, metrics)
    return hits[0].value


# --- neighbours -----------------------------------------------------------------------------------


def test_knn_lists_self_first_at_distance_zero_and_matches_brute_force():
    emb_nd, _ = blobs(n_per_class=30)
    knn = compute_knn(emb_nd, 10)
    dist_nn = np.linalg.norm(emb_nd[:, None, :] - emb_nd[None, :, :], axis=2)
    assert (knn.indices_nk[:, 0] == np.arange(len(emb_nd))).all()
    assert (knn.distances_nk[:, 0] == 0).all()
    expected_nk = np.sort(dist_nn, axis=1)[:, :10]
    np.testing.assert_allclose(knn.distances_nk, expected_nk, atol=1e-4)


def test_knn_puts_self_first_among_duplicate_cells():
    emb_nd = np.zeros((6, 3))
    emb_nd[3:] = 5.0
    knn = compute_knn(emb_nd, 3)
    assert (knn.indices_nk[:, 0] == np.arange(6)).all()
    assert set(knn.indices_nk[0]) == {0, 1, 2}


def test_shared_knn_gives_scanpy_connectivities_and_leiden():
    """Below 4,096 cells scanpy searches exactly, so our shared graph must reproduce it bit for bit."""
    emb_nd, _ = blobs(n_per_class=150, spread=3.0)
    emb_nd = emb_nd.astype(np.float32)
    reference = ad.AnnData(X=emb_nd)
    sc.pp.neighbors(reference, use_rep="X", random_state=42)
    ours = neighbors_adata(emb_nd, compute_knn(emb_nd, 200), seed=42)
    diff = abs(reference.obsp["connectivities"] - ours.obsp["connectivities"])
    assert diff.max() < 1e-6
    sc.tl.leiden(reference, flavor="igraph", n_iterations=2, random_state=42)
    ours_clusters = leiden_clusters(emb_nd, compute_knn(emb_nd, 15), seed=42)
    assert (reference.obs["leiden"].to_numpy() == ours_clusters).all()


# --- clustering -----------------------------------------------------------------------------------


def test_clustering_recovers_separated_blobs():
    emb_nd, labels_n = blobs()
    clusters_n = leiden_clusters(emb_nd, compute_knn(emb_nd, 15), seed=0)
    metrics = clustering_metrics(labels_n, clusters_n)
    assert metric(metrics, "adjusted_rand_index") == pytest.approx(adjusted_rand_score(labels_n, clusters_n))
    assert metric(metrics, "adjusted_rand_index") > 0.95
    assert metric(metrics, "normalized_mutual_info") > 0.95


def test_clustering_of_random_embedding_is_near_chance():
    rng = np.random.default_rng(1)
    emb_nd = rng.normal(size=(480, 10))
    labels_n = pd.Series(rng.choice(["a", "b", "c", "d"], size=480))
    clusters_n = leiden_clusters(emb_nd, compute_knn(emb_nd, 15), seed=0)
    assert abs(metric(clustering_metrics(labels_n, clusters_n), "adjusted_rand_index")) < 0.05


# --- embedding ------------------------------------------------------------------------------------


def test_silhouette_label_is_sklearn_silhouette_rescaled():
    emb_nd, labels_n = blobs(spread=2.0)
    expected = (silhouette_score(emb_nd, labels_n) + 1) / 2
    assert silhouette_label(emb_nd, labels_n) == pytest.approx(expected, abs=1e-12)
    assert 0.5 < expected < 1


# --- label prediction -----------------------------------------------------------------------------


def test_label_prediction_on_separated_blobs_is_near_perfect():
    emb_nd, labels_n = blobs(n_per_class=60)
    metrics = label_prediction_metrics(fold_scores(emb_nd, labels_n, seed=0))
    for name in ("lr", "knn", "rf", "MEAN(knn,lr,rf)"):
        assert metric(metrics, "mean_fold_accuracy", name) > 0.98
        assert metric(metrics, "mean_fold_mcc", name) > 0.97
        assert metric(metrics, "mean_fold_auroc", name) > 0.99


def test_label_prediction_on_random_embedding_is_near_chance():
    rng = np.random.default_rng(2)
    emb_nd = rng.normal(size=(600, 8))
    labels_n = pd.Series(rng.choice(["a", "b", "c", "d"], size=600))
    metrics = label_prediction_metrics(fold_scores(emb_nd, labels_n, seed=0))
    assert abs(metric(metrics, "mean_fold_accuracy", "MEAN(knn,lr,rf)") - 0.25) < 0.07
    assert abs(metric(metrics, "mean_fold_mcc", "MEAN(knn,lr,rf)")) < 0.08
    assert abs(metric(metrics, "mean_fold_auroc", "MEAN(knn,lr,rf)") - 0.5) < 0.07


def test_label_prediction_mean_is_mean_of_classifiers_and_small_classes_are_dropped():
    emb_nd, labels_n = blobs(n_per_class=40, spread=1.0)
    labels_n.iloc[:5] = "rare"  # 5 cells < min_class_size
    folds_df = fold_scores(emb_nd, labels_n, seed=0)
    assert len(folds_df) == 15
    metrics = label_prediction_metrics(folds_df)
    per_classifier = [metric(metrics, "mean_fold_f1", c) for c in ("lr", "knn", "rf")]
    assert metric(metrics, "mean_fold_f1", "MEAN(knn,lr,rf)") == pytest.approx(np.mean(per_classifier))
    assert len(metrics) == 4 * 6


# --- batch integration ----------------------------------------------------------------------------


def test_entropy_per_cell_by_hand():
    knn = KnnGraph(
        indices_nk=np.array([[0, 1], [1, 0], [2, 3], [3, 2]]),
        distances_nk=np.zeros((4, 2), dtype=np.float32),
    )
    batches_n = pd.Series(["a", "b", "a", "a"])
    # cells 0 and 1 see one a and one b (entropy log 2 / log 2 = 1); cells 2 and 3 see only a (0)
    assert entropy_per_cell(batches_n, knn) == pytest.approx(0.5)


def test_entropy_mixed_batches_near_one_and_separated_near_zero():
    rng = np.random.default_rng(3)
    emb_nd = rng.normal(size=(1000, 10))
    mixed_n = pd.Series(np.tile(["a", "b"], 500))
    assert entropy_per_cell(mixed_n, compute_knn(emb_nd, 200)) > 0.95
    separated_nd = emb_nd + np.where(mixed_n == "a", 0.0, 100.0)[:, None]
    assert entropy_per_cell(mixed_n, compute_knn(separated_nd, 200)) < 0.01


def _naive_silhouette_n(x_nd, groups_n):
    """Textbook silhouette, loops and all: a = mean distance within own group, b = nearest other group."""
    dist_nn = np.linalg.norm(x_nd[:, None, :] - x_nd[None, :, :], axis=2)
    out = []
    for i in range(len(x_nd)):
        same = (groups_n == groups_n[i]) & (np.arange(len(x_nd)) != i)
        if not same.any():
            out.append(0.0)
            continue
        a = dist_nn[i, same].mean()
        b = min(dist_nn[i, groups_n == g].mean() for g in set(groups_n) if g != groups_n[i])
        out.append((b - a) / max(a, b))
    return np.array(out)


def test_silhouette_batch_matches_scib_definition_by_hand():
    rng = np.random.default_rng(4)
    emb_nd = rng.normal(size=(90, 5))
    labels = np.repeat(["x", "y", "z"], 30)
    batches = np.tile(["b1", "b2", "b3"], 30)
    emb_nd[batches == "b1"] += 0.8  # a partial batch effect
    batches[60:] = "b1"  # label z has a single batch: skipped, as scib-metrics does
    expected = np.mean(
        [np.mean(1 - np.abs(_naive_silhouette_n(emb_nd[labels == g], batches[labels == g]))) for g in ("x", "y")]
    )
    assert silhouette_batch(emb_nd, pd.Series(labels), pd.Series(batches)) == pytest.approx(expected, abs=1e-10)


def test_silhouette_batch_is_nan_when_no_label_has_two_batches():
    emb_nd, labels_n = blobs(n_per_class=20)
    assert math.isnan(silhouette_batch(emb_nd, labels_n, labels_n))
