"""Cross-split label transfer: train on one group of cells, predict another (Heimdall's benchmark).

Heimdall's tokenizer benchmark trains on one tissue and tests on another and reports accuracy,
Matthews correlation and the confusion matrix. Here: pick a split column and two of its values;
logistic regression and kNN (the same pipelines as label prediction) are fitted on the train cells'
labels and predict the test cells. Reported per classifier and as their mean: accuracy, macro F1
(over the classes in the test truth or the predictions, sklearn's default) and MCC.

With more than `STREAMED_LR_MIN_CELLS` training cells (an atlas), the logistic regression is the
minibatch L1-prior one (`czb_core.streaming.logistic`), for the model and the baseline alike, since
sklearn's full-batch solver would hold the whole problem at once; the result says so.

A test label never seen in training cannot be predicted: its cells count as errors, and the result
lists those labels with their cell counts. The confusion matrix has true labels as rows and
predicted labels as columns over the union of train classes and test labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, matthews_corrcoef
from threadpoolctl import threadpool_limits

from czb_core.tasks.classifiers import make_classifiers
from czb_core.tasks.results import MetricResult

CLASSIFIERS = ("lr", "knn")
STREAMED_LR_MIN_CELLS = 1_000_000


@dataclass(frozen=True)
class Transfer:
    """Per-classifier confusion matrices and the test labels absent from training."""

    metrics: list[MetricResult]
    confusion: dict[str, pd.DataFrame]
    unseen_labels: dict[str, int]


def confusion_frame(true_n: np.ndarray, pred_n: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Counts with true labels as rows and predictions as columns, both labelled by class."""
    counts = confusion_matrix(true_n, pred_n, labels=classes)
    return pd.DataFrame(
        counts, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted")
    )


def cross_split_transfer(
    emb_nd: np.ndarray, labels_n: pd.Series, split_n: pd.Series, train_value, test_value, seed: int
) -> Transfer:
    """Fit on cells where split == train_value, score on cells where split == test_value."""
    labels = labels_n.astype(str).to_numpy()
    train_n = (split_n == train_value).to_numpy()
    test_n = (split_n == test_value).to_numpy()
    train_classes = set(labels[train_n])
    true_n = labels[test_n]
    classes = sorted(train_classes | set(true_n))
    unseen = pd.Series(true_n[~np.isin(true_n, list(train_classes))]).value_counts()
    params = {"train": str(train_value), "test": str(test_value)}
    rows, confusion = {}, {}
    classifiers = make_classifiers(seed, CLASSIFIERS)
    if train_n.sum() > STREAMED_LR_MIN_CELLS:
        from czb_core.streaming.logistic import StreamedLogisticClassifier

        classifiers["lr"] = StreamedLogisticClassifier(seed)
    for name, classifier in classifiers.items():
        with threadpool_limits(limits=1):  # 2 BLAS/OpenMP threads on a busy machine slow these fits 10-80x
            pred_n = classifier.fit(emb_nd[train_n], labels[train_n]).predict(emb_nd[test_n])
        rows[name] = {
            "accuracy": accuracy_score(true_n, pred_n),
            "f1": f1_score(true_n, pred_n, average="macro", zero_division=0),
            "mcc": matthews_corrcoef(true_n, pred_n),
        }
        confusion[name] = confusion_frame(true_n, pred_n, classes)
    scores = pd.DataFrame(rows).T
    mean_label = f"MEAN({','.join(sorted(rows))})"
    metrics = [MetricResult(m, float(scores[m].mean()), {**params, "classifier": mean_label}) for m in scores]
    solver = {"solver": "minibatch L1-prior"} if train_n.sum() > STREAMED_LR_MIN_CELLS else {}
    metrics += [
        MetricResult(m, float(scores.loc[name, m]), {**params, "classifier": name, **(solver if name == "lr" else {})})
        for name in rows
        for m in scores
    ]
    return Transfer(metrics=metrics, confusion=confusion, unseen_labels={str(k): int(v) for k, v in unseen.items()})
