"""A UMAP of more cells than it is fitted on: the layout of a seeded sample, the rest placed by transform."""

import numpy as np
import pytest

from czb_core.viz.umap import compute_umap, umap_note

pytestmark = pytest.mark.slow  # numba loads (or compiles) umap-learn on first use


def two_groups(n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    group_n = np.arange(n_cells) % 2
    emb_nd = rng.normal(size=(n_cells, 8)).astype(np.float32) + 12.0 * group_n[:, None]
    return emb_nd, group_n


def test_cells_past_the_fit_sample_are_placed_by_transform_beside_their_own_group():
    emb_nd, group_n = two_groups(300)
    umap_n2 = compute_umap(emb_nd, seed=3, fit_max=120)
    assert umap_n2.shape == (300, 2) and umap_n2.dtype == np.float32 and np.isfinite(umap_n2).all()
    np.testing.assert_array_equal(umap_n2, compute_umap(emb_nd, seed=3, fit_max=120))  # seeded
    centres = np.stack([umap_n2[group_n == g].mean(0) for g in (0, 1)])
    nearest_g = np.argmin(((umap_n2[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    assert (nearest_g == group_n).mean() > 0.95  # transformed cells land with the group they belong to
    assert umap_note(300, 120) == ("UMAP fitted on about 120 of 300 cells (a seeded sample); the others were placed "
                                   "into that layout by umap-learn's transform")
    assert "keeping each 'cell_type' value's share" in umap_note(300, 120, stratified_by="cell_type")
    assert umap_note(100, 120) is None


def test_with_labels_the_fit_sample_keeps_a_rare_cell_type(monkeypatch):
    import pandas as pd

    from czb_core.viz import umap as viz_umap

    emb_nd, group_n = two_groups(600)
    labels_n = pd.Series(np.where(np.arange(600) < 24, "rare", np.where(group_n == 1, "b", "a")))
    samples = []
    stratified = viz_umap.stratified_subsample
    monkeypatch.setattr(viz_umap, "stratified_subsample",
                        lambda *args, **kwargs: samples.append(stratified(*args, **kwargs)) or samples[-1])
    umap_n2 = compute_umap(emb_nd, seed=1, fit_max=120, labels_n=labels_n)
    (fit_rows,) = samples
    assert (fit_rows < 24).sum() >= viz_umap.MIN_PLOT_CLASS  # a random 120 of 600 would hold about 5 of them
    assert umap_n2.shape == (600, 2) and np.isfinite(umap_n2).all()
