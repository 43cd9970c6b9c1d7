"""scanpy's UMAP connectivities (`sc.pp.neighbors(method="umap")`) computed from a kNN graph we already hold.

Clustering weights the kNN graph the way UMAP does (McInnes et al. 2018, "fuzzy simplicial set"):
for cell i with neighbour distances d_ij (itself first, at 0), rho_i = its nearest non-zero distance and
sigma_i solves sum_{j>0} exp(-max(d_ij - rho_i, 0) / sigma_i) = log2(k) by bisection (64 steps at most,
tolerance 1e-5, floored at 1e-3 x the mean distance). The directed weight is
w_ij = exp(-(d_ij - rho_i) / sigma_i) (1 where d_ij <= rho_i, 0 for the cell itself) and the graph is
the fuzzy union W + W^T - W o W^T.

Why not call scanpy: importing umap-learn compiles pynndescent's numba kernels and umap's own
(about 35 s on 2 cores, paid again by every fresh process), while these two small kernels compile
in about a second and are cached on disk. The arithmetic is the same operation for operation, with
the bisection in float64 and the weights in float32 as umap-learn 0.5's compiled kernels compute
them, so the connectivities are identical to scanpy's bit for bit (a unit test compares them).
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp

BISECTION_STEPS = 64
TOLERANCE = 1e-5
MIN_SIGMA_SCALE = 1e-3
FLOAT32_MAX = float(np.finfo(np.float32).max)


@numba.njit(cache=True)
def _sigmas_rhos(distances_nk, k):
    """Per cell: sigma (the kernel width giving an effective neighbour count of k) and rho."""
    n_cells, n_cols = distances_nk.shape
    target = np.log2(k)
    sigma_n = np.zeros(n_cells, dtype=np.float32)
    rho_n = np.zeros(n_cells, dtype=np.float32)
    mean_distance = np.mean(distances_nk)
    for i in range(n_cells):
        row = distances_nk[i]
        positive = row[row > 0.0]
        if positive.shape[0] >= 1:
            rho_n[i] = positive[0]
        lo = 0.0
        hi = FLOAT32_MAX
        mid = 1.0
        for _ in range(BISECTION_STEPS):
            psum = 0.0
            for j in range(1, n_cols):
                gap = distances_nk[i, j] - rho_n[i]
                if gap > 0:
                    psum += np.exp(-(gap / mid))
                else:
                    psum += 1.0
            if np.fabs(psum - target) < TOLERANCE:
                break
            if psum > target:
                hi = mid
                mid = (lo + hi) / 2.0
            else:
                lo = mid
                if hi >= FLOAT32_MAX:
                    mid *= 2
                else:
                    mid = (lo + hi) / 2.0
        sigma_n[i] = mid
        floor = MIN_SIGMA_SCALE * (np.mean(row) if rho_n[i] > 0.0 else mean_distance)
        if sigma_n[i] < floor:
            sigma_n[i] = floor
    return sigma_n, rho_n


@numba.njit(cache=True, locals={"weight": numba.float32})
def _directed_weights(indices_nk, distances_nk, sigma_n, rho_n):
    """w_ij per (cell, neighbour) slot, flattened row by row."""
    n_cells, n_cols = indices_nk.shape
    weights = np.zeros(n_cells * n_cols, dtype=np.float32)
    for i in range(n_cells):
        for j in range(n_cols):
            if indices_nk[i, j] == i:
                weight = 0.0
            elif distances_nk[i, j] - rho_n[i] <= 0.0 or sigma_n[i] == 0.0:
                weight = 1.0
            else:
                weight = np.exp(-((distances_nk[i, j] - rho_n[i]) / sigma_n[i]))
            weights[i * n_cols + j] = weight
    return weights


def umap_connectivities(indices_nk: np.ndarray, distances_nk: np.ndarray) -> sp.csr_matrix:
    """Symmetric cells x cells connectivities of a kNN graph whose rows list each cell first."""
    n_cells, k = indices_nk.shape
    distances_nk = np.ascontiguousarray(distances_nk, dtype=np.float32)
    indices_nk = np.ascontiguousarray(indices_nk)
    sigma_n, rho_n = _sigmas_rhos(distances_nk, float(k))
    weights = _directed_weights(indices_nk, distances_nk, sigma_n, rho_n)
    rows = np.repeat(np.arange(n_cells, dtype=np.int32), k)
    directed = sp.coo_matrix((weights, (rows, indices_nk.ravel().astype(np.int32))), shape=(n_cells, n_cells))
    directed.eliminate_zeros()
    transpose = directed.transpose()
    both = directed.multiply(transpose)
    # The fuzzy union with set_op_mix_ratio = 1, written as umap-learn writes it so the float32
    # sparse arithmetic (and so every bit of the result) is the same.
    union = 1.0 * (directed + transpose - both) + 0.0 * both
    union.eliminate_zeros()
    return union.tocsr()
