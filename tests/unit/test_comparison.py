from czb_core.tasks.comparison import BASELINE_COLUMN, compare_runs


def document(model_values, baseline_values):
    return {"table": [{"task": "clustering", "metric": m, "model": v, "baseline": b}
                      for (m, v), b in zip(model_values.items(), baseline_values)]}


def test_one_baseline_column_and_one_column_per_run():
    table = compare_runs({
        "pca / default": document({"ARI": 0.4, "NMI": 0.5}, [0.4, 0.5]),
        "scvi / fit": document({"ARI": 0.6, "NMI": 0.7}, [0.4, 0.5]),
        "failed run": {"error": "no labels"},
    })
    assert list(table.columns) == [BASELINE_COLUMN, "pca / default", "scvi / fit"]
    assert table.loc[("clustering", "ARI")].tolist() == [0.4, 0.4, 0.6]
    assert compare_runs({"x": {"error": "nothing"}}).empty
