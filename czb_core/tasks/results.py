"""What a task run produces, and the two ways it leaves the library: cz-benchmarks JSON and a table.

`metric_type` strings are cz-benchmarks' `MetricType` values (`adjusted_rand_index`,
`mean_fold_accuracy`, ...), so a results file from either tool can be read by the same code.
Metrics cz-benchmarks lacks get names in the same style (`mean_fold_mcc`, `matthews_corrcoef`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

import pandas as pd

from czb_core import __version__


@dataclass(frozen=True)
class MetricResult:
    """One number; `params` tells apart results of the same type (e.g. which classifier)."""

    metric_type: str
    value: float
    params: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """`mean_fold_f1 (classifier=lr)`: a name unique within a task, for tables."""
        if not self.params:
            return self.metric_type
        args = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.metric_type} ({args})"


@dataclass
class TaskResult:
    """Every metric of one task on one embedding, with the cells it used and what it cost.

    `model` = {type, variant, name_display}; `dataset` = {name, organism}; `runtime_metrics` =
    {wall_s, peak_rss_mb, device}; `extra` holds what is not a single number (confusion matrices as
    nested lists with their class names, dropped classes, warnings).
    """

    task_name: str
    task_name_display: str
    metrics: list[MetricResult]
    n_used: int
    n_total: int
    model: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)
    runtime_metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def subsampled(self) -> bool:
        return self.n_used < self.n_total


def to_czbenchmarks_json(results: list[TaskResult], args: Optional[dict[str, Any]] = None) -> dict:
    """The results document of the old cz-benchmarks CLI, one `task_results` entry per TaskResult.

    A subsample shows in the dataset's `subset_display` ("50,000 of 100,000 cells"); `extra` is not
    part of that format and is left out.
    """
    return {
        "czbenchmarks_version": f"czb-studio {__version__}",
        "args": dict(args or {}),
        "task_results": [_task_json(r) for r in results],
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _task_json(result: TaskResult) -> dict:
    model, dataset = result.model, result.dataset
    variant = model.get("variant") or ""
    subset = f"{result.n_used:,} of {result.n_total:,} cells" if result.subsampled else ""
    return {
        "task_name": result.task_name,
        "task_name_display": result.task_name_display,
        "model": {
            "type": str(model.get("type", "")),
            "args": {"model_variant": variant} if variant else {},
            "name_display": model.get("name_display", str(model.get("type", ""))),
            "variant_display": variant,
        },
        "datasets": [
            {
                "name": dataset.get("name", ""),
                "organism": str(dataset.get("organism", "")),
                "name_display": dataset.get("name", ""),
                "subset_display": subset,
            }
        ],
        "metrics": [
            {"metric_type": m.metric_type, "value": _json_float(m.value), "params": dict(m.params)}
            for m in result.metrics
        ],
        "runtime_metrics": dict(result.runtime_metrics),
    }


def _json_float(value: float) -> Optional[float]:
    """JSON has no NaN; an undefined metric is written as null."""
    return None if math.isnan(value) else float(value)


def results_table(model_results: list[TaskResult], baseline_results: list[TaskResult]) -> pd.DataFrame:
    """Model against baseline, one row per (task, metric): columns task, metric, model, baseline,
    delta (model - baseline) and better ("model", "baseline", "tie", or "" when either is missing).

    Every metric these tasks report is higher-is-better (ARI, NMI, rescaled silhouettes, accuracy,
    F1, precision, recall, AUROC, MCC, entropy_per_cell, batch silhouette), so the larger value wins.
    """
    baseline = {(r.task_name, m.label): m.value for r in baseline_results for m in r.metrics}
    rows = []
    for result in model_results:
        for metric in result.metrics:
            base = baseline.get((result.task_name, metric.label), math.nan)
            delta = metric.value - base
            rows.append(
                {
                    "task": result.task_name,
                    "metric": metric.label,
                    "model": metric.value,
                    "baseline": base,
                    "delta": delta,
                    "better": _better(delta),
                }
            )
    return pd.DataFrame(rows, columns=["task", "metric", "model", "baseline", "delta", "better"])


def _better(delta: float) -> str:
    if math.isnan(delta):
        return ""
    if delta > 0:
        return "model"
    return "baseline" if delta < 0 else "tie"
