"""The scoreboard's rows and deltas, readable metric names, the baseline counted once, per-class accuracy."""

import math

import numpy as np
import pandas as pd
import pytest

from czb_core.errors import InputError
from czb_core.tasks.comparison import BASELINE_COLUMN, compare_runs
from czb_core.tasks.label_prediction import fold_scores
from czb_core.tasks.per_class import class_report
from czb_core.tasks.scoreboard import (
    BASELINE_ROW,
    RunEntry,
    describe_metric,
    headline_long,
    metric_table,
    run_label,
    scoreboard,
)

MEAN = "MEAN(knn,lr,rf)"


def document(model: dict, baseline: dict) -> dict:
    """A metrics document's table: (task, metric label) -> value, for the model and the baseline."""
    return {"table": [{"task": task, "metric": label, "model": value, "baseline": baseline[task, label],
                       "delta": value - baseline[task, label], "better": ""}
                      for (task, label), value in model.items()]}


def values(ari, silhouette, accuracy, mcc):
    return {("clustering", "adjusted_rand_index"): ari, ("clustering", "normalized_mutual_info"): 0.5,
            ("embedding", "silhouette_score"): silhouette,
            ("label_prediction", f"mean_fold_accuracy (classifier={MEAN})"): accuracy,
            ("label_prediction", "mean_fold_accuracy (classifier=lr)"): 0.99,
            ("label_prediction", f"mean_fold_mcc (classifier={MEAN})"): mcc}


def record(model="pca", variant="default", dims=50, gpu=None):
    return {"model": model, "variant": variant, "embedding_shape": [400, dims], "wall_s": 3.5, "peak_gpu_mb": gpu}


BASE = values(0.6, 0.63, 0.94, 0.92)
SCVI = values(0.7, 0.60, 0.97, 0.95)


def test_one_row_per_run_with_deltas_and_the_default_pca_run_as_the_baseline():
    board = scoreboard([RunEntry("pca / default", record(), document(BASE, BASE), is_baseline=True),
                        RunEntry("scvi / fit", record("scvi", "fit", 10, 812.5), document(SCVI, BASE))])
    assert list(board.index) == ["pca / default", "scvi / fit"]
    scvi = board.loc["scvi / fit"]
    assert scvi["Δ ARI"] == pytest.approx(0.1) and scvi["Δ Silhouette"] == pytest.approx(-0.03)
    assert scvi["Accuracy (mean kNN / LR / RF)"] == 0.97  # the mean over classifiers, not lr's 0.99
    assert scvi["Embedding size"] == 10 and scvi["GPU memory (MB)"] == 812.5 and scvi["Wall time (s)"] == 3.5
    assert board.loc["pca / default", "Δ MCC (mean kNN / LR / RF)"] == 0
    assert math.isnan(scvi["Batch entropy"]) and math.isnan(board.loc["pca / default", "GPU memory (MB)"])


def test_the_baseline_gets_its_own_row_only_when_no_run_is_it():
    board = scoreboard([RunEntry("scvi / fit", record("scvi", "fit", 10), document(SCVI, BASE)),
                        RunEntry("scgpt / human", record("scgpt", "human", 512), None)])
    assert list(board.index) == [BASELINE_ROW, "scvi / fit", "scgpt / human"]
    assert board.loc[BASELINE_ROW, "ARI"] == 0.6 and board.loc[BASELINE_ROW, "Δ ARI"] == 0
    assert board.loc["scgpt / human", "Embedding size"] == 512 and math.isnan(board.loc["scgpt / human", "ARI"])
    long = headline_long(board)
    assert set(long["Metric"]) == {"ARI", "Silhouette", "Accuracy (mean kNN / LR / RF)", "MCC (mean kNN / LR / RF)"}
    assert len(long) == 8  # two runs with metrics x four metrics; the unscored run adds no bar


def test_readable_names_and_meanings():
    assert describe_metric(f"mean_fold_accuracy (classifier={MEAN})")[0] == "Accuracy, mean of kNN / LR / RF"
    assert describe_metric("mean_fold_mcc (classifier=lr)")[0] == "MCC, logistic regression"
    name, meaning = describe_metric(f"accuracy (classifier={MEAN}, test=liver, train=lung)")
    assert name == "Transfer accuracy, mean of kNN / LR / RF (lung → liver)" and "train split" in meaning
    table = metric_table(document(SCVI, BASE))
    assert list(table.columns) == ["Task", "Metric", "Meaning", "Model", BASELINE_ROW, "Δ", "Better", "Key"]
    assert table["Meaning"].str.len().gt(20).all() and table["Task"].iloc[0] == "Clustering"


def test_run_labels_tell_apart_runs_of_one_model():
    assert run_label("pca", "default", {}, "3f2a9c1e0b7d") == "pca / default · 3f2a9c"
    assert run_label("geneformer", "gf-6L-30M-i2048", {"feature_deletion": ["TP53", "MYC"]}, "abcdef") == \
        "geneformer / gf-6L-30M-i2048 (feature_deletion=TP53,MYC) · abcdef"


def test_comparison_lists_the_default_pca_run_as_the_baseline_column_only():
    docs = {"pca / default": document(BASE, BASE), "scvi / fit": document(SCVI, BASE)}
    table = compare_runs(docs, baseline_runs={"pca / default"})
    assert list(table.columns) == [BASELINE_COLUMN, "scvi / fit"]
    assert table.loc[("clustering", "adjusted_rand_index")].tolist() == [0.6, 0.7]
    assert list(compare_runs(docs).columns) == [BASELINE_COLUMN, "pca / default", "scvi / fit"]


@pytest.fixture
def noisy_embedding():
    """200 cells of 4 equal classes (folds of equal size), overlapping so classifiers make mistakes, and
    5 cells of a class too small to keep."""
    rng = np.random.default_rng(3)
    labels = np.repeat(["B", "NK", "T", "mono"], 50).tolist() + ["rare"] * 5
    centres = {"B": 0.0, "NK": 1.0, "T": 1.5, "mono": 4.0, "rare": 2.0}
    emb_nd = np.stack([rng.normal(centres[label], 0.8, size=6) for label in labels])
    return emb_nd, pd.Series(labels)


@pytest.mark.parametrize("classifier", ["knn", "lr", "rf"])
def test_per_class_report_pools_the_same_predictions_as_label_prediction(noisy_embedding, classifier):
    emb_nd, labels_n = noisy_embedding
    report = class_report(emb_nd, labels_n, classifier, seed=7)
    folds = fold_scores(emb_nd, labels_n, seed=7)
    assert report.accuracy == pytest.approx(folds.loc[folds["classifier"] == classifier, "accuracy"].mean())
    assert list(report.confusion.index) == ["B", "NK", "T", "mono"]  # "rare" (5 cells) dropped as the metric does
    assert report.per_class["cells"].tolist() == [50, 50, 50, 50]
    np.testing.assert_array_equal(report.per_class["correct"], np.diag(report.confusion))
    assert report.per_class.loc["mono", "accuracy"] > report.per_class.loc["NK", "accuracy"]  # NK overlaps T


def test_per_class_report_depends_on_the_recorded_seed(noisy_embedding):
    emb_nd, labels_n = noisy_embedding
    a, b = (class_report(emb_nd, labels_n, "knn", seed=s).confusion for s in (7, 8))
    assert not a.equals(b)
    with pytest.raises(InputError, match="unknown classifier 'svm'"):
        class_report(emb_nd, labels_n, "svm", seed=7)
