"""A logistic regression for label transfer on millions of cells, trained by minibatches over blocks:
the cellarium-ml model, in plain torch.

Logits xW + b; W_gc ~ Laplace(0, prior_scale) (an L1 penalty), b without prior; the MAP objective is
the dataset-scaled cross-entropy of a minibatch (n_obs / batch) minus the log prior of W. W starts
from N(0, init_scale), seeded; b from zero.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from czb_core.streaming.training import train_epochs


class StreamedLogisticRegression(nn.Module):
    def __init__(self, n_genes: int, n_classes: int, n_obs: int, prior_scale: float = 1.0, init_scale: float = 1.0,
                 seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.W_gc = nn.Parameter(init_scale * torch.randn(n_genes, n_classes, generator=generator))
        self.b_c = nn.Parameter(torch.zeros(n_classes))
        self.n_obs = n_obs
        self.prior_scale = prior_scale

    def logits(self, x_ng: torch.Tensor) -> torch.Tensor:
        return x_ng @ self.W_gc + self.b_c

    def loss(self, x_ng: torch.Tensor, y_n: torch.Tensor) -> torch.Tensor:
        """Negative (scaled log-likelihood + log Laplace prior of W)."""
        nll = nn.functional.cross_entropy(self.logits(x_ng), y_n, reduction="sum") * (self.n_obs / len(y_n))
        log_prior = torch.distributions.Laplace(0.0, self.prior_scale).log_prob(self.W_gc).sum()
        return nll - log_prior

    @torch.no_grad()
    def predict(self, x_ng: np.ndarray) -> np.ndarray:
        return self.logits(torch.as_tensor(np.asarray(x_ng, dtype=np.float32))).argmax(1).numpy()


def fit_logistic(model: StreamedLogisticRegression, minibatches: Iterable, n_epochs: int, lr: float = 1e-2,
                 progress=None) -> list[float]:
    """Adam over `n_epochs` passes of `minibatches` (a re-iterable of (x_ng, y_n) blocks); loss per epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def loss_of(batch):
        x_ng, y_n = batch
        return model.loss(torch.as_tensor(np.asarray(x_ng, dtype=np.float32)), torch.as_tensor(y_n).long())

    return train_epochs(minibatches, loss_of, n_epochs, optimizer, model.n_obs, progress=progress,
                        step="train logistic regression")


class StreamedLogisticClassifier:
    """The L1-prior logistic regression behind sklearn's `fit` / `predict`, for label transfer on more cells
    than sklearn's full-batch solver handles: features scaled by their standard deviation (as the
    in-memory pipeline's `StandardScaler(with_mean=False)`), then Adam over seeded, shuffled minibatches."""

    def __init__(self, seed: int = 0, n_epochs: int = 5, batch_size: int = 4096, lr: float = 1e-2,
                 prior_scale: float = 1.0, min_steps: int = 500):
        self.seed, self.n_epochs, self.batch_size = seed, n_epochs, batch_size
        self.lr, self.prior_scale = lr, prior_scale
        self.min_steps = min_steps  # a small training set gets more passes, so Adam takes enough steps

    def fit(self, x_nd: np.ndarray, labels_n: np.ndarray) -> "StreamedLogisticClassifier":
        self.classes_, y_n = np.unique(np.asarray(labels_n), return_inverse=True)
        x_nd = np.asarray(x_nd, dtype=np.float32)
        scale_d = x_nd.std(0)
        self.scale_d = np.where(scale_d > 0, scale_d, 1.0).astype(np.float32)
        self.model = StreamedLogisticRegression(x_nd.shape[1], len(self.classes_), len(y_n), self.prior_scale,
                                                init_scale=0.01, seed=self.seed)
        order_n = np.random.default_rng(self.seed).permutation(len(y_n))
        blocks = [order_n[i:i + self.batch_size] for i in range(0, len(order_n), self.batch_size)]
        n_epochs = max(self.n_epochs, -(-self.min_steps // len(blocks)))
        fit_logistic(self.model, _Minibatches(x_nd, y_n, blocks, self.scale_d), n_epochs, self.lr)
        return self

    def predict(self, x_nd: np.ndarray) -> np.ndarray:
        return self.classes_[self.model.predict(np.asarray(x_nd, dtype=np.float32) / self.scale_d)]


class _Minibatches:
    """Scaled minibatches made as they are consumed, so the training set is never copied whole; re-iterable."""

    def __init__(self, x_nd: np.ndarray, y_n: np.ndarray, blocks: list[np.ndarray], scale_d: np.ndarray):
        self.x_nd, self.y_n, self.blocks, self.scale_d = x_nd, y_n, blocks, scale_d

    def __iter__(self):
        for rows in self.blocks:
            yield self.x_nd[rows] / self.scale_d, self.y_n[rows]
