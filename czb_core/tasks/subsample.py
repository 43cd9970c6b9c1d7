"""A seeded, label-stratified subsample so metrics stay affordable on big datasets.

Silhouettes cost O(n^2) distances and label prediction trains 15 classifiers; above
`Settings.metrics_max_cells` (50,000 by default, `CZB_METRICS_MAX_CELLS`) the tasks run on a subsample
that keeps each label's share of the cells. Rare labels are kept at `min_class_size` cells (or all of
theirs when they have fewer), so label prediction does not drop them only because of the subsample;
n_used may therefore exceed the cap by up to n_labels x min_class_size. Results carry n_used/n_total.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def stratified_subsample(labels_n: pd.Series, max_cells: int, seed: int, min_class_size: int = 10) -> np.ndarray:
    """Sorted positions (0..n-1) of the cells to keep; all of them when n <= max_cells."""
    n_total = len(labels_n)
    if n_total <= max_cells:
        return np.arange(n_total)
    rng = np.random.default_rng(seed)
    codes_n = pd.Categorical(labels_n).codes
    fraction = max_cells / n_total
    kept = []
    for code in np.unique(codes_n):
        members = np.flatnonzero(codes_n == code)
        quota = min(len(members), max(min_class_size, round(len(members) * fraction)))
        kept.append(rng.choice(members, size=quota, replace=False))
    return np.sort(np.concatenate(kept))
