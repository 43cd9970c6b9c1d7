"""The 2-D picture of an embedding: a seeded UMAP, computed by the job worker, and a plotting subsample.

`random_state=seed` makes umap-learn single-threaded; that is the price of a picture that is the same
every time (about 90 s for 200,000 cells). numba compiles umap on first use in a process (tens of
seconds; umap caches what it can next to its sources), which is why this runs in the worker, never in a
page script.
"""

from __future__ import annotations

import sys
import warnings
from types import ModuleType
from typing import Optional

import numpy as np

from czb_core.errors import InputError

MIN_PLOT_CLASS = 20  # a rare label keeps this many points, so it stays visible in a subsampled plot


UMAP_EPOCHS = 200  # umap-learn's own count above 10,000 cells; its 500 below that cost a small run ~10 s more
UMAP_FIT_MAX = 200_000  # above this many cells the layout is fitted on a seeded sample, the rest transformed
TRANSFORM_ROWS = 100_000  # cells placed per transform call, so its neighbour search stays bounded


def import_umap() -> ModuleType:
    """`umap`, with every jitted function of umap and pynndescent cached on disk.

    The default is switched only while umap and pynndescent are imported for the first time (their
    decorators run then), and restored afterwards; numba warns about the few functions it cannot cache."""
    if "umap" in sys.modules:
        return sys.modules["umap"]
    import numba

    plain_njit = numba.njit

    def njit_cached(*args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:  # bare @numba.njit
            return plain_njit(cache=True)(args[0])
        kwargs.setdefault("cache", True)
        return plain_njit(*args, **kwargs)

    numba.njit = njit_cached
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Cannot cache compiled function", category=Warning)
            import umap
    finally:
        numba.njit = plain_njit
    return umap


def compute_umap(emb_nd: np.ndarray, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.5,
                 fit_max: int = UMAP_FIT_MAX, labels_n=None) -> np.ndarray:
    """`umap_n2` (float32) of `emb_nd`; fewer than 3 cells have no neighbourhood to lay out: an error.

    Above `fit_max` cells (an atlas), the layout is fitted on about `fit_max` cells drawn with `seed` and
    the others are placed into it by umap-learn's `transform`, block by block: the fit's cost grows faster
    than linearly with the cells, the transform's linearly (`umap_note` says so on the page). With
    `labels_n` the sample keeps each label's share and at least `MIN_PLOT_CLASS` cells of a rare one, so a
    rare cell type has a place of its own in the layout rather than being placed among its neighbours."""
    n_cells = emb_nd.shape[0]
    if n_cells < 3:
        raise InputError(f"a UMAP needs at least 3 cells; this run has {n_cells}")
    umap = import_umap()  # numba compiles (or loads its disk cache) on first import: not at module import
    emb_nd = np.asarray(emb_nd, dtype=np.float32)
    if n_cells <= fit_max:
        fit_rows = np.arange(n_cells)
    elif labels_n is not None:
        fit_rows = stratified_subsample(labels_n, fit_max, seed)
    else:
        fit_rows = np.sort(np.random.default_rng(seed).choice(n_cells, fit_max, replace=False))
    reducer = umap.UMAP(
        n_neighbors=min(n_neighbors, len(fit_rows) - 1), min_dist=min_dist, n_components=2, random_state=seed,
        n_epochs=UMAP_EPOCHS,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_jobs value .* overridden", category=UserWarning)
        fitted_n2 = reducer.fit_transform(emb_nd[fit_rows])
        if len(fit_rows) == n_cells:
            return np.asarray(fitted_n2, dtype=np.float32)
        umap_n2 = np.empty((n_cells, 2), dtype=np.float32)
        umap_n2[fit_rows] = fitted_n2
        rest = np.setdiff1d(np.arange(n_cells), fit_rows, assume_unique=True)
        for start in range(0, len(rest), TRANSFORM_ROWS):
            rows = rest[start:start + TRANSFORM_ROWS]
            umap_n2[rows] = reducer.transform(emb_nd[rows])
    return umap_n2


def umap_note(n_cells: int, fit_max: int = UMAP_FIT_MAX, stratified_by: Optional[str] = None) -> Optional[str]:
    """What the page says about a layout that was not fitted on every cell; None when it was."""
    if n_cells <= fit_max:
        return None
    sample = (f"a seeded sample keeping each {stratified_by!r} value's share" if stratified_by else "a seeded sample")
    return (f"UMAP fitted on about {fit_max:,} of {n_cells:,} cells ({sample}); the others were placed into that "
            "layout by umap-learn's transform")


def stratified_subsample(labels_n, max_points: int = 200_000, seed: int = 0) -> np.ndarray:
    """Sorted positions of the points to plot, each label keeping its share; all of them when n <= max_points.

    The metrics' subsample with a plotting floor per label; missing labels count as one label.
    """
    from czb_core.tasks.subsample import stratified_subsample as metrics_subsample  # czb_core.tasks is slow to import

    return metrics_subsample(labels_n, max_points, seed, min_class_size=MIN_PLOT_CLASS)
