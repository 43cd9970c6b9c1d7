"""Shared fixtures: an isolated CZB_HOME per test and small generated datasets in several shapes."""

from __future__ import annotations

import os

# One BLAS/OpenMP/numba thread per test process (and the subprocesses it starts), unless the caller chose
# another number: with two threads per op on a busy 2-core machine, torch trainings and BLAS fits ran 5-20x
# slower and their times swung from run to run. numba counts too: its OpenMP pool shares torch's libgomp, so
# after the first UMAP torch ran on numba's thread count. Set before torch and numba are imported; numpy's
# BLAS, already loaded by a pytest plugin, is limited below.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import anndata as ad  # noqa: E402
import pytest  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from czb_core.io.synthetic import make_synthetic_counts  # noqa: E402

threadpool_limits(limits=int(os.environ["OMP_NUM_THREADS"]))

pytest_plugins = ["tests.helpers.s3_server"]


@pytest.fixture(autouse=True)
def czb_home(tmp_path, monkeypatch):
    """Every test gets its own workspace and weights cache; nothing touches ~/.czb."""
    home = tmp_path / "czb_home"
    monkeypatch.setenv("CZB_HOME", str(home))
    for var in ("CZB_WEIGHTS_DIR", "CZB_WORKSPACE", "CZB_S3_ENDPOINT_URL", "CZB_DATA_ROOTS", "CZB_USER",
                "CZB_ADMINS", "CZB_USER_QUOTA_GB", "CZB_MAX_QUEUED_JOBS", "CZB_RETENTION_DAYS", "CZB_CPU_WORKERS",
                "CZB_MAX_CELLS", "CZB_RAY_ADDRESS", "CZB_HEALTH_PORT", "CZB_HEALTH_HOST",
                "CZB_WORKER_MEMORY_LIMIT_MB", "CZB_METRICS_MAX_CELLS", "CZB_SINGLE_USER"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def small_adata() -> ad.AnnData:
    """400 cells x 300 human genes, four cell types, two batches, integer counts in CSR."""
    return make_synthetic_counts(n_cells=400, n_genes=300, n_types=4, n_batches=2, mean_counts=800, seed=1)


@pytest.fixture
def write_h5ad(tmp_path):
    """Write an AnnData to a fresh file and return its path."""
    counter = iter(range(10_000))

    def _write(adata: ad.AnnData, name: str | None = None):
        path = tmp_path / (name or f"data{next(counter)}.h5ad")
        adata.write_h5ad(path)
        return path

    return _write


@pytest.fixture
def small_h5ad(small_adata, write_h5ad):
    return write_h5ad(small_adata, "small.h5ad")


LANES = ("unit", "integration", "browser")


def pytest_collection_modifyitems(items):
    """Each test is marked with its folder's lane (`-m unit` is the fast lane; `make test` runs all)."""
    for item in items:
        for lane in LANES:
            if f"/tests/{lane}/" in str(item.fspath):
                item.add_marker(lane)
