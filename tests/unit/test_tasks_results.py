"""Results JSON in cz-benchmarks' shape, the model-vs-baseline table, and column role guesses."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from czb_core.tasks import (
    MetricResult,
    TaskResult,
    results_table,
    run_with_baseline,
    suggest_columns,
    to_czbenchmarks_json,
)


def result(task, values, n_used=100, n_total=100, model_type="SCVI"):
    return TaskResult(
        task_name=task,
        task_name_display=task.title(),
        metrics=[MetricResult(name, value, params) for name, value, params in values],
        n_used=n_used,
        n_total=n_total,
        model={"type": model_type, "variant": "homo_sapiens", "name_display": "scVI"},
        dataset={"name": "pbmc.h5ad", "organism": "homo_sapiens"},
        runtime_metrics={"wall_s": 1.5, "peak_rss_mb": 300.0, "device": "cpu"},
    )


def test_czbenchmarks_json_shape():
    results = [
        result("clustering", [("adjusted_rand_index", 0.5, {})], n_used=50, n_total=200),
        result("label_prediction", [("mean_fold_f1", math.nan, {"classifier": "lr"})]),
    ]
    doc = json.loads(json.dumps(to_czbenchmarks_json(results, {"label_key": "cell_type"})))
    assert set(doc) == {"czbenchmarks_version", "args", "task_results", "timestamp"}
    assert doc["czbenchmarks_version"].startswith("czb-studio ")
    assert doc["args"] == {"label_key": "cell_type"}
    first = doc["task_results"][0]
    assert set(first) == {"task_name", "task_name_display", "model", "datasets", "metrics", "runtime_metrics"}
    assert first["model"] == {
        "type": "SCVI",
        "args": {"model_variant": "homo_sapiens"},
        "name_display": "scVI",
        "variant_display": "homo_sapiens",
    }
    assert first["datasets"] == [
        {"name": "pbmc.h5ad", "organism": "homo_sapiens", "name_display": "pbmc.h5ad",
         "subset_display": "50 of 200 cells"}
    ]
    assert first["metrics"] == [{"metric_type": "adjusted_rand_index", "value": 0.5, "params": {}}]
    assert first["runtime_metrics"] == {"wall_s": 1.5, "peak_rss_mb": 300.0, "device": "cpu"}
    assert doc["task_results"][1]["metrics"][0]["value"] is None  # NaN is not JSON
    assert doc["task_results"][1]["datasets"][0]["subset_display"] == ""


def test_results_table_delta_and_better():
    model = [result("embedding", [("silhouette_score", 0.7, {})]),
             result("label_prediction", [("mean_fold_f1", 0.6, {"classifier": "lr"}),
                                         ("mean_fold_f1", 0.8, {"classifier": "rf"})])]
    base = [result("embedding", [("silhouette_score", 0.5, {})], model_type="BASELINE"),
            result("label_prediction", [("mean_fold_f1", 0.9, {"classifier": "lr"}),
                                        ("mean_fold_f1", 0.8, {"classifier": "rf"})], model_type="BASELINE")]
    table = results_table(model, base)
    assert list(table.columns) == ["task", "metric", "model", "baseline", "delta", "better"]
    rows = table.set_index("metric")
    assert rows.loc["silhouette_score", "delta"] == 0.7 - 0.5
    assert rows.loc["silhouette_score", "better"] == "model"
    assert rows.loc["mean_fold_f1 (classifier=lr)", "better"] == "baseline"
    assert rows.loc["mean_fold_f1 (classifier=rf)", "better"] == "tie"


def test_run_with_baseline_scores_both_on_the_same_cells():
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], 50)
    good_nd = rng.normal(scale=8, size=(3, 6))[pd.Categorical(labels).codes] + rng.normal(size=(150, 6))
    noise_nd = rng.normal(size=(150, 6))
    obs = pd.DataFrame({"cell_type": labels})
    model, base, table = run_with_baseline(good_nd, noise_nd, obs, "cell_type", tasks=["embedding", "label_prediction"],
                                           max_cells=120)
    assert [r.n_used for r in model] == [r.n_used for r in base]
    assert base[0].model["type"] == "BASELINE"
    assert (table["better"] == "model").all()


def test_column_roles_on_made_up_obs():
    n = 300
    rng = np.random.default_rng(0)
    obs = pd.DataFrame(
        {
            "barcode": [f"AAAC{i:05d}" for i in range(n)],
            "n_genes": rng.normal(1500, 200, n),
            "total_counts": rng.integers(1000, 5000, n),
            "donor_id": rng.choice(["d1", "d2", "d3"], n),
            "cell_type_ontology_term_id": ["CL:0000236"] * 3 + ["CL:0000084"] * 150 + ["CL:0000623"] * 147,
            "Cell Type": pd.Categorical(
                ["B cell"] * 3 + ["T cell"] * 150 + ["NK cell"] * 147,
                categories=["B cell", "T cell", "NK cell", "unused"],
            ),
            "leiden": rng.integers(0, 8, n),
            "cell_label": [f"c{i}" for i in range(n)],
            "assay": ["10x 3' v3"] * n,
        }
    )
    roles = suggest_columns(obs)
    assert roles.label == "Cell Type"
    # an exact name ties with cell_type_ontology_term_id; the readable name is preferred
    assert [s.column for s in roles.labels] == ["Cell Type", "cell_type_ontology_term_id", "leiden"]
    assert roles.batch == "donor_id"
    assert roles.labels[0].n_values == 3
    text = " | ".join(roles.warnings)
    assert "label column 'Cell Type': 1 classes have fewer than 10 cells" in text and "B cell (3)" in text
    assert "'cell_label' has one value per cell" in text
    assert "'assay' holds a single value" in text
    assert "barcode" not in text  # unnamed id columns are skipped silently
