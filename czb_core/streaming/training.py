"""The minibatch loop of the streamed models (probabilistic PCA, the logistic regression): one optimiser
step per minibatch, the loss per epoch, progress per epoch. Each model brings its optimiser (and learning
rate schedule) and how a minibatch becomes a loss."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np


def train_epochs(minibatches: Iterable, loss_of: Callable[[Any], Any], n_epochs: int, optimizer, n_obs: int,
                 *, scheduler=None, progress=None, step: str = "train") -> list[float]:
    """`n_epochs` passes over `minibatches` (re-iterable); returns each epoch's mean loss per observation."""
    history = []
    for epoch in range(n_epochs):
        losses = []
        for batch in minibatches:
            optimizer.zero_grad()
            loss = loss_of(batch)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            losses.append(loss.item() / n_obs)
        history.append(float(np.mean(losses)))
        if progress is not None:
            progress(step, epoch + 1, n_epochs)
    return history


