"""Probabilistic PCA and the streamed logistic regression against their exact counterparts."""

from __future__ import annotations

import numpy as np
import pytest

from czb_core.streaming.incremental_pca import principal_angles_deg
from czb_core.streaming.logistic import StreamedLogisticRegression, fit_logistic
from czb_core.streaming.ppca import ProbabilisticPCA, fit_ppca

pytestmark = pytest.mark.unit


def blocks_of(x, size):
    return [x[lo:lo + size] for lo in range(0, len(x), size)]


@pytest.mark.parametrize("flavour", ["marginalized", "linear_vae"])
def test_ppca_reaches_the_maximum_likelihood_solution(flavour):
    rng = np.random.default_rng(0)
    w_true = rng.normal(size=(3, 20)) * np.array([[3.0], [2.0], [1.5]])
    x = rng.normal(size=(5000, 3)) @ w_true + rng.normal(scale=0.5, size=(5000, 20)) + 2.0
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(x.T, bias=True))
    top = eigenvectors[:, ::-1][:, :3].T
    sigma2_ml = eigenvalues[:-3].mean()  # Tipping and Bishop: the mean of the discarded variances
    model = ProbabilisticPCA(20, 3, n_obs=5000, flavour=flavour, mean_g=x.mean(0), seed=0)
    history = fit_ppca(model, blocks_of(x, 1000), n_epochs=40, lr=0.2)
    assert history[-1] < history[0]
    assert principal_angles_deg(model.W_kg.detach().numpy(), top).max() < 2
    assert float(model.sigma) ** 2 == pytest.approx(sigma2_ml, rel=0.05)
    assert model.explained_variance_k().shape == (3,)  # (its scale converges more slowly than the subspace)
    z = model.embed(x)
    assert z.shape == (5000, 3) and principal_angles_deg(z.T, ((x - x.mean(0)) @ top.T).T).max() < 5


def test_ppca_refuses_an_unknown_flavour_and_is_seeded():
    with pytest.raises(ValueError, match="flavour"):
        ProbabilisticPCA(5, 2, 10, flavour="vae")
    a, b = ProbabilisticPCA(5, 2, 10, seed=3), ProbabilisticPCA(5, 2, 10, seed=3)
    assert np.array_equal(a.W_kg.detach().numpy(), b.W_kg.detach().numpy())


def test_streamed_logistic_regression_matches_a_full_batch_fit_and_the_prior_shrinks():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    centres = rng.normal(scale=2.0, size=(3, 30))
    centres[:, 10:] = 0.0  # only the first 10 genes carry the label
    y = rng.integers(0, 3, 6000)
    x = (centres[y] + rng.normal(size=(6000, 30))).astype(np.float32)
    train, test = slice(0, 5000), slice(5000, None)
    model = StreamedLogisticRegression(30, 3, n_obs=5000, prior_scale=0.1, init_scale=0.01, seed=0)
    batches = list(zip(blocks_of(x[train], 250), blocks_of(y[train], 250)))
    history = fit_logistic(model, batches, n_epochs=30, lr=2e-2)
    assert history[-1] < history[0]
    ours = (model.predict(x[test]) == y[test]).mean()
    exact = LogisticRegression(max_iter=1000).fit(x[train], y[train]).score(x[test], y[test])
    assert ours >= exact - 0.02
    w = model.W_gc.detach().numpy()
    assert np.abs(w[10:]).mean() < 0.2 * np.abs(w[:10]).mean()  # the Laplace prior keeps the noise genes near 0


def test_cross_split_switches_to_the_minibatch_logistic_regression_on_atlas_sized_training_sets(monkeypatch):
    """Same predictions' quality from the minibatch classifier as from sklearn's on separable groups; the
    switch happens above the threshold only and is named in the lr rows."""
    import pandas as pd

    from czb_core.tasks import cross_split

    rng = np.random.default_rng(0)
    labels_n = np.repeat(["a", "b", "c"], 400)
    emb_nd = rng.normal(size=(1200, 6)).astype(np.float32) + 4.0 * np.eye(6)[np.repeat([0, 1, 2], 400)]
    split_n = pd.Series(np.where(rng.random(1200) < 0.7, "train", "test"))
    exact = cross_split.cross_split_transfer(emb_nd, pd.Series(labels_n), split_n, "train", "test", seed=0)
    monkeypatch.setattr(cross_split, "STREAMED_LR_MIN_CELLS", 100)
    streamed = cross_split.cross_split_transfer(emb_nd, pd.Series(labels_n), split_n, "train", "test", seed=0)
    lr = {m.metric_type: m for m in streamed.metrics if m.params["classifier"] == "lr"}
    exact_lr = {m.metric_type: m.value for m in exact.metrics if m.params["classifier"] == "lr"}
    assert lr["accuracy"].params["solver"] == "minibatch L1-prior" and "solver" not in {
        k for m in exact.metrics for k in m.params}
    assert lr["accuracy"].value > 0.97 and abs(lr["accuracy"].value - exact_lr["accuracy"]) < 0.02
