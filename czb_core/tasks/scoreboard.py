"""Runs at a glance: one row per run with its cost and headline metrics, each beside the PCA baseline.

A metrics document (`scoring.score_embedding`) holds 30-odd rows per run under cz-benchmarks' names
(`mean_fold_accuracy (classifier=MEAN(knn,lr,rf))`); a scientist comparing models wants five numbers
and whether each beats PCA. This module picks those numbers, gives every metric a readable name and
a one-line meaning, and keeps the default PCA run from counting twice: it *is* the baseline, so it is
one row (delta 0), and the baseline gets a row of its own only when no selected run is it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import pandas as pd

from czb_core.models.registry import get_model
from czb_core.tasks.baseline import baseline_model

BASELINE_ROW = "PCA baseline"

# metric_type -> (readable name, what it says). Every metric here is higher-is-better.
GLOSSARY: dict[str, tuple[str, str]] = {
    "adjusted_rand_index": ("ARI", "agreement of Leiden clusters with the labels, corrected for chance "
                                   "(0 = random, 1 = the same partition)"),
    "normalized_mutual_info": ("NMI", "information the Leiden clusters share with the labels (0 = none, 1 = all)"),
    "silhouette_score": ("Silhouette", "how much nearer cells lie to their own label than to the next one, "
                                       "rescaled to 0..1 (0.5 = no separation)"),
    "mean_fold_accuracy": ("Accuracy", "share of held-out cells whose label is predicted right (5-fold CV)"),
    "mean_fold_f1": ("F1", "harmonic mean of precision and recall, averaged over labels (5-fold CV)"),
    "mean_fold_precision": ("Precision", "of the cells predicted as a label, the share that have it (5-fold CV)"),
    "mean_fold_recall": ("Recall", "of the cells with a label, the share predicted as it (5-fold CV)"),
    "mean_fold_auroc": ("AUROC", "chance a cell of a label scores higher for it than a cell of another "
                                 "(one-vs-rest, 5-fold CV)"),
    "mean_fold_mcc": ("MCC", "Matthews correlation of predicted and true labels: 0 = chance, 1 = perfect; "
                             "fair to rare labels (5-fold CV)"),
    "entropy_per_cell": ("Batch entropy", "how mixed the batches are among each cell's neighbours "
                                          "(0 = one batch, 1 = evenly mixed)"),
    "batch_silhouette": ("Batch silhouette", "within each label, how little cells separate by batch "
                                             "(1 = batches overlap)"),
    "accuracy": ("Transfer accuracy", "share of test-split cells labelled right by a classifier trained on the "
                                      "train split"),
    "f1": ("Transfer F1", "macro F1 on the test split of a classifier trained on the train split"),
    "mcc": ("Transfer MCC", "Matthews correlation on the test split of a classifier trained on the train split"),
}
CLASSIFIER_NAMES = {"lr": "logistic regression", "knn": "kNN", "rf": "random forest"}

# (column title, task, metric_type): the scoreboard's headline numbers; label prediction's are the
# means over all classifiers.
HEADLINE = (
    ("ARI", "clustering", "adjusted_rand_index"),
    ("Silhouette", "embedding", "silhouette_score"),
    ("Accuracy (mean kNN / LR / RF)", "label_prediction", "mean_fold_accuracy"),
    ("MCC (mean kNN / LR / RF)", "label_prediction", "mean_fold_mcc"),
    ("Batch entropy", "batch_integration", "entropy_per_cell"),
)
RUN_COLUMNS = ("Model", "Variant", "Embedding size", "Cells", "Wall time (s)", "GPU memory (MB)")
DELTA_PREFIX = "Δ "
_LABEL = re.compile(r"^(?P<type>[^ (]+)(?: \((?P<params>.*)\))?$")


@dataclass(frozen=True)
class RunEntry:
    """One finished run: a unique label, its run record, its metrics document (None: not scored yet)."""

    label: str
    record: dict
    document: Optional[dict]
    is_baseline: bool = False  # the default PCA run: the baseline itself


def parse_metric_label(label: str) -> tuple[str, dict[str, str]]:
    """`mean_fold_f1 (classifier=lr)` -> (`mean_fold_f1`, {"classifier": "lr"})."""
    match = _LABEL.match(label)
    if match is None:
        return label, {}
    params = {}
    for item in (match["params"] or "").split(", "):
        key, sep, value = item.partition("=")
        if sep:
            params[key] = value
    return match["type"], params


def classifier_name(code: str) -> str:
    """`MEAN(knn,lr,rf)` -> `mean of kNN / LR / RF`; `lr` -> `logistic regression`."""
    if code.startswith("MEAN(") and code.endswith(")"):
        return "mean of " + " / ".join(c.upper() if c != "knn" else "kNN" for c in code[5:-1].split(","))
    return CLASSIFIER_NAMES.get(code, code)


def describe_metric(label: str) -> tuple[str, str]:
    """(readable name, one-line meaning) of a results-table metric label."""
    metric_type, params = parse_metric_label(label)
    name, meaning = GLOSSARY.get(metric_type, (metric_type.replace("_", " ").capitalize(), ""))
    if "classifier" in params:
        name = f"{name}, {classifier_name(params['classifier'])}"
    if "train" in params and "test" in params:
        name = f"{name} ({params['train']} → {params['test']})"
    return name, meaning


def metric_table(document: dict) -> pd.DataFrame:
    """A document's full table with readable names and meanings: Task, Metric, Meaning, Model,
    PCA baseline, Δ, Better (the raw metric label kept as `Key`, for lookups and exports)."""
    table = pd.DataFrame(document.get("table", []), columns=["task", "metric", "model", "baseline", "delta", "better"])
    described = [describe_metric(label) for label in table["metric"]]
    return pd.DataFrame({
        "Task": table["task"].map(_task_title),
        "Metric": [name for name, _ in described],
        "Meaning": [meaning for _, meaning in described],
        "Model": table["model"].astype(float),
        BASELINE_ROW: table["baseline"].astype(float),
        "Δ": table["delta"].astype(float),
        "Better": table["better"],
        "Key": table["metric"],
    })


def _task_title(task: str) -> str:
    from czb_core.tasks.scoring import TASK_DISPLAY

    return TASK_DISPLAY.get(task, task)


def headline_values(document: Optional[dict], side: str = "model") -> dict[str, float]:
    """Column title -> value of one side ("model" or "baseline") of a document; NaN where absent."""
    values = {title: math.nan for title, _, _ in HEADLINE}
    for row in (document or {}).get("table", []):
        metric_type, params = parse_metric_label(row["metric"])
        for title, task, wanted in HEADLINE:
            averaged = params.get("classifier", "MEAN(").startswith("MEAN(")
            if row["task"] == task and metric_type == wanted and averaged and row.get(side) is not None:
                values[title] = float(row[side])
    return values


def run_facts(record: dict) -> dict:
    """Model, variant, embedding size, cells, wall time and peak GPU memory from a run record."""
    shape = record.get("embedding_shape") or [math.nan, math.nan]
    gpu = record.get("peak_gpu_mb")
    return {
        "Model": record.get("model", ""),
        "Variant": record.get("variant", ""),
        "Embedding size": shape[1],
        "Cells": shape[0],
        "Wall time (s)": record.get("wall_s", math.nan),
        "GPU memory (MB)": math.nan if gpu is None else float(gpu),
    }


def scoreboard(entries: Sequence[RunEntry]) -> pd.DataFrame:
    """One row per run (index: its label): run facts, then each headline metric and its Δ to the
    baseline. The baseline's own row is added (as `BASELINE_ROW`) only when no entry is the baseline
    and some document carries baseline values."""
    rows: dict[str, dict] = {}
    baseline_values: Optional[dict[str, float]] = None
    for entry in entries:
        values = headline_values(entry.document)
        base = values if entry.is_baseline else headline_values(entry.document, "baseline")
        if baseline_values is None and entry.document and not all(math.isnan(v) for v in base.values()):
            baseline_values = base
        rows[entry.label] = {**run_facts(entry.record), **_with_deltas(values, base)}
    if baseline_values is not None and not any(e.is_baseline for e in entries):
        baseline = get_model(baseline_model())
        facts = {column: math.nan for column in RUN_COLUMNS} | {"Model": baseline.name,
                                                                 "Variant": baseline.default_variant}
        rows = {BASELINE_ROW: {**facts, **_with_deltas(baseline_values, baseline_values)}, **rows}
    columns = list(RUN_COLUMNS) + [c for title, _, _ in HEADLINE for c in (title, DELTA_PREFIX + title)]
    board = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=columns)
    board.index.name = "Run"
    return board


def _with_deltas(values: Mapping[str, float], base: Mapping[str, float]) -> dict[str, float]:
    out = {}
    for title, value in values.items():
        out[title] = value
        out[DELTA_PREFIX + title] = value - base[title]
    return out


def headline_long(board: pd.DataFrame) -> pd.DataFrame:
    """The board's headline metrics in long form (Run, Metric, Value) for a grouped bar chart; metrics
    no run has are left out."""
    titles = [title for title, _, _ in HEADLINE if board[title].notna().any()]
    long = board[titles].reset_index().melt(id_vars="Run", var_name="Metric", value_name="Value")
    return long.dropna(subset=["Value"]).reset_index(drop=True)


def run_label(model: str, variant: str, params: Mapping, job_id: str) -> str:
    """`pca / default (n_comps=10) · 3f2a9c`: what tells two runs apart at a glance (the non-default
    parameters), with the job id for when everything else is the same."""
    from czb_core.io.exports import param_text

    shown = ", ".join(f"{k}={param_text(v)}" for k, v in sorted(params.items()))
    return f"{model} / {variant}" + (f" ({shown})" if shown else "") + f" · {job_id[:6]}"

