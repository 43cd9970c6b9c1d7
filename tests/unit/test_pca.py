"""The PCA baseline against scanpy's own pipeline, on sparse input, seeded."""

import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from czb_core.io.synthetic import make_synthetic_counts
from model_runners.pca.model import normalize_log1p, pca_baseline


@pytest.fixture(scope="module")
def counts():
    return make_synthetic_counts(n_cells=600, n_genes=800, n_types=5, mean_counts=1200, seed=3)


def scanpy_reference(adata, n_top_genes, n_comps, seed):
    a = adata.copy()
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=n_top_genes, flavor="seurat")
    a = a[:, a.var["highly_variable"]].copy()
    sc.pp.pca(a, n_comps=n_comps, svd_solver="arpack", random_state=seed)
    return a.obsm["X_pca"]


def test_normalize_log1p_matches_scanpy(counts):
    ours = normalize_log1p(counts.X)
    ref = counts.copy()
    sc.pp.normalize_total(ref)
    sc.pp.log1p(ref)
    assert sp.isspmatrix_csr(ours)
    np.testing.assert_allclose(ours.toarray(), ref.X.toarray(), rtol=1e-5, atol=1e-6)


def test_embedding_matches_scanpy_up_to_component_sign(counts):
    ours = pca_baseline(counts.X, n_top_genes=300, n_comps=20, seed=0)
    ref = scanpy_reference(counts, 300, 20, 0)
    assert ours.shape == (600, 20) and ours.dtype == np.float32
    signs = np.sign(np.sum(ours * ref, axis=0))
    np.testing.assert_allclose(ours * signs, ref, rtol=1e-3, atol=2e-3)


def test_sparse_input_is_never_densified(counts, monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("the count matrix was densified")

    monkeypatch.setattr(sp.csr_matrix, "toarray", refuse)
    monkeypatch.setattr(sp.csr_matrix, "todense", refuse)
    emb = pca_baseline(counts.X, n_top_genes=300, n_comps=10, seed=0)
    assert emb.shape == (600, 10)


def test_seeded_and_separates_cell_types(counts):
    a = pca_baseline(counts.X, n_top_genes=300, n_comps=20, seed=7)
    b = pca_baseline(counts.X, n_top_genes=300, n_comps=20, seed=7)
    np.testing.assert_array_equal(a, b)
    labels = counts.obs["cell_type"].to_numpy()
    acc = cross_val_score(KNeighborsClassifier(5), a, labels, cv=5).mean()
    noise = np.random.default_rng(0).normal(size=a.shape)
    shuffled = cross_val_score(KNeighborsClassifier(5), noise, labels, cv=5).mean()
    assert acc > 0.9 and acc > shuffled + 0.4


def test_fewer_genes_than_hvgs_uses_all_genes():
    small = make_synthetic_counts(n_cells=80, n_genes=40, n_types=2, seed=0)
    emb = pca_baseline(small.X, n_top_genes=3000, n_comps=50, seed=0)
    assert emb.shape == (80, 39)


def test_hvg_selection_matches_scanpy(counts):
    from model_runners.pca.model import seurat_hvg_mask

    ref = counts.copy()
    sc.pp.normalize_total(ref)
    sc.pp.log1p(ref)
    sc.pp.highly_variable_genes(ref, n_top_genes=200, flavor="seurat")
    ours = seurat_hvg_mask(normalize_log1p(counts.X), 200, chunk_rows=97)  # several uneven chunks
    np.testing.assert_array_equal(ours, ref.var["highly_variable"].to_numpy())
