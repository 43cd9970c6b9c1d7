"""The `fit` variant: scVI trained on the dataset's own counts; needs no download, so it always runs offline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import scvi
from lightning.pytorch import Callback

from czb_core.progress import CancelToken, ProgressCallback
from model_runners.scvi.latent import latent_mean, lightning_device

TRAIN_STEP = "train epoch"
BATCH_COLUMN = "batch"


def default_max_epochs(n_cells: int) -> int:
    """scvi-tools 1.4.2's own rule (`scvi.model._utils.get_max_epochs_heuristic`): 400 epochs up to
    20,000 cells, then 400 x 20,000 / n_cells, at least 1. Computed here so progress knows the total."""
    return max(min(round((20_000 / n_cells) * 400), 400), 1)


class EpochProgress(Callback):
    """Reports each finished epoch and stops training (by raising `Cancelled`) once the run is cancelled."""

    def __init__(self, max_epochs: int, progress: ProgressCallback, cancel: CancelToken):
        self.max_epochs = max_epochs
        self.progress = progress
        self.cancel = cancel

    def on_train_start(self, trainer, pl_module) -> None:
        self.progress(TRAIN_STEP, 0, self.max_epochs)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.cancel.check()  # an epoch of a large dataset takes minutes on a CPU

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.progress(TRAIN_STEP, trainer.current_epoch + 1, self.max_epochs)
        self.cancel.check()


@dataclass(frozen=True)
class FitParams:
    n_latent: int = 10
    n_layers: int = 1
    n_hidden: int = 128
    max_epochs: Optional[int] = None  # None: default_max_epochs(n_cells)
    early_stopping: bool = False
    batch_size: int = 128
    seed: int = 0


def fit_latent(
    x_ng: sp.csr_matrix,
    batch_n: Optional[pd.Series],
    params: FitParams,
    device: str,
    progress: ProgressCallback,
    cancel: CancelToken,
) -> tuple[np.ndarray, int]:
    """(`emb_nd` latent means, epochs trained) of scVI trained on raw counts `x_ng`.

    The model sees a fresh AnnData holding only the counts and, when given, the batch labels (aligned
    with the cells), so the user's object is never registered or modified by scvi-tools.
    """
    obs = pd.DataFrame(index=pd.RangeIndex(x_ng.shape[0]).astype(str))
    if batch_n is not None:
        obs[BATCH_COLUMN] = pd.Categorical(np.asarray(batch_n, dtype=str))
    adata = ad.AnnData(X=x_ng, obs=obs)
    scvi.settings.seed = params.seed
    scvi.model.SCVI.setup_anndata(adata, batch_key=BATCH_COLUMN if batch_n is not None else None)
    model = scvi.model.SCVI(adata, n_hidden=params.n_hidden, n_latent=params.n_latent, n_layers=params.n_layers)
    max_epochs = params.max_epochs or default_max_epochs(adata.n_obs)
    accelerator, index = lightning_device(device)
    model.train(
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=[index] if accelerator == "gpu" else 1,
        batch_size=params.batch_size,
        early_stopping=params.early_stopping,
        enable_progress_bar=False,
        callbacks=[EpochProgress(max_epochs, progress, cancel)],
    )
    epochs = len(model.history["elbo_train"])
    return latent_mean(model, params.batch_size, progress, cancel), epochs
