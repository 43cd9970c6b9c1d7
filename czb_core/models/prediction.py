"""A perturbation prediction (scGenePT's output): how a run writes it, and its effect per gene.

A prediction run writes predicted expression (`X`, sampled control cells x genes) with the control cell of
each row in `obs["control_cell"]` and its parameters in `uns["czb_run"]`. `predicted_effect` summarises a
prediction against the control cells it was made from (the runner reports it; scoring shows it). Scoring a
prediction run against its dataset is `czb_core.tasks.perturbation.evaluate_prediction_run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import anndata as ad
import numpy as np
import pandas as pd

from czb_core.errors import InputError

CONTROL_CELL_COLUMN = "control_cell"


def is_prediction(adata: ad.AnnData) -> bool:
    """Whether a run output holds a prediction (predicted expression of control cells), not an embedding."""
    record = adata.uns.get("czb_run") or {}
    return record.get("prediction_shape") is not None and CONTROL_CELL_COLUMN in adata.obs


@dataclass(frozen=True)
class PredictedEffect:
    """A prediction summarised per gene: the control mean, the predicted mean and their difference."""

    genes_g: np.ndarray
    control_mean_g: np.ndarray
    predicted_mean_g: np.ndarray

    @property
    def change_g(self) -> np.ndarray:
        return self.predicted_mean_g - self.control_mean_g

    def top_genes(self, n: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(most increased, most decreased) genes with their control mean, predicted mean and change."""
        table = pd.DataFrame({"gene": self.genes_g, "control_mean": self.control_mean_g,
                              "predicted_mean": self.predicted_mean_g, "change": self.change_g})
        ordered = table.sort_values("change", kind="stable")
        return (ordered.iloc[::-1].head(n).reset_index(drop=True), ordered.head(n).reset_index(drop=True))


def predicted_effect(pred_ng: np.ndarray, control_ng: np.ndarray,
                     genes_g: Sequence[str] | np.ndarray) -> PredictedEffect:
    """The mean predicted expression against the mean of the control cells it was predicted from."""
    pred_ng, control_ng = np.asarray(pred_ng, dtype=np.float64), np.asarray(control_ng, dtype=np.float64)
    if pred_ng.shape[1] != control_ng.shape[1] or pred_ng.shape[1] != len(genes_g):
        raise InputError(f"prediction ({pred_ng.shape[1]} genes), control cells ({control_ng.shape[1]}) and gene "
                         f"names ({len(genes_g)}) must cover the same genes")
    return PredictedEffect(np.asarray(genes_g, dtype=str), control_ng.mean(0), pred_ng.mean(0))
