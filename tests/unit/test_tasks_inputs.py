"""Input checks, subsampling and reproducibility of `run_tasks`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from czb_core.errors import InputError
from czb_core.tasks import run_tasks, stratified_subsample


def dataset(n_per_class=60, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(["t0", "t1", "t2"], n_per_class)
    emb_nd = rng.normal(scale=6, size=(3, 8))[pd.Categorical(labels).codes] + rng.normal(size=(len(labels), 8))
    obs = pd.DataFrame({"cell_type": labels, "batch": rng.choice(["b1", "b2"], len(labels))})
    return emb_nd, obs


def test_missing_column_names_it_and_lists_available():
    emb_nd, obs = dataset()
    with pytest.raises(ValueError,
                       match=r"label column 'celltype' is not in obs; available columns: 'cell_type', 'batch'"):
        run_tasks(emb_nd, obs, "celltype")
    with pytest.raises(InputError, match="batch column 'donor'"):
        run_tasks(emb_nd, obs, "cell_type", batch_key="donor")


def test_single_class_is_an_error():
    emb_nd, obs = dataset()
    obs["cell_type"] = "T cell"
    with pytest.raises(ValueError, match="single class \\('T cell'\\)"):
        run_tasks(emb_nd, obs, "cell_type", tasks=["embedding"])


def test_nan_labels_are_dropped_with_a_warning_and_all_nan_is_an_error():
    emb_nd, obs = dataset()
    obs.loc[:9, "cell_type"] = np.nan
    (result,) = run_tasks(emb_nd, obs, "cell_type", tasks=["embedding"])
    assert result.n_used == len(obs) - 10 and result.n_total == len(obs)
    assert any("10 cells without a 'cell_type' label" in w for w in result.extra["warnings"])
    obs["cell_type"] = np.nan
    with pytest.raises(ValueError, match="every cell's label is missing"):
        run_tasks(emb_nd, obs, "cell_type")


def test_embedding_shape_and_values_are_checked():
    emb_nd, obs = dataset()
    with pytest.raises(ValueError, match="embedding has 179 rows but obs has 180 cells"):
        run_tasks(emb_nd[:-1], obs, "cell_type")
    emb_nd[3, 2] = np.nan
    with pytest.raises(ValueError, match="1 rows with NaN"):
        run_tasks(emb_nd, obs, "cell_type")


def test_task_selection_errors():
    emb_nd, obs = dataset()
    with pytest.raises(ValueError, match="unknown task"):
        run_tasks(emb_nd, obs, "cell_type", tasks=["clustring"])
    with pytest.raises(ValueError, match="needs a batch column"):
        run_tasks(emb_nd, obs, "cell_type", tasks=["batch_integration"])


def test_default_tasks_follow_given_columns():
    emb_nd, obs = dataset(n_per_class=30)
    names = [r.task_name for r in run_tasks(emb_nd, obs, "cell_type", batch_key="batch")]
    assert names == ["clustering", "embedding", "label_prediction", "batch_integration"]


def test_same_seed_gives_identical_numbers():
    emb_nd, obs = dataset(n_per_class=40)
    runs = [run_tasks(emb_nd, obs, "cell_type", batch_key="batch", seed=7, max_cells=100) for _ in range(2)]
    values = [[(m.label, m.value) for r in run for m in r.metrics] for run in runs]
    assert values[0] == values[1]


def test_subsample_keeps_proportions_and_small_classes():
    labels_n = pd.Series(["big"] * 6000 + ["mid"] * 3000 + ["small"] * 988 + ["rare"] * 12)
    rows_n = stratified_subsample(labels_n, max_cells=2500, seed=0, min_class_size=10)
    counts = labels_n.iloc[rows_n].value_counts()
    assert counts["big"] == 1500 and counts["mid"] == 750 and counts["small"] == 247
    assert counts["rare"] == 10  # 12 * 0.25 = 3 would be dropped by label prediction; kept at 10
    assert len(np.unique(rows_n)) == len(rows_n)
    again = stratified_subsample(labels_n, max_cells=2500, seed=0, min_class_size=10)
    np.testing.assert_array_equal(rows_n, again)
    assert len(stratified_subsample(labels_n, max_cells=20000, seed=0)) == len(labels_n)


def test_results_report_subsample_from_settings(monkeypatch):
    monkeypatch.setenv("CZB_METRICS_MAX_CELLS", "90")
    emb_nd, obs = dataset()
    (result,) = run_tasks(emb_nd, obs, "cell_type", tasks=["embedding"])
    assert (result.n_used, result.n_total) == (90, 180)
    assert result.subsampled
    assert any("subsample of 90 of 180 cells" in w for w in result.extra["warnings"])
