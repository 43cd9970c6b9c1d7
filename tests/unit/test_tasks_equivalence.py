"""The fast paths give the very numbers of the library calls they replace, bit for bit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold, cross_validate

from czb_core.tasks.classifiers import make_classifiers
from czb_core.tasks.fuzzy_graph import umap_connectivities
from czb_core.tasks.label_prediction import _scorers, fold_scores
from czb_core.tasks.neighbors import compute_knn
from czb_core.viz.umap import import_umap


def clouds(n_cells, dims, n_labels, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    labels_n = rng.choice(n_labels, size=n_cells, p=rng.dirichlet(np.full(n_labels, 2.0)))
    emb_nd = rng.normal(scale=0.6, size=(n_labels, dims))[labels_n] + rng.normal(size=(n_cells, dims))
    return emb_nd.astype(dtype), pd.Series([f"type{i}" for i in labels_n])


@pytest.mark.parametrize(("n_cells", "k", "dtype"),
                         [(1500, 15, np.float32), (700, 15, np.float64), (12, 12, np.float32)])
def test_connectivities_equal_umap_fuzzy_simplicial_set_bit_for_bit(n_cells, k, dtype):
    import scipy.sparse as sp

    import_umap()  # umap's numba code from the disk cache `czb warmup` fills, not compiled again (~15 s)
    from umap.umap_ import fuzzy_simplicial_set

    emb_nd, _ = clouds(n_cells, 20, 5, seed=n_cells, dtype=dtype)
    emb_nd[1] = emb_nd[0]  # a duplicate cell: a zero distance besides the cell's own
    indices_nk, distances_nk = compute_knn(emb_nd, k).head(k)
    reference, _, _ = fuzzy_simplicial_set(
        sp.coo_matrix((n_cells, 1)), k, None, None, knn_indices=indices_nk, knn_dists=distances_nk
    )
    reference = reference.tocsr()
    ours = umap_connectivities(indices_nk, distances_nk)
    assert ours.dtype == reference.dtype
    assert np.array_equal(ours.indptr, reference.indptr) and np.array_equal(ours.indices, reference.indices)
    assert np.array_equal(ours.data, reference.data)


def test_fold_scores_equal_cross_validate_per_classifier():
    emb_nd, labels_n = clouds(900, 12, 5, seed=3)
    labels_n.iloc[:6] = "rare"  # dropped: fewer than 10 cells
    ours = fold_scores(emb_nd, labels_n, seed=11)

    keep_n = (labels_n != "rare").to_numpy()
    labels = pd.Categorical(labels_n[keep_n].astype(str))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=11)
    for name, pipeline in make_classifiers(11).items():
        expected = cross_validate(pipeline, emb_nd[keep_n], labels.codes, cv=folds,
                                  scoring=_scorers(len(labels.categories)))
        rows = ours[ours["classifier"] == name].sort_values("fold")
        for metric in ("accuracy", "f1", "precision", "recall", "auroc", "mcc"):
            assert rows[metric].tolist() == expected[f"test_{metric}"].tolist(), (name, metric)
    assert ours["classifier"].tolist() == [n for n in ("lr", "knn", "rf") for _ in range(5)]


def test_fold_scores_binary_labels_use_the_binary_average():
    emb_nd, labels_n = clouds(300, 6, 2, seed=5)
    ours = fold_scores(emb_nd, labels_n, seed=0)
    labels = pd.Categorical(labels_n.astype(str))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    expected = cross_validate(make_classifiers(0)["knn"], emb_nd, labels.codes, cv=folds, scoring=_scorers(2))
    assert ours[ours["classifier"] == "knn"]["f1"].tolist() == expected["test_f1"].tolist()
