"""Clustering task: do Leiden clusters of the embedding recover the labels?

As cz-benchmarks 0.15 (`tasks/utils.py: cluster_embedding`): scanpy's k=15 UMAP connectivities, then
`sc.tl.leiden(flavor="igraph", n_iterations=2, random_state=seed)` at resolution 1, scored by sklearn's
adjusted Rand index and normalised mutual information against the labels. The neighbours come from
the shared exact kNN graph (see `neighbors.py`) instead of a second, approximate search.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scanpy as sc
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from czb_core.tasks.neighbors import KnnGraph, neighbors_adata
from czb_core.tasks.results import MetricResult

N_ITERATIONS = 2


def leiden_clusters(emb_nd: np.ndarray, knn: KnnGraph, seed: int) -> np.ndarray:
    """Leiden cluster id per cell (strings, as scanpy stores them)."""
    adata = neighbors_adata(emb_nd, knn, seed)
    sc.tl.leiden(adata, flavor="igraph", n_iterations=N_ITERATIONS, random_state=seed, key_added="leiden")
    return adata.obs["leiden"].to_numpy()


def clustering_metrics(labels_n: pd.Series, clusters_n: np.ndarray) -> list[MetricResult]:
    """ARI and NMI (sklearn defaults: arithmetic-mean normalisation) of clusters against labels."""
    labels = np.asarray(labels_n)
    return [
        MetricResult("adjusted_rand_index", float(adjusted_rand_score(labels, clusters_n))),
        MetricResult("normalized_mutual_info", float(normalized_mutual_info_score(labels, clusters_n))),
    ]
