"""Synthetic single-cell counts with known structure: the bundled demo, test fixtures, benchmarks.

Counts are negative binomial (gamma-Poisson) around cell-type profiles with a gene-wise batch effect
and log-normal library sizes, generated in chunks of cells so a 200,000 x 20,000 matrix never exists
densely. Genes are real human GENCODE ids (`var_names`) with their symbols in `var["feature_name"]`,
so gene mapping and organism detection behave as on real data.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from czb_core.io.atomic import atomic_path
from czb_core.schema.gene_references import gene_table
from czb_core.types import Organism

DEMO_CELL_TYPES = ("T cell", "B cell", "NK cell", "monocyte", "dendritic cell", "platelet")


def pick_human_genes(n_genes: int, seed: int = 0) -> pd.DataFrame:
    """`n_genes` distinct GENCODE genes with unique symbols, in a seeded random order."""
    table = gene_table(Organism.HUMAN)
    table = table[(table["gene_name"] != table["gene_id"]) & (table["gene_name"] != "")]  # named genes only
    table = table.drop_duplicates("gene_id").drop_duplicates("gene_name", keep=False)
    if n_genes > len(table):
        raise ValueError(f"at most {len(table)} distinct human genes are available")
    return table.sample(n=n_genes, random_state=seed).reset_index(drop=True)


def make_synthetic_counts(
    n_cells: int = 3000,
    n_genes: int = 2000,
    n_types: int = 6,
    n_batches: int = 2,
    mean_counts: float = 1500.0,
    dispersion: float = 5.0,
    batch_strength: float = 0.4,
    seed: int = 0,
    chunk_cells: int = 2000,
) -> ad.AnnData:
    """Raw counts (float32 integers in CSR) with obs `cell_type`, `batch`, `donor_id`, `tissue`, `assay`."""
    rng = np.random.default_rng(seed)
    genes = pick_human_genes(n_genes, seed)
    base_g = rng.lognormal(mean=0.0, sigma=1.5, size=n_genes)
    profiles_tg = np.tile(base_g, (n_types, 1))
    markers = n_genes // (4 * n_types) or 1
    for t in range(n_types):  # each type up-regulates its own marker genes
        idx = rng.choice(n_genes, size=markers, replace=False)
        profiles_tg[t, idx] *= rng.uniform(4, 12, size=markers)
    profiles_tg /= profiles_tg.sum(axis=1, keepdims=True)
    batch_bg = rng.lognormal(0.0, batch_strength, size=(n_batches, n_genes))

    types_n = rng.integers(n_types, size=n_cells)
    batches_n = rng.integers(n_batches, size=n_cells)
    library_n = rng.lognormal(np.log(mean_counts), 0.35, size=n_cells)

    chunks = []
    for lo in range(0, n_cells, chunk_cells):
        hi = min(lo + chunk_cells, n_cells)
        mu_cg = profiles_tg[types_n[lo:hi]] * batch_bg[batches_n[lo:hi]]
        mu_cg *= (library_n[lo:hi] / mu_cg.sum(axis=1))[:, None]
        lam_cg = rng.gamma(shape=dispersion, scale=mu_cg / dispersion)
        chunks.append(sp.csr_matrix(rng.poisson(lam_cg).astype(np.float32)))
    x_ng = sp.vstack(chunks, format="csr")

    type_names = [DEMO_CELL_TYPES[t] if t < len(DEMO_CELL_TYPES) else f"type {t}" for t in range(n_types)]
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([type_names[t] for t in types_n], categories=type_names),
            "batch": pd.Categorical([f"batch{b}" for b in batches_n]),
            "donor_id": pd.Categorical([f"donor{b}_{d}" for b, d in zip(batches_n, rng.integers(2, size=n_cells))]),
            "tissue": pd.Categorical(np.where(rng.random(n_cells) < 0.5, "blood", "bone marrow")),
            "assay": pd.Categorical(["10x 3' v3"] * n_cells),
        },
        index=pd.Index([f"cell{i:07d}" for i in range(n_cells)]),
    )
    var = pd.DataFrame({"feature_name": genes["gene_name"].to_numpy()}, index=pd.Index(genes["gene_id"].to_numpy()))
    return ad.AnnData(X=x_ng, obs=obs, var=var)


def write_demo(path: str | Path, n_cells: int = 3000, n_genes: int = 2000, seed: int = 0) -> Path:
    """The bundled demo dataset: ~3,000 cells, six cell types, two batches.

    Written under a temporary name beside `path` and renamed into place: two first uses of the demo at once
    (two users pressing "Use the demo dataset") each write their own copy and the later rename wins, and
    neither can read the file while the other is still writing it.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        make_synthetic_counts(n_cells=n_cells, n_genes=n_genes, seed=seed).write_h5ad(tmp)
    return path
