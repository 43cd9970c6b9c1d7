"""Embedding task: are cells of one label closer to each other than to other labels?

cz-benchmarks reports scib-metrics' `silhouette_label(X, labels)` with its defaults: rescale=True,
euclidean. That is the mean silhouette width over all cells mapped from [-1, 1] to [0, 1]:
(mean_i s(i) + 1) / 2. scib-metrics' `silhouette_samples` re-implements sklearn's in JAX (a cell alone
in its label scores 0 in both), so sklearn's `silhouette_score` gives the same number without JAX.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import silhouette_score

from czb_core.tasks.results import MetricResult


def silhouette_label(emb_nd: np.ndarray, labels_n: pd.Series) -> float:
    """Rescaled label silhouette in [0, 1]; higher = labels better separated. O(n^2) distances."""
    return (float(silhouette_score(emb_nd, np.asarray(labels_n), metric="euclidean")) + 1) / 2


def embedding_metrics(emb_nd: np.ndarray, labels_n: pd.Series) -> list[MetricResult]:
    return [MetricResult("silhouette_score", silhouette_label(emb_nd, labels_n))]
