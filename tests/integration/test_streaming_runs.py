"""Streamed runs through the pipeline and the CLI: the same cells and genes, read in row blocks."""

from __future__ import annotations

from types import SimpleNamespace

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from czb_core.cli import main
from czb_core.config import get_settings
from czb_core.errors import InputError
from czb_core.io.synthetic import make_synthetic_counts
from czb_core.models.pipeline import embed_file, reading_mode
from czb_core.streaming import plan

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    adata = make_synthetic_counts(n_cells=1200, n_genes=600, seed=7)
    path = tmp_path_factory.mktemp("stream") / "cells.h5ad"
    adata.write_h5ad(path)
    return adata, path


def little_memory(monkeypatch, available: int) -> None:
    monkeypatch.setattr(plan.psutil, "virtual_memory", lambda: SimpleNamespace(available=available))


def test_czb_run_stream_on_a_csc_file_converts_once_and_matches_the_in_memory_run(cells, tmp_path, capsys):
    adata, _ = cells
    csc = adata.copy()
    csc.X = sp.csc_matrix(csc.X)
    path = tmp_path / "csc.h5ad"
    csc.write_h5ad(path)
    args = ["run", str(path), "--model", "pca", "--param", "n_top_genes=300", "--param", "n_comps=10"]
    assert main(args + ["--out", str(tmp_path / "memory.h5ad")]) == 0
    assert main(args + ["--out", str(tmp_path / "streamed.h5ad"), "--stream"]) == 0
    err = capsys.readouterr().err
    assert "convert to rows" in err and "incremental pca" in err
    memory, streamed = (ad.read_h5ad(tmp_path / f"{n}.h5ad") for n in ("memory", "streamed"))
    assert memory.uns["czb_run"]["reading"] == "in memory" and streamed.uns["czb_run"]["reading"] == "streamed"
    assert "incremental PCA" in streamed.uns["czb_run"]["facts"]["reading"]
    assert list(streamed.obs_names) == list(adata.obs_names)
    for k in range(5):
        a, b = memory.obsm["X_pca"][:, k], streamed.obsm["X_pca"][:, k]
        assert abs(np.corrcoef(a, b)[0, 1]) > 0.999
    converted = list((get_settings().workspace / "row_chunked").glob("*.h5"))
    assert len(converted) == 1
    stamp = converted[0].stat().st_mtime_ns
    assert main(args + ["--out", str(tmp_path / "again.h5ad"), "--stream"]) == 0
    assert "convert to rows" not in capsys.readouterr().err and converted[0].stat().st_mtime_ns == stamp  # once


def test_a_file_too_large_for_memory_streams_or_is_refused_before_reading(cells, monkeypatch):
    _, path = cells
    little_memory(monkeypatch, available=1000)
    streaming = SimpleNamespace(can_stream=True)
    whole_only = SimpleNamespace(can_stream=False)
    assert reading_mode(path, "X", streaming, None) == "streamed"
    with pytest.raises(InputError, match="too large to read into memory.*czb run --stream"):
        reading_mode(path, "X", streaming, False)
    with pytest.raises(InputError, match="too large to read into memory.*more memory"):
        reading_mode(path, "X", whole_only, None)
    result = embed_file(path, "pca", params={"n_top_genes": 300, "n_comps": 8})
    assert result.record["reading"] == "streamed" and result.emb_nd.shape == (1200, 8)
    little_memory(monkeypatch, available=1 << 40)
    assert reading_mode(path, "X", whole_only, None) == "in memory"


def test_a_model_that_cannot_stream_says_so(cells):
    from czb_core.errors import ConfigError

    _, path = cells
    with pytest.raises(ConfigError, match="uses all cells at once, so it cannot read a dataset in blocks"):
        embed_file(path, "scvi", variant="fit", params={"max_epochs": 1}, stream=True)


@pytest.mark.parametrize("variant", ["ppca", "ppca_linear_vae"])
def test_ppca_variants_in_memory_equal_streamed_and_find_the_cell_types(cells, variant):
    from czb_core.service.baseline import is_the_baseline
    from czb_core.tasks import MetricOptions
    from czb_core.tasks.scoring import score_embedding

    adata, path = cells
    params = {"n_top_genes": 300, "n_comps": 8, "n_epochs": 8, "lr": 0.1}
    memory = embed_file(path, "pca", variant, params=params, stream=False)
    streamed = embed_file(path, "pca", variant, params=params, stream=True)
    np.testing.assert_allclose(streamed.emb_nd, memory.emb_nd, rtol=1e-5, atol=1e-5)  # one algorithm, one seed
    assert "probabilistic PCA" in memory.record["facts"]["model"] and not is_the_baseline(memory.record)
    table = score_embedding(memory.emb_nd, adata.obs, MetricOptions(label_key="cell_type", seed=42), None)["table"]
    ari = next(row["model"] for row in table if row["metric"].startswith("adjusted_rand"))
    assert ari > 0.5
