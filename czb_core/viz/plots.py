"""UMAP figures for the Results page: several runs side by side, one colour key, WebGL, bounded size.

Browsers slow down past ~100k points per trace and limit WebGL contexts per page, so all runs share
one figure (one context), at most `max_points` cells are drawn (a seeded subsample stratified by the
colour), and coordinates go out as float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from czb_core.viz.umap import stratified_subsample

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd")
MISSING = "n/a"


@dataclass
class Panel:
    title: str
    umap_n2: np.ndarray
    values_n: pd.Series  # the colour of each cell in this run


def is_categorical(values_n: pd.Series, max_numeric_levels: int = 30) -> bool:
    return not pd.api.types.is_numeric_dtype(values_n) or values_n.nunique() <= max_numeric_levels


def _labels(values_n: pd.Series) -> np.ndarray:
    """Category names as text, missing values as MISSING (works for categorical and object columns)."""
    return values_n.astype(object).where(values_n.notna(), MISSING).astype(str).to_numpy()


def umap_grid(panels: list[Panel], cell_ids_n: np.ndarray, colour_by: str, max_points: int = 200_000,
              seed: int = 0, n_cols: int = 2) -> tuple[go.Figure, int]:
    """(figure, points drawn per panel). Categories keep one colour across panels (one legend)."""
    first = panels[0].values_n
    categorical = all(is_categorical(p.values_n) for p in panels)
    strata = first.astype(str).to_numpy() if categorical else np.zeros(len(first), dtype=int)
    idx = stratified_subsample(strata, max_points=max_points, seed=seed)
    categories = sorted({v for p in panels for v in _labels(p.values_n.iloc[idx])}) if categorical else []
    colour_of = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(categories)}
    n_cols = min(len(panels), n_cols)
    n_rows = -(-len(panels) // n_cols)
    figure = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=[p.title for p in panels],
                           horizontal_spacing=0.04, vertical_spacing=0.08)
    cell_ids = np.asarray(cell_ids_n)[idx]
    for k, panel in enumerate(panels):
        row, col = divmod(k, n_cols)
        xy = panel.umap_n2[idx].astype(np.float32)
        shown = panel.values_n.iloc[idx]
        if categorical:
            labels = _labels(shown)
            for cat in categories:
                mask = labels == cat
                if not mask.any():
                    continue
                figure.add_trace(go.Scattergl(
                    x=xy[mask, 0], y=xy[mask, 1], mode="markers", name=cat, legendgroup=cat,
                    showlegend=k == 0, marker=dict(size=3, color=colour_of[cat]), customdata=cell_ids[mask],
                    hovertemplate=f"%{{customdata}}<br>{colour_by}: {cat}<extra></extra>",
                ), row=row + 1, col=col + 1)
        else:
            figure.add_trace(go.Scattergl(
                x=xy[:, 0], y=xy[:, 1], mode="markers", showlegend=False,
                marker=dict(size=3, color=shown.to_numpy(np.float32), coloraxis="coloraxis"),
                customdata=np.stack([cell_ids, shown.to_numpy().astype(str)], axis=1),
                hovertemplate=f"%{{customdata[0]}}<br>{colour_by}: %{{customdata[1]}}<extra></extra>",
            ), row=row + 1, col=col + 1)
    figure.update_xaxes(showticklabels=False)
    figure.update_yaxes(showticklabels=False)
    figure.update_layout(height=450 * n_rows, legend=dict(itemsizing="constant", title=colour_by),
                         coloraxis=dict(colorscale="Viridis", colorbar=dict(title=colour_by)), margin=dict(t=40))
    return figure, len(idx)
