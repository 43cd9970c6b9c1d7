"""One-pass statistics per gene over row blocks: mean and variance (overall and per batch), t-digest
quantiles of each gene's non-zero values, and the Seurat-flavour highly variable genes from sums.

`OnePassMeanVar` accumulates sums and sums of squares per batch group. The "naive" form sums x and x²;
the "shifted_data" form subtracts a shift K per gene (the mean of the first block) before summing, so
the variance is not the small difference of two large numbers. Variances are population variances
(ddof 0): var = E[(x-K)²] - E[x-K]².

`TDigest` is a merging t-digest (Dunning and Ertl): centroids whose size is bounded by the k1 scale
function k(q) = δ/(2π)·asin(2q-1), so quantiles near 0 and 1 stay sharp; δ (compression) is 100.
`GeneDigests` keeps one per gene, fed with the non-zero values of each block and compressed only when a
gene's buffer is full, so a pass costs a few numpy calls per gene, not per value.

`add_expm1_moments` adds a block's Σ expm1(x) and Σ expm1(x)² per gene and `seurat_hvg_from_moments` selects
the genes from them: the PCA baseline's HVG step, the same in memory and streamed.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import scipy.sparse as sp

ALGORITHMS = ("naive", "shifted_data")
COMPRESSION = 100.0


class OnePassMeanVar:
    """Mean, population variance and std per gene, and per batch group (`batch_n` in 0..n_batch-1)."""

    def __init__(self, n_genes: int, algorithm: str = "naive", n_batch: int = 1):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        self.algorithm = algorithm
        self.n_batch = n_batch
        self.shift_g: Optional[np.ndarray] = None if algorithm == "shifted_data" else np.zeros(n_genes)
        self.sum_bg = np.zeros((n_batch, n_genes))
        self.sumsq_bg = np.zeros((n_batch, n_genes))
        self.count_b = np.zeros(n_batch)

    def update(self, x_ng, batch_n: Optional[np.ndarray] = None) -> None:
        """Add a block of cells (dense or sparse)."""
        n = x_ng.shape[0]
        batch_n = np.zeros(n, dtype=np.int64) if batch_n is None else np.asarray(batch_n, dtype=np.int64)
        if self.shift_g is None:  # shifted_data: the first block's mean is the shift
            self.shift_g = np.asarray(x_ng.mean(axis=0), dtype=np.float64).ravel()
        for b in np.unique(batch_n):
            rows = np.flatnonzero(batch_n == b)
            block = x_ng[rows]
            if sp.issparse(block):  # sums of (x - K) and (x - K)² without densifying
                sum_g = np.asarray(block.sum(axis=0), dtype=np.float64).ravel()
                sumsq_g = np.asarray(block.multiply(block).sum(axis=0), dtype=np.float64).ravel()
                k_g = self.shift_g
                self.sum_bg[b] += sum_g - len(rows) * k_g
                self.sumsq_bg[b] += sumsq_g - 2 * k_g * sum_g + len(rows) * k_g**2
            else:
                centred = np.asarray(block, dtype=np.float64) - self.shift_g
                self.sum_bg[b] += centred.sum(axis=0)
                self.sumsq_bg[b] += (centred**2).sum(axis=0)
            self.count_b[b] += len(rows)

    @staticmethod
    def _mean_var(sum_g, sumsq_g, count, shift_g) -> tuple[np.ndarray, np.ndarray]:
        if count == 0:
            nan_g = np.full_like(sum_g, np.nan)
            return nan_g, nan_g
        centred_mean_g = sum_g / count
        return centred_mean_g + shift_g, np.maximum(sumsq_g / count - centred_mean_g**2, 0.0)

    @property
    def mean_g(self) -> np.ndarray:
        return self._mean_var(self.sum_bg.sum(0), self.sumsq_bg.sum(0), self.count_b.sum(), self._shift())[0]

    @property
    def var_g(self) -> np.ndarray:
        return self._mean_var(self.sum_bg.sum(0), self.sumsq_bg.sum(0), self.count_b.sum(), self._shift())[1]

    @property
    def std_g(self) -> np.ndarray:
        return np.sqrt(self.var_g)

    @property
    def batch_mean_bg(self) -> np.ndarray:
        return np.stack([self._mean_var(self.sum_bg[b], self.sumsq_bg[b], self.count_b[b], self._shift())[0]
                         for b in range(self.n_batch)])

    @property
    def batch_var_bg(self) -> np.ndarray:
        return np.stack([self._mean_var(self.sum_bg[b], self.sumsq_bg[b], self.count_b[b], self._shift())[1]
                         for b in range(self.n_batch)])

    def _shift(self) -> np.ndarray:
        return np.zeros(self.sum_bg.shape[1]) if self.shift_g is None else self.shift_g


class TDigest:
    """A merging t-digest of one stream of numbers."""

    def __init__(self, compression: float = COMPRESSION):
        self.compression = compression
        self.means = np.zeros(0)
        self.weights = np.zeros(0)
        self._buffer: list[np.ndarray] = []
        self._buffered = 0

    @property
    def count(self) -> float:
        return float(self.weights.sum()) + self._buffered

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.size:
            self._buffer.append(values)
            self._buffered += values.size
            if self._buffered >= 50 * self.compression:
                self.compress()

    def merge(self, other: "TDigest") -> None:
        other.compress()
        self.compress()
        self._merge_centroids(np.concatenate([self.means, other.means]),
                              np.concatenate([self.weights, other.weights]))

    def compress(self) -> None:
        if not self._buffer:
            return
        values = np.concatenate(self._buffer)
        self._buffer, self._buffered = [], 0
        self._merge_centroids(np.concatenate([self.means, values]),
                              np.concatenate([self.weights, np.ones(values.size)]))

    def _merge_centroids(self, means: np.ndarray, weights: np.ndarray) -> None:
        """One sweep over the sorted items: a centroid absorbs the next while the quantile at its right
        edge stays within one unit of k from its left edge (k1 = δ/(2π)·asin(2q-1))."""
        order = np.argsort(means, kind="stable")
        means, weights = means[order], weights[order]
        q_right = np.cumsum(weights) / weights.sum()
        k_right = self.compression / (2 * np.pi) * np.arcsin(np.clip(2 * q_right - 1, -1.0, 1.0))
        starts = [0]
        k_limit = -self.compression / 4 + 1.0  # k at q = 0, plus one
        for i in range(1, len(means)):
            if k_right[i] > k_limit:
                starts.append(i)
                k_limit = k_right[i - 1] + 1.0
        starts_c = np.asarray(starts)
        weight_c = np.add.reduceat(weights, starts_c)
        self.means = np.add.reduceat(means * weights, starts_c) / weight_c
        self.weights = weight_c

    def quantile(self, q: float) -> float:
        """Interpolated between centroid centres (each centroid's mass centred on its mean); NaN if empty."""
        self.compress()
        if not self.weights.size:
            return float("nan")
        if self.weights.size == 1:
            return float(self.means[0])
        centres = (np.cumsum(self.weights) - self.weights / 2) / self.weights.sum()
        return float(np.interp(q, centres, self.means))


class GeneDigests:
    """One t-digest per gene, fed the non-zero values of each block."""

    def __init__(self, n_genes: int, compression: float = COMPRESSION):
        self.digests = [TDigest(compression) for _ in range(n_genes)]

    def update(self, x_ng) -> None:
        x_csc = sp.csc_matrix(x_ng)
        x_csc.eliminate_zeros()
        for g in np.flatnonzero(np.diff(x_csc.indptr)):
            self.digests[g].add(x_csc.data[x_csc.indptr[g]:x_csc.indptr[g + 1]])

    def quantile_g(self, q: float) -> np.ndarray:
        return np.array([d.quantile(q) for d in self.digests])

    @property
    def median_g(self) -> np.ndarray:
        """The median of each gene's non-zero values (NaN for a gene never expressed)."""
        return self.quantile_g(0.5)


def add_expm1_moments(xlog_ng: sp.csr_matrix, sum_g: np.ndarray, sumsq_g: np.ndarray) -> None:
    """Add Σ expm1(x) and Σ expm1(x)² per gene of a block of log data (the Seurat flavour's statistics)."""
    values = np.expm1(xlog_ng.data, dtype=np.float64)
    sum_g += np.bincount(xlog_ng.indices, weights=values, minlength=len(sum_g))
    sumsq_g += np.bincount(xlog_ng.indices, weights=values * values, minlength=len(sum_g))


def seurat_hvg_from_moments(sum_g: np.ndarray, sumsq_g: np.ndarray, n_cells: int, n_top_genes: int,
                            n_bins: int = 20) -> np.ndarray:
    """The Seurat-flavour selection from per-gene sums: dispersion var/mean of expm1(log data),
    log-transformed, z-scored within 20 bins of log1p(mean); a bin with a single gene gets z = 0 as in
    scanpy. Sums make it the same whether the cells were in memory or streamed."""
    n_genes = len(sum_g)
    mean_g = sum_g / n_cells
    var_g = (sumsq_g / n_cells - mean_g**2) * n_cells / (n_cells - 1)
    mean_g[mean_g == 0] = 1e-12
    dispersion_g = var_g / mean_g
    dispersion_g[dispersion_g == 0] = np.nan
    frame = pd.DataFrame({"dispersion": np.log(dispersion_g), "mean_bin": pd.cut(np.log1p(mean_g), bins=n_bins)})
    grouped = frame.groupby("mean_bin", observed=False)["dispersion"]
    bin_mean = grouped.transform("mean")
    bin_std = grouped.transform(lambda d: d.std(ddof=1))
    single = bin_std.isna() & frame["dispersion"].notna() & (grouped.transform("count") == 1)
    bin_std[single], bin_mean[single] = bin_mean[single], 0.0
    z_g = ((frame["dispersion"] - bin_mean) / bin_std).to_numpy()
    z_g = np.where(np.isnan(z_g), -np.inf, z_g)
    top = np.argsort(-z_g, kind="stable")[:n_top_genes]
    mask = np.zeros(n_genes, dtype=bool)
    mask[top] = True
    return mask
