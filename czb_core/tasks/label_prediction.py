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

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    make_scorer,
    matthews_corrcoef,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import StratifiedKFold, cross_validate

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
    """One row per (classifier, fold) with every score; the table cz-benchmarks keeps as `results`."""
    keep_n = labels_n.isin(kept_classes(labels_n, min_class_size).index).to_numpy()
    labels = pd.Categorical(labels_n[keep_n].astype(str))
    scorers = _scorers(len(labels.categories))
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    rows = []
    for name, classifier in make_classifiers(seed).items():
        scores = cross_validate(classifier, emb_nd[keep_n], labels.codes, cv=folds, scoring=scorers)
        for fold in range(n_folds):
            rows.append({"classifier": name, "fold": fold, **{m: scores[f"test_{m}"][fold] for m in scorers}})
    return pd.DataFrame(rows)


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
