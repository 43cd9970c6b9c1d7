"""Incremental PCA over row blocks: the cellarium-ml algorithm (after Ross et al. and Iwen et al.).

Per block x (n x g): its own mean is taken out and a rank-q factorisation U S Vᵀ of the centred block is
computed with a randomized low-rank SVD (`torch.svd_lowrank`, `niter` power iterations). If components
exist already, the rows [S_old·V_old; S_new·V_new; sqrt(n_old·n_new/(n_old+n_new))·(mean_old − mean_new)]
are factorised again: the last row corrects for the two blocks' different means, so the result is the
factorisation of the centred union. The mean is the size-weighted mean.

`oversample` keeps q = k + oversample factors between blocks (default k, so q = 2k) and reports the top
k: cellarium-ml keeps exactly k (oversample 0), which loses variance when k is far below the data's
rank, and with it the lower components that batch metrics read; with q = 2k the streamed baseline's
metrics stayed within 0.007 of the exact PCA's (tests/unit/test_streaming.py). The
stacked matrix is small ((2q + 1) x g), so it is factorised exactly. The random projections use a
seeded torch generator, so a run is reproducible.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch


class IncrementalPCA:
    """Components `components_kg`, `explained_variance_k` (population variance: S²/n) and `mean_g`."""

    def __init__(self, n_components: int, niter: int = 2, oversample: Optional[int] = None, seed: int = 0):
        self.n_components = n_components
        self.niter = niter
        self.q = n_components + (n_components if oversample is None else oversample)
        self.seed = seed
        self.n_seen = 0
        self.mean_g: Optional[np.ndarray] = None
        self._s_q: Optional[torch.Tensor] = None
        self._v_qg: Optional[torch.Tensor] = None

    def update(self, x_ng: np.ndarray) -> None:
        """Fold a dense block of cells into the factorisation."""
        x = torch.as_tensor(np.asarray(x_ng, dtype=np.float64))
        n = x.shape[0]
        if n == 0:
            return
        mean_new = x.mean(0)
        q = min(self.q, n, x.shape[1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + self.n_seen)
            _, s_new, v_new = torch.svd_lowrank(x - mean_new, q=q, niter=self.niter)
        if self.n_seen == 0:
            self._s_q, self._v_qg = s_new, v_new.T
            self.mean_g = mean_new.numpy()
            self.n_seen = n
            return
        mean_old = torch.as_tensor(self.mean_g)
        n_old = self.n_seen
        correction = np.sqrt(n_old * n / (n_old + n)) * (mean_old - mean_new)
        stacked = torch.cat([self._s_q[:, None] * self._v_qg, s_new[:, None] * v_new.T, correction[None]])
        _, s, vh = torch.linalg.svd(stacked, full_matrices=False)
        keep = min(self.q, len(s))
        self._s_q, self._v_qg = s[:keep], vh[:keep]
        self.mean_g = ((n_old * mean_old + n * mean_new) / (n_old + n)).numpy()
        self.n_seen = n_old + n

    @property
    def components_kg(self) -> np.ndarray:
        """The top k components, each with the sign that makes its largest-magnitude entry positive."""
        v_kg = self._v_qg[: self.n_components].numpy().copy()
        signs = np.sign(v_kg[np.arange(len(v_kg)), np.abs(v_kg).argmax(1)])
        return v_kg * np.where(signs == 0, 1, signs)[:, None]

    @property
    def explained_variance_k(self) -> np.ndarray:
        return (self._s_q[: self.n_components] ** 2 / self.n_seen).numpy()

    def transform(self, x_ng: np.ndarray) -> np.ndarray:
        """`z_nk = (x − mean) Vᵀ` in float32."""
        return ((np.asarray(x_ng, dtype=np.float64) - self.mean_g) @ self.components_kg.T).astype(np.float32)


def principal_angles_deg(a_kg: np.ndarray, b_kg: np.ndarray) -> np.ndarray:
    """Principal angles (degrees, ascending) between the row spaces of two component matrices."""
    qa, _ = np.linalg.qr(np.asarray(a_kg, dtype=np.float64).T)
    qb, _ = np.linalg.qr(np.asarray(b_kg, dtype=np.float64).T)
    cosines = np.clip(np.linalg.svd(qa.T @ qb, compute_uv=False), -1.0, 1.0)
    return np.degrees(np.arccos(cosines))
