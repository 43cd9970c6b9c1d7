"""The PCA baseline: normalize_total -> log1p -> highly variable genes -> PCA, on sparse counts.

Normalisation and log1p work on the CSR values in place (float32), so a 200,000-cell matrix is never
densified; HVG selection is scanpy's Seurat flavour and PCA is scanpy's ARPACK solver with implicit
centering, both of which accept sparse input.
"""

from __future__ import annotations

import argparse

import anndata as ad
import numpy as np
import scipy.sparse as sp

from czb_core.datasets import SingleCellDataset
from czb_core.model import BaseModelImplementation
from czb_core.progress import CancelToken, ProgressCallback, no_progress
from czb_core.types import DataType, ModelType
from czb_core.validators import BaseSingleCellValidator


def normalize_log1p(x_ng: sp.csr_matrix, target_sum: float | None = None) -> sp.csr_matrix:
    """Scale each cell to `target_sum` counts (default: median total of non-empty cells), then log1p.

    Matches `sc.pp.normalize_total` + `sc.pp.log1p`; empty cells stay zero.
    """
    total_n = np.asarray(x_ng.sum(axis=1)).ravel()
    if target_sum is None:
        nonzero = total_n[total_n > 0]
        target_sum = float(np.median(nonzero)) if nonzero.size else 1.0
    scale_n = np.divide(target_sum, total_n, out=np.zeros_like(total_n, dtype=np.float64), where=total_n > 0)
    data = x_ng.data.astype(np.float32, copy=True)
    data *= np.repeat(scale_n, np.diff(x_ng.indptr)).astype(np.float32)
    np.log1p(data, out=data)
    return sp.csr_matrix((data, x_ng.indices, x_ng.indptr), shape=x_ng.shape)


def pca_baseline(
    x_ng: sp.csr_matrix,
    n_top_genes: int = 3000,
    n_comps: int = 50,
    seed: int = 0,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
) -> np.ndarray:
    """`emb_nc` (cells x components, float32) of raw counts `x_ng`."""
    import scanpy as sc  # imported here so that validating against this model stays fast

    cancel = cancel or CancelToken()
    progress("normalize", 0, 1)
    adata = ad.AnnData(normalize_log1p(sp.csr_matrix(x_ng)))
    progress("normalize", 1, 1)
    cancel.check()
    progress("highly variable genes", 0, 1)
    if adata.n_vars > n_top_genes:
        sc.pp.highly_variable_genes(adata, n_top_genes=n_top_genes, flavor="seurat")
        adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    progress("highly variable genes", 1, 1)
    cancel.check()
    progress("pca", 0, 1)
    n_comps = min(n_comps, adata.n_obs - 1, adata.n_vars - 1)
    sc.pp.pca(adata, n_comps=n_comps, svd_solver="arpack", random_state=seed, mask_var=None)
    progress("pca", 1, 1)
    return np.asarray(adata.obsm["X_pca"], dtype=np.float32)


class PCAValidator(BaseSingleCellValidator):
    """Any organism, any gene naming, raw counts (normalising already-normalised data misleads)."""

    model_type = ModelType.BASELINE
    available_organisms = None
    required_obs_keys = ()
    required_var_keys = ()
    gene_id_kind = None
    requires_raw_counts = True


class PCABaseline(PCAValidator, BaseModelImplementation):
    def create_parser(self) -> argparse.ArgumentParser:
        parser = super().create_parser()
        parser.add_argument("--n_top_genes", type=int, default=3000)
        parser.add_argument("--n_comps", type=int, default=50)
        return parser

    def run_model(self, dataset: SingleCellDataset) -> None:
        x_ng, _ = dataset.counts()
        emb_nc = pca_baseline(
            x_ng, self.args.n_top_genes, self.args.n_comps, self.args.seed, self.progress, self.cancel
        )
        dataset.set_output(self.model_type, DataType.EMBEDDING, emb_nc)
