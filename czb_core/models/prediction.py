"""A perturbation prediction (scGenePT's output) read against the dataset it was predicted from.

A prediction run writes predicted expression (`X`, sampled control cells x genes) with the control cell of
each row in `obs["control_cell"]` and its parameters in `uns["czb_run"]`. Scoring it needs the dataset's
counts on the same gene axis, read as the model read them: the model's data manager decides where the
counts and the gene symbols are, so the observed change is computed on what the model saw. The condition,
its column and the control label default to the run's own parameters (`perturbation`, `control_key`,
`control_value`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import anndata as ad

from czb_core.errors import InputError
from czb_core.io.header import read_header
from czb_core.io.reading import read_anndata
from czb_core.models.registry import get_model
from czb_core.tasks.perturbation import PredictionEvaluation, evaluate_prediction
from czb_core.types import Organism

CONTROL_CELL_COLUMN = "control_cell"


def is_prediction(adata: ad.AnnData) -> bool:
    """Whether a run output holds a prediction (predicted expression of control cells), not an embedding."""
    record = adata.uns.get("czb_run") or {}
    return record.get("prediction_shape") is not None and CONTROL_CELL_COLUMN in adata.obs


def evaluate_prediction_run(
    prediction: ad.AnnData, data_path: str | Path, *, organism: Optional[Organism] = None,
    condition: Optional[str] = None, condition_key: Optional[str] = None, control_name: Optional[str] = None,
) -> PredictionEvaluation:
    """The prediction's effect per gene and, when the dataset holds cells of the condition, the 0.10 metrics
    and the 0.15 Spearman of the model beside the no-change and mean-effect baselines."""
    if not is_prediction(prediction):
        raise InputError("this run output is not a perturbation prediction (write one with `czb perturb-predict`)")
    record = prediction.uns["czb_run"]
    params = record.get("params") or {}
    config = get_model(str(record.get("model")))
    validator = config.load_implementation()(config, record.get("variant"))
    manager = validator.data_manager(read_header(data_path), organism)
    adata = read_anndata(data_path)
    manager.bind(adata)
    return evaluate_prediction(
        prediction.X, prediction.var_names, prediction.obs[CONTROL_CELL_COLUMN], manager.counts(), manager.genes_g,
        adata.obs, adata.uns, condition=str(condition or params.get("perturbation")),
        condition_key=str(condition_key or params.get("control_key") or "condition"),
        control_name=str(control_name or params.get("control_value") or "ctrl"), var_names=manager.var_names)
