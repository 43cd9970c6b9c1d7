"""Out-of-core pieces against exact in-memory computations on generated data."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from czb_core.errors import InputError
from czb_core.io.synthetic import make_synthetic_counts
from czb_core.streaming.incremental_pca import IncrementalPCA, principal_angles_deg
from czb_core.streaming.pca_baseline import stream_pca_baseline
from czb_core.streaming.row_blocks import RowBlocks, to_row_chunked
from czb_core.streaming.statistics import GeneDigests, OnePassMeanVar, TDigest

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def counts():
    return make_synthetic_counts(n_cells=1500, n_genes=400, seed=3)


def gathered(blocks: RowBlocks) -> sp.csr_matrix:
    return sp.vstack([x for _, _, x in blocks]).tocsr()


def test_row_blocks_read_csr_dense_zarr_and_layers_exactly(counts, tmp_path):
    adata = counts.copy()
    adata.layers["counts"] = adata.X.copy()
    adata.write_h5ad(tmp_path / "csr.h5ad")
    dense = counts.copy()
    dense.X = dense.X.toarray()
    dense.write_h5ad(tmp_path / "dense.h5ad")
    counts.write_zarr(tmp_path / "cells.zarr")
    expected = counts.X.toarray()
    for path, location in ((tmp_path / "csr.h5ad", "X"), (tmp_path / "csr.h5ad", "layers/counts"),
                           (tmp_path / "dense.h5ad", "X"), (tmp_path / "cells.zarr", "X")):
        with RowBlocks(path, location, chunk_rows=400) as blocks:
            assert blocks.shape == expected.shape
            assert [(lo, hi) for lo, hi, _ in blocks] == [(0, 400), (400, 800), (800, 1200), (1200, 1500)]
            np.testing.assert_array_equal(gathered(blocks).toarray(), expected)
    with pytest.raises(InputError, match="no matrix at 'raw/X'"):
        RowBlocks(tmp_path / "csr.h5ad", "raw/X")


def test_a_csc_matrix_is_converted_once_into_rows_within_the_budget(counts, tmp_path):
    csc = counts.copy()
    csc.X = sp.csc_matrix(csc.X)
    csc.write_h5ad(tmp_path / "csc.h5ad")
    with RowBlocks(tmp_path / "csc.h5ad") as blocks:
        assert blocks.needs_conversion
        with pytest.raises(InputError, match="stored by columns"):
            blocks.read(0, 10)
    steps = []
    budget = counts.X.nnz // 7  # forces several row groups and column blocks
    out = to_row_chunked(tmp_path / "csc.h5ad", "X", tmp_path / "rows.h5", budget_nnz=budget,
                         progress=lambda step, done, total: steps.append((done, total)))
    assert steps[-1][0] == steps[-1][1] >= 7
    with RowBlocks(out, chunk_rows=333) as blocks:
        converted = gathered(blocks)
    assert (converted != counts.X).nnz == 0 and converted.has_sorted_indices
    with h5py.File(out) as fh:
        assert fh["X"].attrs["encoding-type"] == "csr_matrix"


@pytest.mark.parametrize("algorithm", ["naive", "shifted_data"])
def test_one_pass_mean_and_variance_equal_numpy_overall_and_per_batch(algorithm):
    rng = np.random.default_rng(0)
    x = rng.normal(1e4, 3.0, size=(3000, 20))  # large mean, small spread: the shifted form's case
    x[:, :5] = rng.poisson(2.0, size=(3000, 5))
    batch_n = rng.integers(0, 3, 3000)
    stats = OnePassMeanVar(20, algorithm, n_batch=3)
    for lo in range(0, 3000, 700):
        block = x[lo:lo + 700]
        stats.update(sp.csr_matrix(block) if lo % 1400 == 0 else block, batch_n[lo:lo + 700])
    np.testing.assert_allclose(stats.mean_g, x.mean(0), rtol=1e-10)
    np.testing.assert_allclose(stats.var_g[:5], x[:, :5].var(0), rtol=1e-6)
    if algorithm == "shifted_data":  # the naive form loses digits on the large-mean genes
        np.testing.assert_allclose(stats.var_g, x.var(0), rtol=1e-6)
    for b in range(3):
        np.testing.assert_allclose(stats.batch_mean_bg[b], x[batch_n == b].mean(0), rtol=1e-10)
        np.testing.assert_allclose(stats.batch_var_bg[b, :5], x[batch_n == b][:, :5].var(0), rtol=1e-6)
    with pytest.raises(ValueError, match="algorithm"):
        OnePassMeanVar(3, "two_pass")


def test_t_digest_medians_of_non_zero_values_within_one_percent():
    cells = make_synthetic_counts(n_cells=8000, n_genes=150, seed=3)
    normalised = sp.csr_matrix(cells.X.multiply(1e4 / cells.X.sum(1)))  # the Geneformer-style normalised counts
    x = normalised.tocsc()
    digests = GeneDigests(x.shape[1])
    for lo in range(0, x.shape[0], 500):
        digests.update(normalised[lo:lo + 500])
    median_g = digests.median_g
    checked = 0
    for g in range(x.shape[1]):
        values = x.data[x.indptr[g]:x.indptr[g + 1]]
        values = values[values != 0]
        if len(values) >= 1000:  # a digest's centroids near the median hold ~n/30 values each
            assert median_g[g] == pytest.approx(np.median(values), rel=0.01)
            checked += 1
        elif not len(values):
            assert np.isnan(median_g[g])
    assert checked >= 100
    rng = np.random.default_rng(1)
    a, b = TDigest(), TDigest()
    left, right = rng.lognormal(0, 1, 40_000), rng.lognormal(1, 0.5, 60_000)
    a.add(left)
    b.add(right)
    a.merge(b)
    both = np.concatenate([left, right])
    for q in (0.01, 0.25, 0.5, 0.75, 0.99):
        assert a.quantile(q) == pytest.approx(np.quantile(both, q), rel=0.01)
    assert a.count == 100_000 and len(a.means) < 200


def test_incremental_pca_finds_the_exact_subspace_of_low_rank_data():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4000, 8)) @ rng.normal(size=(8, 120)) * 3 + rng.normal(size=(4000, 120)) * 0.3 + 5
    centred = x - x.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    pca = IncrementalPCA(8, oversample=4, seed=0)
    for lo in range(0, 4000, 500):
        pca.update(x[lo:lo + 500])
    assert principal_angles_deg(pca.components_kg, vt[:8]).max() < 0.5
    np.testing.assert_allclose(pca.explained_variance_k, s[:8] ** 2 / 4000, rtol=1e-3)
    np.testing.assert_allclose(pca.mean_g, x.mean(0), rtol=1e-10)
    z = pca.transform(x)
    exact = centred @ vt[:8].T
    for k in range(8):  # the same scores up to each component's sign
        assert abs(np.corrcoef(z[:, k], exact[:, k])[0, 1]) > 0.9999
    again = IncrementalPCA(8, oversample=4, seed=0)
    for lo in range(0, 4000, 500):
        again.update(x[lo:lo + 500])
    np.testing.assert_array_equal(again.components_kg, pca.components_kg)  # seeded


def test_streamed_baseline_matches_the_in_memory_baseline_and_its_metrics(tmp_path):
    from czb_core.tasks import MetricOptions
    from czb_core.tasks.scoring import score_embedding
    from model_runners.pca.model import pca_baseline

    adata = make_synthetic_counts(n_cells=3000, n_genes=1500, seed=5)
    adata.write_h5ad(tmp_path / "cells.h5ad")
    exact_nc = pca_baseline(adata.X, n_top_genes=500, n_comps=20)
    with RowBlocks(tmp_path / "cells.h5ad", chunk_rows=700) as blocks:
        streamed_nc = stream_pca_baseline(blocks, n_top_genes=500, n_comps=20, out_path=tmp_path / "emb.npy")
    assert isinstance(streamed_nc, np.memmap) and streamed_nc.shape == exact_nc.shape
    np.testing.assert_array_equal(np.load(tmp_path / "emb.npy"), streamed_nc)
    for k in range(5):  # the leading components agree up to sign
        assert abs(np.corrcoef(streamed_nc[:, k], exact_nc[:, k])[0, 1]) > 0.999
    # six cell types: the six signal directions are the same; the later, noise components (nearly equal
    # variances) are not unique and differ as between any two solvers
    assert principal_angles_deg(streamed_nc.T, exact_nc.T)[:6].max() < 1
    options = MetricOptions(label_key="cell_type", batch_key="batch", seed=42)
    tables = [pd.DataFrame(score_embedding(np.asarray(e), adata.obs, options, None)["table"]).set_index("metric")
              for e in (exact_nc, streamed_nc)]
    shared = tables[0].index.intersection(tables[1].index)
    assert len(shared) > 10
    np.testing.assert_allclose(tables[1].loc[shared, "model"].to_numpy(float),
                               tables[0].loc[shared, "model"].to_numpy(float), atol=0.01)


def test_facts_of_chunks_merge_into_one_run():
    from czb_core.streaming.chunks import merge_facts

    parts = [{"genes used": 120, "cells truncated": 2, "dropped": ["a"], "mode": "cls", "precision": "fp32"},
             {"genes used": 120, "cells truncated": 5, "dropped": [], "mode": "cls"},
             {"genes used": 120, "cells truncated": 0, "dropped": ["b", "c"], "mode": "cls"}]
    assert merge_facts(parts) == {"genes used": 120, "cells truncated": 7, "dropped": ["a", "b", "c"],
                                  "mode": "cls", "precision": "fp32"}
    assert merge_facts([{"shape": np.zeros(2)}, {"shape": np.ones(2)}])["shape"].tolist() == [0, 0]


def test_an_embedding_written_chunk_by_chunk_to_disk_reads_back_in_order(tmp_path, monkeypatch):
    from czb_core.config import get_settings
    from czb_core.streaming.chunks import EmbeddingOnDisk

    monkeypatch.setenv("CZB_WORKSPACE", str(tmp_path))
    out = EmbeddingOnDisk(max_rows=10)
    parts = [np.full((3, 4), k, dtype=np.float64) for k in range(3)]
    for part in parts:
        out.append(part)
    emb_nd = out.finish()
    assert emb_nd.shape == (9, 4) and emb_nd.dtype == np.float32
    np.testing.assert_array_equal(emb_nd, np.concatenate(parts))
    assert not list((get_settings().workspace / "chunked").glob("*"))  # unlinked once mapped: nothing left behind
