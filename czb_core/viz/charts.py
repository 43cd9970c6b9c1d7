"""The small charts of the pages: QC histograms, confusion matrices, the tokenizer lab's bars and curves.

Built here, with the UMAP grids and the scoreboard bars (`plots`), so that every figure of the app is made
in `viz/` and a page only places it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go


def qc_histogram(qc: pd.DataFrame, column: str, title: str) -> go.Figure:
    """The distribution of one per-cell QC value (`qc`: one row per cell)."""
    return px.histogram(qc, x=column, nbins=60, title=title)


def confusion_heatmap(matrix, classes: Optional[Sequence[str]] = None, cells: str = "cells",
                      title: Optional[str] = None) -> go.Figure:
    """A confusion matrix, true classes down, predicted across, the count in each cell (`matrix`: a
    DataFrame labelled by class, or an array with `classes`)."""
    axes = {} if classes is None else {"x": list(classes), "y": list(classes)}
    return px.imshow(np.asarray(matrix) if classes is not None else matrix, text_auto=True,
                     color_continuous_scale="Blues", labels={"x": "predicted", "y": "true", "color": cells},
                     title=title, **axes)


def lab_metric_bars(long: pd.DataFrame) -> go.Figure:
    """Test accuracy and MCC per tokenizer: the mean over seeds with the standard deviation as error bars
    (`long`: columns tokenizer, metric, mean, std, seeds)."""
    return px.bar(long, x="tokenizer", y="mean", error_y="std", color="metric", barmode="group",
                  hover_data=["seeds"], labels={"mean": "mean over seeds (error bar: standard deviation)"},
                  title="Test accuracy and MCC per tokenizer")


def learning_curves(curves: pd.DataFrame, curve: str, label: str) -> go.Figure:
    """One line per tokenizer and seed of `curve` over the epochs."""
    return px.line(curves, x="epoch", y=curve, color="tokenizer", line_group="seed", markers=True,
                   hover_data=["seed"], labels={curve: label})
