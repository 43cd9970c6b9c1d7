"""Label prediction task: can simple classifiers read the labels off the embedding?

As cz-benchmarks 0.15 (`tasks/label_prediction.py`): classes with fewer than `min_class_size` cells
are dropped; labels become category codes of their string form; StratifiedKFold(n_folds, shuffle,
random_state=seed); for each classifier (see `classifiers.py`) and fold: accuracy, F1, precision and
recall (average="binary" for 2 classes, positive class = the later name in sort order; "macro"
otherwise), AUROC (macro one-vs-rest on predict_proba). We add Matthews correlation (MCC). Reported:
the mean over folds per classifier (params {"classifier": "lr"}) and over all classifiers' folds
(params {"classifier": "MEAN(knn,lr,rf)"}), with cz-benchmarks' metric names.
"""

from __future__ import annotations

import math
import warnings

import joblib
import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    check_scoring,
    f1_score,
    make_scorer,
    matthews_corrcoef,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from czb_core.tasks.classifiers import make_classifiers
from czb_core.tasks.results import MetricResult

N_FOLDS = 5
MIN_CLASS_SIZE = 10

METRIC_TYPES = {
    "accuracy": "mean_fold_accuracy",
    "f1": "mean_fold_f1",
    "precision": "mean_fold_precision",
    "recall": "mean_fold_recall",
    "auroc": "mean_fold_auroc",
    "mcc": "mean_fold_mcc",
}


def kept_classes(labels_n: pd.Series, min_class_size: int = MIN_CLASS_SIZE) -> pd.Series:
    """Cell counts of the classes label prediction keeps (>= min_class_size cells)."""
    counts = labels_n.value_counts()
    return counts[counts >= min_class_size]


def _scorers(n_classes: int) -> dict:
    average = "binary" if n_classes == 2 else "macro"
    return {
        "accuracy": make_scorer(accuracy_score),
        "f1": make_scorer(f1_score, average=average, zero_division=0),
        "precision": make_scorer(precision_score, average=average, zero_division=0),
        "recall": make_scorer(recall_score, average=average, zero_division=0),
        "auroc": make_scorer(roc_auc_score, average="macro", multi_class="ovr", response_method="predict_proba"),
        "mcc": make_scorer(matthews_corrcoef),
    }


def fold_scores(
    emb_nd: np.ndarray, labels_n: pd.Series, seed: int, n_folds: int = N_FOLDS, min_class_size: int = MIN_CLASS_SIZE
) -> pd.DataFrame:
    """One row per (classifier, fold) with every score; the table cz-benchmarks keeps as `results`.

    The same numbers as `cross_validate(pipeline, X, y, cv=StratifiedKFold(...), scoring=...)` per
    classifier, computed faster: the folds and classifiers are independent, so they run on every core
    at once (one BLAS/OpenMP thread each: two threads per fit on a busy 2-core machine made logistic
    regression up to 80x slower); and the fold's StandardScaler is fitted once for both pipelines
    that start with it (it is the same deterministic fit either way).
    """
    keep_n = labels_n.isin(kept_classes(labels_n, min_class_size).index).to_numpy()
    x_nd = emb_nd[keep_n]
    labels = pd.Categorical(labels_n[keep_n].astype(str))
    y_n = labels.codes
    scorer = check_scoring(scoring=_scorers(len(labels.categories)), raise_exc=False)
    folds = list(StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(x_nd, y_n))
    jobs = [("rf", fold) for fold in range(n_folds)] + [("scaled", fold) for fold in range(n_folds)]

    def run(job):
        kind, fold = job
        train_n, test_n = folds[fold]
        return job, _fit_and_score(kind, x_nd, y_n, train_n, test_n, scorer, seed)

    n_workers = min(len(jobs), joblib.cpu_count())
    with threadpool_limits(limits=1):
        done = dict(joblib.Parallel(n_jobs=n_workers, backend="threading")(joblib.delayed(run)(j) for j in jobs))
    scores = {(name, fold): s for (kind, fold), by_name in done.items() for name, s in by_name.items()}
    return pd.DataFrame(
        [
            {"classifier": name, "fold": fold, **scores[name, fold]}
            for name in make_classifiers(seed)
            for fold in range(n_folds)
        ]
    )


def _fit_and_score(kind: str, x_nd, y_n, train_n, test_n, scorer, seed: int) -> dict[str, dict[str, float]]:
    """Scores of one fold: the forest ("rf"), or both scaled pipelines ("scaled": lr and knn)."""
    if kind == "rf":
        forest = make_classifiers(seed, ("rf",))["rf"]
        return {"rf": _test_scores(scorer, forest.fit(x_nd[train_n], y_n[train_n]), x_nd[test_n], y_n[test_n])}
    pipelines = make_classifiers(seed, ("lr", "knn"))
    scaler = pipelines["lr"].named_steps["scaler"].fit(x_nd[train_n])
    train_nd, test_nd = scaler.transform(x_nd[train_n]), scaler.transform(x_nd[test_n])
    return {
        name: _test_scores(scorer, pipeline.steps[-1][1].fit(train_nd, y_n[train_n]), test_nd, y_n[test_n])
        for name, pipeline in pipelines.items()
    }


def _test_scores(scorer, estimator, x_test, y_test) -> dict[str, float]:
    """Every score of a fitted estimator on the test fold; a failing scorer gives NaN with a warning,
    as `cross_validate` does with its default error_score."""
    scores = scorer(estimator, x_test, y_test)
    for name, value in scores.items():
        if isinstance(value, str):
            warnings.warn(f"scoring {name} failed on a test fold; its score is NaN. Details:\n{value}", UserWarning)
            scores[name] = math.nan
    return {name: float(value) for name, value in scores.items()}


def label_prediction_metrics(folds_df: pd.DataFrame) -> list[MetricResult]:
    """Fold means over all classifiers, then per classifier, in cz-benchmarks' order."""
    names = sorted(folds_df["classifier"].unique())
    groups = [(f"MEAN({','.join(names)})", folds_df)]
    groups += [(name, folds_df[folds_df["classifier"] == name]) for name in folds_df["classifier"].unique()]
    return [
        MetricResult(metric_type, float(group[column].mean()), {"classifier": label})
        for label, group in groups
        for column, metric_type in METRIC_TYPES.items()
    ]
