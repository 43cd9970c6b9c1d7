"""Probabilistic PCA trained by minibatches (Tipping and Bishop; the linear VAE of Lucas et al.), as
cellarium-ml defines it, in plain torch.

x_g = mean_g + z_k W_kg + ε, z ~ N(0, I_k), ε ~ N(0, σ² I_g). Two objectives with the same maximum:
- "marginalized": the exact negative log-likelihood of x under N(mean, WᵀW + σ²I) (a low-rank normal);
- "linear_vae": the negative ELBO with q(z|x) = N((x − mean) V, diag D²), M = W Wᵀ + σ²I,
  V = (M⁻¹ W)ᵀ, D_k = σ / sqrt(M_kk), its expectations taken in closed form.
Minibatch losses are scaled to the whole dataset (n_obs / batch), as a subsampled plate does. W starts
from N(0, 1), σ from 1 and the mean from 0, seeded; `embed` is z = (x − mean) V.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import numpy as np
import torch
from torch import nn

from czb_core.streaming.training import train_epochs

FLAVOURS = ("marginalized", "linear_vae")


class ProbabilisticPCA(nn.Module):
    def __init__(self, n_genes: int, n_components: int, n_obs: int, flavour: str = "marginalized",
                 mean_g: Optional[np.ndarray] = None, seed: int = 0):
        super().__init__()
        if flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
        self.flavour = flavour
        self.n_obs = n_obs
        generator = torch.Generator().manual_seed(seed)
        self.W_kg = nn.Parameter(torch.randn(n_components, n_genes, generator=generator, dtype=torch.float64))
        self.log_sigma = nn.Parameter(torch.zeros((), dtype=torch.float64))
        if mean_g is None:
            self.mean_g = nn.Parameter(torch.zeros(n_genes, dtype=torch.float64))
        else:
            self.register_buffer("mean_g", torch.as_tensor(np.asarray(mean_g, dtype=np.float64)))

    @property
    def sigma(self) -> torch.Tensor:
        return self.log_sigma.exp()

    def _m_kk(self) -> torch.Tensor:
        k = self.W_kg.shape[0]
        return self.W_kg @ self.W_kg.T + self.sigma**2 * torch.eye(k, dtype=self.W_kg.dtype)

    def _v_gk(self) -> torch.Tensor:
        return torch.linalg.solve(self._m_kk(), self.W_kg).T

    def loss(self, x_ng: torch.Tensor) -> torch.Tensor:
        """The dataset-scaled negative log-likelihood (or negative ELBO) of a minibatch."""
        scale = self.n_obs / x_ng.shape[0]
        centred = x_ng - self.mean_g
        if self.flavour == "marginalized":
            dist = torch.distributions.LowRankMultivariateNormal(
                self.mean_g, cov_factor=self.W_kg.T, cov_diag=(self.sigma**2).expand(x_ng.shape[1]))
            return -scale * dist.log_prob(x_ng).sum()
        sigma2 = self.sigma**2
        m_kk = self._m_kk()
        mu_nk = centred @ self._v_gk()
        d2_k = sigma2 / torch.diagonal(m_kk)
        n_genes = x_ng.shape[1]
        residual = ((centred - mu_nk @ self.W_kg) ** 2).sum(1) + (d2_k * (self.W_kg**2).sum(1)).sum()
        expected_loglik = -0.5 * n_genes * torch.log(2 * math.pi * sigma2) - residual / (2 * sigma2)
        kl = 0.5 * ((mu_nk**2).sum(1) + d2_k.sum() - len(d2_k) - torch.log(d2_k).sum())
        return -scale * (expected_loglik - kl).sum()

    @torch.no_grad()
    def embed(self, x_ng: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(x_ng, dtype=np.float64))
        return ((x - self.mean_g) @ self._v_gk()).float().numpy()

    @torch.no_grad()
    def explained_variance_k(self) -> np.ndarray:
        """L_k = svdvals(Wᵀ)² + σ²: the variances the model gives its principal directions."""
        return (torch.linalg.svdvals(self.W_kg.T) ** 2 + self.sigma**2).numpy()


def fit_ppca(model: ProbabilisticPCA, minibatches: Iterable, n_epochs: int, lr: float = 3e-2,
             steps_per_epoch: Optional[int] = None, progress=None) -> list[float]:
    """Adam with cosine annealing over `n_epochs` passes of `minibatches` (a re-iterable of dense blocks);
    returns the loss per epoch (mean over its steps)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    total = n_epochs * (steps_per_epoch or sum(1 for _ in minibatches))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total))

    def loss_of(x_ng):
        return model.loss(torch.as_tensor(np.asarray(x_ng, dtype=np.float64)))

    return train_epochs(minibatches, loss_of, n_epochs, optimizer, model.n_obs, scheduler=scheduler,
                        progress=progress, step="train ppca")
