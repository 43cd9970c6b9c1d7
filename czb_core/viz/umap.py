"""The 2-D picture of an embedding: a seeded UMAP, computed by the job worker, and a plotting subsample.

`random_state=seed` makes umap-learn single-threaded; that is the price of a picture that is the same
every time (about 90 s for 200,000 cells). numba compiles umap on first use in a process (tens of
seconds; umap caches what it can next to its sources), which is why this runs in the worker, never in a
page script.
"""

from __future__ import annotations

import warnings

import numpy as np

from czb_core.errors import InputError

MIN_PLOT_CLASS = 20  # a rare label keeps this many points, so it stays visible in a subsampled plot


def compute_umap(emb_nd: np.ndarray, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.5) -> np.ndarray:
    """`umap_n2` (float32) of `emb_nd`; fewer than 3 cells have no neighbourhood to lay out: an error."""
    n_cells = emb_nd.shape[0]
    if n_cells < 3:
        raise InputError(f"a UMAP needs at least 3 cells; this run has {n_cells}")
    import umap  # numba compilation on first import: keep it out of module import

    reducer = umap.UMAP(
        n_neighbors=min(n_neighbors, n_cells - 1), min_dist=min_dist, n_components=2, random_state=seed,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_jobs value .* overridden", category=UserWarning)
        umap_n2 = reducer.fit_transform(np.asarray(emb_nd, dtype=np.float32))
    return np.asarray(umap_n2, dtype=np.float32)


def stratified_subsample(labels_n, max_points: int = 200_000, seed: int = 0) -> np.ndarray:
    """Sorted positions of the points to plot, each label keeping its share; all of them when n <= max_points.

    The metrics' subsample with a plotting floor per label; missing labels count as one label.
    """
    from czb_core.tasks.subsample import stratified_subsample as metrics_subsample  # czb_core.tasks is slow to import

    return metrics_subsample(labels_n, max_points, seed, min_class_size=MIN_PLOT_CLASS)
