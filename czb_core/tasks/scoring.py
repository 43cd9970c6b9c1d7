"""Run benchmark tasks on an embedding, the way cz-benchmarks scores a model's output.

A task gets an embedding (cells x dims) and obs columns, never a model: the app embeds first, then
scores. `run_tasks` checks the inputs once (`inputs.py`), takes the subsample once, builds the exact
kNN graph once (k=200 when batch integration runs, else 15) and runs the selected tasks in order:
clustering, embedding, label_prediction, batch_integration (needs batch_key), cross_split (needs
split_key, train_value, test_value). The kNN search's time counts toward the first task that uses it.

`run_with_baseline` scores a model embedding and a baseline embedding (e.g. PCA) on the same cells
with the same seed and returns both result lists and the model-vs-baseline table; given the
dataset's sha256 it takes the baseline's results from the baseline-metrics cache when it can.
"""

from __future__ import annotations

import dataclasses
import functools
import resource
import time
from typing import Optional

import numpy as np
import pandas as pd

from czb_core.progress import ProgressCallback, no_progress
from czb_core.tasks.baseline_metrics import BaselineSource, load_baseline_results, store_baseline_results
from czb_core.tasks.batch_integration import batch_integration_metrics
from czb_core.tasks.clustering import clustering_metrics, leiden_clusters
from czb_core.tasks.cross_split import cross_split_transfer
from czb_core.tasks.embedding import embedding_metrics
from czb_core.tasks.inputs import TaskInputs, check_embedding, prepare_inputs
from czb_core.tasks.label_prediction import MIN_CLASS_SIZE, fold_scores, kept_classes, label_prediction_metrics
from czb_core.tasks.neighbors import CLUSTERING_K, ENTROPY_K, KnnGraph, compute_knn
from czb_core.tasks.options import MetricOptions
from czb_core.tasks.results import TaskResult, results_table, to_czbenchmarks_json

TASK_DISPLAY = {
    "clustering": "Clustering",
    "embedding": "Embedding",
    "label_prediction": "Label Prediction",
    "batch_integration": "Batch Integration",
    "cross_split": "Cross-split Label Transfer",
}
# How the baseline is named in results (the model it is computed with is `baseline.baseline_model()`).
BASELINE_DESCRIPTION = {"type": "BASELINE", "variant": "pca", "name_display": "PCA baseline"}


def _clustering(emb_nd, inputs: TaskInputs, knn, seed):
    clusters_n = leiden_clusters(emb_nd, knn(), seed)
    extra = {"n_clusters": int(len(np.unique(clusters_n))), "n_neighbors": min(CLUSTERING_K, knn().k)}
    return clustering_metrics(inputs.labels_n, clusters_n), extra, inputs.n_used


def _embedding(emb_nd, inputs: TaskInputs, knn, seed):
    return embedding_metrics(emb_nd, inputs.labels_n), {}, inputs.n_used


def _label_prediction(emb_nd, inputs: TaskInputs, knn, seed):
    folds_df = fold_scores(emb_nd, inputs.labels_n, seed)
    kept = kept_classes(inputs.labels_n, MIN_CLASS_SIZE)
    counts = inputs.labels_n.value_counts()
    dropped = counts[(counts > 0) & ~counts.index.isin(kept.index)]
    extra = {"n_classes": len(kept), "dropped_classes": {str(k): int(v) for k, v in dropped.items()}}
    return label_prediction_metrics(folds_df), extra, int(kept.sum())


def _batch_integration(emb_nd, inputs: TaskInputs, knn, seed):
    metrics = batch_integration_metrics(emb_nd, inputs.labels_n, inputs.batches_n, knn())
    extra = {"n_batches": int(inputs.batches_n.nunique()), "entropy_k": min(ENTROPY_K, knn().k)}
    if any(np.isnan(m.value) for m in metrics):
        extra["warnings"] = ["batch silhouette undefined: no label has cells from 2+ batches"]
    return metrics, extra, inputs.n_used


def _cross_split(emb_nd, inputs: TaskInputs, knn, seed):
    transfer = cross_split_transfer(
        emb_nd, inputs.labels_n, inputs.split_n, inputs.train_value, inputs.test_value, seed
    )
    extra = {
        "confusion_matrices": {
            name: {"classes": frame.index.tolist(), "matrix": frame.to_numpy().tolist()}
            for name, frame in transfer.confusion.items()
        },
        "unseen_test_labels": transfer.unseen_labels,
    }
    n_used = int(inputs.split_n.isin([inputs.train_value, inputs.test_value]).sum())
    return transfer.metrics, extra, n_used


RUNNERS = {
    "clustering": _clustering,
    "embedding": _embedding,
    "label_prediction": _label_prediction,
    "batch_integration": _batch_integration,
    "cross_split": _cross_split,
}


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_prepared(
    emb_nd: np.ndarray,
    inputs: TaskInputs,
    progress: Optional[ProgressCallback] = None,
    model: Optional[dict] = None,
    dataset: Optional[dict] = None,
) -> list[TaskResult]:
    """Run `inputs.tasks` on one embedding whose rows are obs's cells (all of them, not the subsample)."""
    progress = progress or no_progress
    seed = inputs.seed
    emb_nd = check_embedding(emb_nd, inputs.n_total)[inputs.rows_n]
    k = ENTROPY_K if "batch_integration" in inputs.tasks else CLUSTERING_K

    @functools.cache
    def knn() -> KnnGraph:
        return compute_knn(emb_nd, k)

    results = []
    for done, task in enumerate(inputs.tasks):
        progress(f"metrics: {TASK_DISPLAY[task].lower()}", done, len(inputs.tasks))
        start = time.perf_counter()
        metrics, extra, n_used = RUNNERS[task](emb_nd, inputs, knn, seed)
        extra["warnings"] = [*inputs.warnings, *extra.get("warnings", [])]
        results.append(
            TaskResult(
                task_name=task,
                task_name_display=TASK_DISPLAY[task],
                metrics=metrics,
                n_used=n_used,
                n_total=inputs.n_total,
                model=dict(model or {}),
                dataset=dict(dataset or {}),
                runtime_metrics={
                    "wall_s": round(time.perf_counter() - start, 3),
                    "peak_rss_mb": round(_peak_rss_mb(), 1),
                    "device": "cpu",
                },
                extra=extra,
            )
        )
    progress("metrics", len(inputs.tasks), len(inputs.tasks))
    return results


def run_tasks(
    emb_nd: np.ndarray,
    obs: pd.DataFrame,
    label_key: str,
    *,
    progress: Optional[ProgressCallback] = None,
    model: Optional[dict] = None,
    dataset: Optional[dict] = None,
    **task_options,
) -> list[TaskResult]:
    """Score one embedding. `task_options` are `prepare_inputs`' (batch_key, split_key, train_value,
    test_value, tasks, seed, max_cells). Above `max_cells` (default `Settings.metrics_max_cells`) the
    metrics use a seeded stratified subsample; pass a cap at least the number of cells to score every cell."""
    return run_prepared(emb_nd, prepare_inputs(obs, label_key, **task_options), progress, model, dataset)


def cached_baseline_results(
    dataset_sha256: str,
    options: MetricOptions,
    obs: pd.DataFrame,
    baseline: BaselineSource,
    progress: Optional[ProgressCallback] = None,
    baseline_model: Optional[dict] = None,
    dataset: Optional[dict] = None,
) -> list[TaskResult]:
    """The baseline's task results for (dataset, options): from the cache, else scored and stored.

    `baseline` is the baseline embedding or a function returning it, called only on a cache miss (so
    a cached dataset need not even load its PCA). Results read from the cache carry this call's
    `baseline_model` and `dataset` and `runtime_metrics["from_cache"] = True`.
    """
    progress = progress or no_progress
    baseline_model = dict(baseline_model or BASELINE_DESCRIPTION)
    cached = load_baseline_results(dataset_sha256, options, obs)
    if cached is not None:
        progress("metrics: baseline (cached)", 1, 1)
        return [
            dataclasses.replace(
                result, model=baseline_model, dataset=dict(dataset or {}),
                runtime_metrics={**result.runtime_metrics, "from_cache": True},
            )
            for result in cached
        ]
    inputs = prepare_inputs(obs, **options.run_kwargs())
    emb_nd = baseline() if callable(baseline) else baseline
    results = run_prepared(emb_nd, inputs, progress, baseline_model, dataset)
    store_baseline_results(dataset_sha256, options, obs, results)
    return results


def run_with_baseline(
    emb_nd: np.ndarray,
    baseline_emb_nd: BaselineSource,
    obs: pd.DataFrame,
    label_key: str,
    *,
    progress: Optional[ProgressCallback] = None,
    model: Optional[dict] = None,
    baseline_model: Optional[dict] = None,
    dataset: Optional[dict] = None,
    dataset_sha256: Optional[str] = None,
    **task_options,
) -> tuple[list[TaskResult], list[TaskResult], pd.DataFrame]:
    """Model and baseline scored on the same checked cells: (model results, baseline results, table);
    `task_options` as `run_tasks`'.

    With `dataset_sha256` the baseline's results come from the baseline-metrics cache
    (`baseline_metrics.py`) when these options were scored before, and are stored there otherwise;
    `baseline_emb_nd` may then be a function returning the embedding, called only on a cache miss.
    """
    inputs = prepare_inputs(obs, label_key, **task_options)
    baseline_model = baseline_model or BASELINE_DESCRIPTION

    def checked_baseline() -> np.ndarray:
        baseline_nd = baseline_emb_nd() if callable(baseline_emb_nd) else baseline_emb_nd
        return check_embedding(baseline_nd, inputs.n_total, "baseline embedding")

    if not callable(baseline_emb_nd):
        checked_baseline()  # a wrong shape stops the run before the model is scored
    if dataset_sha256 is None:
        baseline_nd = checked_baseline()
        model_results = run_prepared(emb_nd, inputs, progress, model, dataset)
        baseline_results = run_prepared(baseline_nd, inputs, progress, baseline_model, dataset)
    else:
        options = MetricOptions.from_run_kwargs(label_key, **task_options)
        model_results = run_prepared(emb_nd, inputs, progress, model, dataset)
        if baseline_emb_nd is emb_nd:  # the run is the baseline (a default PCA run): its results are the baseline's
            baseline_results = [dataclasses.replace(r, model=dict(baseline_model)) for r in model_results]
            store_baseline_results(dataset_sha256, options, obs, baseline_results)
        else:
            baseline_results = cached_baseline_results(
                dataset_sha256, options, obs, checked_baseline, progress, baseline_model, dataset
            )
    return model_results, baseline_results, results_table(model_results, baseline_results)


def score_embedding(
    emb_nd: np.ndarray,
    obs: pd.DataFrame,
    options: MetricOptions,
    baseline: Optional[BaselineSource] = None,
    *,
    dataset_sha256: Optional[str] = None,
    model: Optional[dict] = None,
    dataset: Optional[dict] = None,
    progress: Optional[ProgressCallback] = None,
) -> dict:
    """The metrics document of one embedding (beside the baseline unless `baseline` is None): the one
    builder of what `czb benchmark` prints and writes and what a job's scoring run stores.

    Open label/batch choices are resolved from obs first; the document records the resolved options,
    the cz-benchmarks JSON of both sides, the comparison table, each task's extras, how many cells were
    used, and every warning (cells left out, subsampling) once.
    """
    options = options.resolve(obs)
    kwargs = options.run_kwargs()
    if baseline is None:
        model_results = run_tasks(emb_nd, obs, **kwargs, progress=progress, model=model, dataset=dataset)
        baseline_results: list[TaskResult] = []
        table = results_table(model_results, baseline_results)
    else:
        model_results, baseline_results, table = run_with_baseline(
            emb_nd, baseline, obs, **kwargs, progress=progress, model=model, dataset=dataset,
            dataset_sha256=dataset_sha256)
    args = options.to_dict()
    warnings = list(dict.fromkeys(w for r in model_results for w in r.extra.get("warnings", [])))
    return {
        "options": args,
        "model": to_czbenchmarks_json(model_results, args),
        "baseline": to_czbenchmarks_json(baseline_results, args) if baseline_results else None,
        "table": table.to_dict("records"),
        "extra": {r.task_name: r.extra for r in model_results},
        "n_used": max(r.n_used for r in model_results),
        "n_total": model_results[0].n_total,
        "subsampled": any(r.subsampled for r in model_results),
        "warnings": warnings,
    }
