"""Batch integration task: are batches mixed while cell types stay apart?

`entropy_per_cell` follows cz-benchmarks 0.15 (`metrics/utils.py: compute_entropy_per_cell`): for each
cell, the batch labels of its 200 nearest cells (the cell itself included, as hnswlib returns it),
Shannon entropy of their frequencies divided by log(number of batches in the data), mean over cells.
1 = every neighbourhood holds all batches in equal parts; 0 = every neighbourhood is one batch.
We read the neighbours from the shared exact kNN graph; cz-benchmarks used an approximate hnswlib index.

`batch_silhouette` follows scib-metrics `silhouette_batch(X, labels, batch, rescale=True)`, euclidean,
nearest-cluster silhouette: within each label, the silhouette of each cell with respect to batch,
s -> 1 - |s|; the mean per label, then the mean over labels. Labels with a single batch, or with as
many batches as cells, are skipped (silhouette is undefined there). 1 = batches indistinguishable
within every cell type.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.metrics import silhouette_samples

from czb_core.tasks.neighbors import ENTROPY_K, KnnGraph
from czb_core.tasks.results import MetricResult


def entropy_per_cell(batches_n: pd.Series, knn: KnnGraph, k: int = ENTROPY_K) -> float:
    """Mean normalised batch entropy of each cell's k-neighbourhood (k capped at the graph's k)."""
    codes_n = pd.Categorical(batches_n).codes
    n_batches = int(codes_n.max()) + 1
    indices_nk, _ = knn.head(min(k, knn.k))
    neighbour_codes_nk = codes_n[indices_nk]
    counts_nb = np.stack([(neighbour_codes_nk == b).sum(axis=1) for b in range(n_batches)], axis=1)
    p_nb = counts_nb / counts_nb.sum(axis=1, keepdims=True)
    log_p_nb = np.log(p_nb, out=np.zeros_like(p_nb), where=p_nb > 0)
    entropy_n = -(p_nb * log_p_nb).sum(axis=1) / math.log(n_batches)
    return float(entropy_n.mean())


def silhouette_batch(emb_nd: np.ndarray, labels_n: pd.Series, batches_n: pd.Series) -> float:
    """scib-metrics' rescaled batch silhouette in [0, 1]; NaN when no label has 2+ batches."""
    labels, batches = np.asarray(labels_n), np.asarray(batches_n)
    group_means = []
    for group in np.unique(labels):
        in_group = labels == group
        group_batches = batches[in_group]
        n_batches = len(np.unique(group_batches))
        if n_batches == 1 or n_batches == in_group.sum():
            continue
        s_m = silhouette_samples(emb_nd[in_group], group_batches, metric="euclidean")
        group_means.append(float(np.mean(1 - np.abs(s_m))))
    return float(np.mean(group_means)) if group_means else math.nan


def batch_integration_metrics(
    emb_nd: np.ndarray, labels_n: pd.Series, batches_n: pd.Series, knn: KnnGraph
) -> list[MetricResult]:
    return [
        MetricResult("entropy_per_cell", entropy_per_cell(batches_n, knn)),
        MetricResult("batch_silhouette", silhouette_batch(emb_nd, labels_n, batches_n)),
    ]
