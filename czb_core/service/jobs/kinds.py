"""What kind of work a queued job is, decided in one place from its model name.

Every job on the persisted queue names a model: a registered model (an embedding, a prediction, or the
baseline) or the tokenizer lab (`LAB_MODEL`, a training). The queue, the stages and the pages ask the
job's kind (where it runs, whether it is scored, which page shows it, whether its memory can be
estimated) instead of each comparing model names.
"""

from __future__ import annotations

from dataclasses import dataclass

from czb_core.models.description import describe
from czb_core.models.registry import get_model
from czb_core.tokenizer_lab import LAB_MODEL
from czb_core.types import Output


@dataclass(frozen=True)
class JobKind:
    name: str  # "embedding", "prediction", "baseline" or "lab training"
    scored: bool  # a UMAP and embedding metrics beside the baseline follow the device stage
    cpu_only: bool  # runs on the CPU whatever was asked (the baseline is cheap and shared)
    page: str  # where a finished job is read: "results" or "tokenizer_lab"
    model_run: bool  # a registered model's run (a memory estimate and a run record of the model layer)


EMBEDDING = JobKind("embedding", scored=True, cpu_only=False, page="results", model_run=True)
BASELINE = JobKind("baseline", scored=True, cpu_only=True, page="results", model_run=True)
PREDICTION = JobKind("prediction", scored=False, cpu_only=False, page="results", model_run=True)
LAB_TRAINING = JobKind("lab training", scored=False, cpu_only=False, page="tokenizer_lab", model_run=False)


def kind_of(model: str) -> JobKind:
    """The kind of a job whose spec names `model`."""
    if model == LAB_MODEL:
        return LAB_TRAINING
    description = describe(get_model(model))
    if description.baseline:
        return BASELINE
    return PREDICTION if description.output == Output.PREDICTION else EMBEDDING
