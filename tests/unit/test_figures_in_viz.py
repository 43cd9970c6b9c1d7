"""Every figure is built in czb_core/viz: no page imports plotly (a page places figures, it does not make them)."""

import ast
from pathlib import Path

import numpy as np
import pandas as pd

from czb_core.viz.charts import confusion_heatmap, lab_metric_bars, learning_curves, qc_histogram

ROOT = Path(__file__).resolve().parents[2]


def test_no_page_imports_plotly():
    offenders = []
    for path in [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {name}" for name in names if name.split(".")[0] == "plotly"]
    assert not offenders, offenders


def test_the_charts_show_what_they_are_given():
    qc = pd.DataFrame({"total_counts": [10, 20, 30], "n_genes": [1, 2, 3]})
    assert qc_histogram(qc, "n_genes", "Genes per cell").layout.title.text == "Genes per cell"
    heat = confusion_heatmap([[3, 1], [0, 4]], ["a", "b"], cells="test cells", title="t")
    assert list(heat.data[0].x) == ["a", "b"] and np.array_equal(heat.data[0].z, [[3, 1], [0, 4]])
    assert heat.layout.coloraxis.colorbar.title.text == "test cells"
    long = pd.DataFrame({"tokenizer": ["x", "x"], "metric": ["accuracy", "mcc"], "mean": [0.9, 0.8],
                         "std": [0.01, 0.02], "seeds": [3, 3]})
    assert len(lab_metric_bars(long).data) == 2  # one bar trace per metric
    curves = pd.DataFrame({"epoch": [1, 2, 1, 2], "loss": [1.0, 0.5, 1.1, 0.6], "tokenizer": ["x"] * 4,
                           "seed": [0, 0, 1, 1]})
    assert learning_curves(curves, "loss", "training loss").layout.yaxis.title.text == "training loss"
