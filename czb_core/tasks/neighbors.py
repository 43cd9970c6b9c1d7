"""One exact k-nearest-neighbour search per embedding, shared by every metric that needs neighbours.

cz-benchmarks searched neighbours twice per embedding: `sc.pp.neighbors` (k=15, pynndescent above
4,096 cells) for clustering and hnswlib (k=200) for `entropy_per_cell`. Both are approximations of
the exact search, so we run the exact search once for the largest k and slice the smaller k from it.
Row i of the result lists cell i itself first (distance 0), as both of those libraries do.

On 2 cores an exact brute-force search for k=200 takes about 6 s for 50,000 cells x 50 dims.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from czb_core.tasks.fuzzy_graph import umap_connectivities

CLUSTERING_K = 15
ENTROPY_K = 200


@dataclass(frozen=True)
class KnnGraph:
    """Each cell's k nearest cells (itself first), nearest to furthest, euclidean."""

    indices_nk: np.ndarray
    distances_nk: np.ndarray

    @property
    def k(self) -> int:
        return self.indices_nk.shape[1]

    def head(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest (self included); asking for more than was searched is a bug, so it raises."""
        if k > self.k:
            raise ValueError(f"kNN graph holds {self.k} neighbours per cell, {k} were asked for")
        return self.indices_nk[:, :k], self.distances_nk[:, :k]


def compute_knn(emb_nd: np.ndarray, k: int) -> KnnGraph:
    """Exact euclidean kNN of every cell among all cells, k capped at the number of cells."""
    n_cells = emb_nd.shape[0]
    k = min(k, n_cells)
    search = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(emb_nd)
    distances_nk, indices_nk = search.kneighbors(emb_nd)
    _put_self_first(indices_nk, distances_nk)
    return KnnGraph(indices_nk=indices_nk, distances_nk=distances_nk.astype(np.float32))


def _put_self_first(indices_nk: np.ndarray, distances_nk: np.ndarray) -> None:
    """Column 0 = the cell itself at distance exactly 0.

    Duplicate cells tie at distance 0 and may list a twin before themselves: swap self to column 0.
    sklearn's dot-product distances give a cell ~1e-7 to itself; UMAP's connectivities take the first
    non-zero distance as the nearest neighbour's (rho), so that rounding error must become a true 0.
    """
    rows_n = np.arange(indices_nk.shape[0])
    for row in np.flatnonzero(indices_nk[:, 0] != rows_n):
        hits = np.flatnonzero(indices_nk[row] == row)
        col = hits[0] if hits.size else indices_nk.shape[1] - 1
        indices_nk[row, col] = indices_nk[row, 0]
        distances_nk[row, col] = distances_nk[row, 0]
        indices_nk[row, 0] = row
    distances_nk[:, 0] = 0.0


def neighbors_adata(emb_nd: np.ndarray, knn: KnnGraph, seed: int) -> ad.AnnData:
    """A bare AnnData holding what `sc.pp.neighbors(adata, random_state=seed)` stores for k=15.

    scanpy's k=15 search keeps the cell itself plus its 14 nearest; the same 15 columns of our exact
    graph give scanpy's UMAP connectivities (`fuzzy_graph.py`), so `sc.tl.leiden` finds the graph
    where it looks for it. The seed is only recorded, as scanpy records it: no search is run.
    """
    k = min(CLUSTERING_K, knn.k)
    indices_nk, distances_nk = knn.head(k)
    adata = ad.AnnData(obs=pd.DataFrame(index=pd.RangeIndex(emb_nd.shape[0]).astype(str)))
    adata.obsm["emb"] = emb_nd
    adata.obsp["connectivities"] = umap_connectivities(indices_nk, distances_nk)
    adata.uns["neighbors"] = {
        "connectivities_key": "connectivities",
        "params": {"n_neighbors": k, "method": "umap", "random_state": seed, "metric": "euclidean", "use_rep": "emb"},
    }
    return adata
