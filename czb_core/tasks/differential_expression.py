"""Differential expression of perturbed cells against control cells (Wilcoxon rank-sum, as cz-benchmarks).

Both perturbation tasks rank genes with scanpy's `rank_genes_groups(method="wilcoxon")` on
log-normalised expression: the 0.15 task reads a precomputed table of that test (and computes one here
when a dataset lacks it), the 0.10 task takes the top-k genes by Wilcoxon score, most up-regulated
first. The functions take matrices and labels, never a model.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import anndata as ad
import numpy as np
import pandas as pd

from czb_core.errors import InputError

TEST_GROUP = "test"
REFERENCE_GROUP = "reference"


def wilcoxon_table(x_ng: np.ndarray, genes_g: Sequence[str] | np.ndarray, groups_n: Sequence[str] | np.ndarray,
                   reference: str, groups: Sequence[str]) -> pd.DataFrame:
    """One row per (group, gene): `condition`, `gene_id`, `score`, `logfoldchange`, `pval`, `pval_adj`
    of each group in `groups` against the `reference` cells (Benjamini-Hochberg adjusted, every gene)."""
    import scanpy as sc

    groups_n = np.asarray(groups_n, dtype=str)
    if not np.any(groups_n == reference):
        raise InputError(f"no cell is labelled {reference!r}, the reference of the differential expression test")
    keep_n = np.isin(groups_n, [reference, *groups])
    adata = ad.AnnData(np.asarray(x_ng, dtype=np.float32)[keep_n],
                       obs=pd.DataFrame({"group": pd.Categorical(groups_n[keep_n])},
                                        index=[str(i) for i in range(int(keep_n.sum()))]),
                       var=pd.DataFrame(index=pd.Index(np.asarray(genes_g, dtype=str))))
    with warnings.catch_warnings():  # scanpy warns about the log base and about few cells; both are expected
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(adata, "group", groups=list(groups), reference=reference, method="wilcoxon",
                                n_genes=adata.n_vars, tie_correct=False)
    result = adata.uns["rank_genes_groups"]
    frames = []
    for group in groups:
        frames.append(pd.DataFrame({
            "condition": group,
            "gene_id": np.asarray(result["names"][group], dtype=str),
            "score": np.asarray(result["scores"][group], dtype=np.float64),
            "logfoldchange": np.asarray(result["logfoldchanges"][group], dtype=np.float64),
            "pval": np.asarray(result["pvals"][group], dtype=np.float64),
            "pval_adj": np.asarray(result["pvals_adj"][group], dtype=np.float64),
        }))
    return pd.concat(frames, ignore_index=True)


def top_genes_by_score(test_ng: np.ndarray, reference_ng: np.ndarray, genes_g: Sequence[str] | np.ndarray,
                       k: int) -> list[str]:
    """The first `k` genes by Wilcoxon score of `test` cells against `reference` cells, highest first
    (the most up-regulated; cz-benchmarks 0.10 ranks by the signed score, not its magnitude)."""
    x_ng = np.vstack([np.asarray(test_ng, dtype=np.float32), np.asarray(reference_ng, dtype=np.float32)])
    groups_n = [TEST_GROUP] * len(test_ng) + [REFERENCE_GROUP] * len(reference_ng)
    table = wilcoxon_table(x_ng, genes_g, groups_n, REFERENCE_GROUP, [TEST_GROUP])
    return table["gene_id"].iloc[:k].tolist()
