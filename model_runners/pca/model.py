"""The PCA baseline: normalize_total -> log1p -> highly variable genes -> PCA, on sparse counts.

The matrix is never densified or copied whole: normalisation (`czb_core.schema.normalization`, to the
median total, scanpy's default) writes one float32 copy of the CSR values (sharing the index arrays), the
Seurat-flavour HVG statistics are accumulated over row chunks (scanpy's own HVG copies the whole matrix to
take expm1), only the HVG columns are sliced out, and PCA is scanpy's ARPACK solver with implicit centering.
Results equal scanpy's pipeline (tests/test_pca.py).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp

from czb_core.models.base import BaseModelImplementation
from czb_core.models.params import Param
from czb_core.models.runner import RunOutput
from czb_core.progress import CancelToken, ProgressCallback, no_progress
from czb_core.schema.data_manager import DataManager
from czb_core.schema.normalization import normalize_log1p
from czb_core.schema.validators import BaseSingleCellValidator
from czb_core.streaming.statistics import add_expm1_moments, seurat_hvg_from_moments
from czb_core.types import ModelType


def seurat_hvg_mask(xlog_ng: sp.csr_matrix, n_top_genes: int, n_bins: int = 20,
                    chunk_rows: int = 20_000) -> np.ndarray:
    """Boolean mask of the `n_top_genes` most dispersed genes, as `sc.pp.highly_variable_genes(flavor="seurat")`,
    from moments accumulated over row chunks."""
    n_cells, n_genes = xlog_ng.shape
    sum_g = np.zeros(n_genes)
    sumsq_g = np.zeros(n_genes)
    for lo in range(0, n_cells, chunk_rows):
        add_expm1_moments(xlog_ng[lo : lo + chunk_rows], sum_g, sumsq_g)
    return seurat_hvg_from_moments(sum_g, sumsq_g, n_cells, n_top_genes, n_bins)


def pca_baseline(
    x_ng: sp.csr_matrix,
    n_top_genes: int = 3000,
    n_comps: int = 50,
    seed: int = 0,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
    chunk_rows: int = 20_000,
) -> np.ndarray:
    """`emb_nc` (cells x components, float32) of raw counts `x_ng`."""
    import scanpy as sc  # imported here so that validating against this model stays fast

    cancel = cancel or CancelToken()
    progress("normalize", 0, 1)
    xlog_ng = normalize_log1p(x_ng, chunk_rows=chunk_rows)
    progress("normalize", 1, 1)
    cancel.check()
    progress("highly variable genes", 0, 1)
    if xlog_ng.shape[1] > n_top_genes:
        xlog_ng = xlog_ng[:, seurat_hvg_mask(xlog_ng, n_top_genes, chunk_rows=chunk_rows)]
    adata = ad.AnnData(xlog_ng)
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
    """No weights: `prepare` hands over the counts, `embed` runs the whole recipe on them."""

    params = (
        Param("n_top_genes", "int", 3000, "highly variable genes kept before PCA", label="Highly variable genes",
              minimum=2),
        Param("n_comps", "int", 50, "principal components (the embedding size)", label="Components", minimum=1),
    )
    ppca_params = (
        Param("n_epochs", "int", 20, "passes over the cells while training", label="Epochs", minimum=1),
        Param("lr", "float", 0.05, "Adam learning rate (cosine-annealed to zero)", label="Learning rate", minimum=0.0),
    )

    @classmethod
    def declare_params(cls, variant) -> tuple[Param, ...]:
        return cls.params + (cls.ppca_params if variant.resources.get("flavour") else ())
    default_batch_size = 20_000  # rows per block of the normalisation and HVG passes
    streams = True

    def prepare(self, rows, manager: DataManager) -> sp.csr_matrix:
        return manager.counts(rows)

    @property
    def flavour(self):
        """The probabilistic PCA objective of a ppca variant; None for PCA itself."""
        return self.variant_config.resources.get("flavour")

    @property
    def shards_as_projection(self) -> bool:
        """PCA itself (not a probabilistic variant): a Ray run fits its incremental PCA over row blocks on the
        driver and shards only the projection."""
        return not self.flavour

    def embed(self, x_ng: sp.csr_matrix, batch_size, progress, cancel) -> RunOutput:
        self.batch_size_used = batch_size
        if self.flavour:
            from czb_core.streaming.row_blocks import MemoryBlocks

            return self.embed_blocks(MemoryBlocks(sp.csr_matrix(x_ng), batch_size), progress, cancel)
        emb_nc = pca_baseline(x_ng, self.args.n_top_genes, self.args.n_comps, self.args.seed, progress, cancel,
                              chunk_rows=batch_size)
        return RunOutput(emb_nd=emb_nc)

    def embed_blocks(self, blocks, progress, cancel) -> RunOutput:
        from czb_core.streaming.pca_baseline import stream_pca_baseline, stream_ppca

        if self.flavour:
            emb_nc = stream_ppca(blocks, self.flavour, self.args.n_top_genes, self.args.n_comps, self.args.seed,
                                 self.args.n_epochs, self.args.lr, progress=progress, cancel=cancel)
            return RunOutput(emb_nd=np.asarray(emb_nc), batch_size=blocks.chunk_rows, facts={
                "model": f"probabilistic PCA ({self.flavour}), {self.args.n_epochs} epochs of minibatches, "
                         f"Adam lr {self.args.lr:g} cosine-annealed, seed {self.args.seed}"})
        emb_nc = stream_pca_baseline(blocks, self.args.n_top_genes, self.args.n_comps, self.args.seed,
                                     progress=progress, cancel=cancel)
        return RunOutput(emb_nd=np.asarray(emb_nc), batch_size=blocks.chunk_rows, facts={
            "reading": f"streamed in blocks of {blocks.chunk_rows:,} cells; incremental PCA "
                       f"({2 * emb_nc.shape[1]} factors kept between blocks), not the in-memory ARPACK solver"})
