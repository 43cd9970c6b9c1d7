"""Which cell types a classifier reads off an embedding: per-class accuracy and the confusion matrix.

Label prediction (`label_prediction.py`) reports means over folds and classes; a scientist then asks
which cell types are confused with which. This module re-creates the same cross-validated
predictions, with nothing random that the metrics did not already fix: the same kept classes
(>= `min_class_size` cells), the same `StratifiedKFold(n_folds, shuffle=True, random_state=seed)`
folds and the same seeded pipelines (`classifiers.py`). Each cell is predicted once, by the model of
the fold that held it out, so the pooled accuracy over all cells equals the mean fold accuracy when
the folds have equal sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from czb_core.errors import InputError
from czb_core.tasks.classifiers import make_classifiers
from czb_core.tasks.inputs import prepare_inputs
from czb_core.tasks.label_prediction import MIN_CLASS_SIZE, N_FOLDS, kept_classes
from czb_core.tasks.options import MetricOptions

CLASSIFIERS = ("lr", "knn", "rf")


@dataclass(frozen=True)
class ClassReport:
    """`per_class`: one row per class (cells, correct, accuracy); `confusion`: true x predicted counts."""

    classifier: str
    per_class: pd.DataFrame
    confusion: pd.DataFrame
    seed: int
    n_folds: int

    @property
    def accuracy(self) -> float:
        """Pooled over every predicted cell."""
        return float(self.per_class["correct"].sum() / self.per_class["cells"].sum())


def cross_validated_predictions(
    emb_nd: np.ndarray, labels_n: pd.Series, classifier: str, seed: int,
    n_folds: int = N_FOLDS, min_class_size: int = MIN_CLASS_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """(true_n, predicted_n) as label text for the cells of the kept classes, in their order."""
    if classifier not in CLASSIFIERS:
        raise InputError(f"unknown classifier {classifier!r}; choose from: {', '.join(CLASSIFIERS)}")
    keep_n = labels_n.isin(kept_classes(labels_n, min_class_size).index).to_numpy()
    if pd.Series(labels_n[keep_n]).nunique() < 2:
        raise InputError(f"label prediction needs 2+ classes with at least {min_class_size} cells each")
    x_nd = np.asarray(emb_nd)[keep_n]
    labels = pd.Categorical(pd.Series(labels_n[keep_n]).astype(str))
    y_n = labels.codes
    predicted_n = np.empty_like(y_n)
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(x_nd, y_n)
    with threadpool_limits(limits=1):  # as label prediction fits: one thread, the same numbers
        for train_n, test_n in folds:
            model = make_classifiers(seed, (classifier,))[classifier].fit(x_nd[train_n], y_n[train_n])
            predicted_n[test_n] = model.predict(x_nd[test_n])
    names = np.asarray(labels.categories, dtype=object)
    return names[y_n], names[predicted_n]


def class_report(
    emb_nd: np.ndarray, labels_n: pd.Series, classifier: str, seed: int,
    n_folds: int = N_FOLDS, min_class_size: int = MIN_CLASS_SIZE,
) -> ClassReport:
    """Per-class accuracy (the share of a class's cells predicted as that class) and the confusion matrix."""
    true_n, predicted_n = cross_validated_predictions(emb_nd, labels_n, classifier, seed, n_folds, min_class_size)
    classes = sorted(set(true_n))
    counts = confusion_matrix(true_n, predicted_n, labels=classes)
    confusion = pd.DataFrame(counts, index=pd.Index(classes, name="true"),
                             columns=pd.Index(classes, name="predicted"))
    cells = counts.sum(axis=1)
    per_class = pd.DataFrame({"cells": cells, "correct": np.diag(counts), "accuracy": np.diag(counts) / cells},
                             index=confusion.index)
    return ClassReport(classifier, per_class, confusion, seed, n_folds)


def class_report_for_options(emb_nd: np.ndarray, obs: pd.DataFrame, options: dict, classifier: str) -> ClassReport:
    """The report for the cells and seed a metrics document used: `options` is its resolved `options`,
    so the same subsample (above the cell cap) and the same folds are taken."""
    resolved = MetricOptions.from_dict(options)
    inputs = prepare_inputs(obs, **resolved.run_kwargs())
    return class_report(np.asarray(emb_nd)[inputs.rows_n], inputs.labels_n, classifier, resolved.seed)
