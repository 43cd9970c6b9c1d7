"""Figures for the Results page: UMAPs of several runs side by side, their image export, a lasso
selection's make-up, and the scoreboard's bar chart.

Browsers slow down past ~100k points per trace and limit WebGL contexts per page, so all runs share
one figure (one context), at most `max_points` cells are drawn (a seeded subsample stratified by the
colour), and coordinates go out as float32. The interactive figure (plotly) and the image for a paper
(matplotlib: PNG, or SVG with the points rasterised so the file stays small) draw the same points in
the same colours with the same layout rules: a title per panel, equal axis scales (a UMAP's distances
mean the same in x and y), no grid, and one legend or colour bar at the right.
"""

from __future__ import annotations

import colorsys
import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from czb_core.errors import InputError
from czb_core.viz.umap import stratified_subsample

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd")
MISSING = "n/a"
MISSING_COLOUR = "#d0d0d0"
CATEGORICAL, CONTINUOUS, AUTO = "categorical", "continuous", "auto"
COLORSCALE = "Viridis"


@dataclass
class Panel:
    title: str
    umap_n2: np.ndarray
    values_n: pd.Series  # the colour of each cell in this run


@dataclass
class PlotPoints:
    """What every renderer draws: the subsample (`idx_m`, positions into the cells), its cell ids, the
    colouring kind, and for categories their order and colours."""

    idx_m: np.ndarray
    cell_ids_m: np.ndarray
    kind: str
    categories: list[str]
    colour_of: dict[str, str]


def panel_title(model: str, variant: str, n_cells: int, detail: str = "") -> str:
    """`scvi / fit (n_latent=20) · 12,000 cells`."""
    return f"{model} / {variant}" + (f" ({detail})" if detail else "") + f" · {n_cells:,} cells"


def is_categorical(values_n: pd.Series, max_numeric_levels: int = 30) -> bool:
    return not pd.api.types.is_numeric_dtype(values_n) or values_n.nunique() <= max_numeric_levels


def colour_kind(panels: Sequence[Panel], colour_by: str, requested: str = AUTO) -> str:
    """The colouring the panels get: `requested`, or (auto) categories unless every panel's values are
    numbers with more than 30 levels. Continuous colours of text are an error that says so."""
    if requested == CATEGORICAL:
        return CATEGORICAL
    numeric = all(pd.api.types.is_numeric_dtype(p.values_n) and not isinstance(p.values_n.dtype, pd.CategoricalDtype)
                  for p in panels)
    if requested == CONTINUOUS:
        if not numeric:
            raise InputError(f"'{colour_by}' holds text or categories, so it cannot be a continuous colour scale; "
                             "colour it by category")
        return CONTINUOUS
    if requested != AUTO:
        raise InputError(f"colouring must be {AUTO}, {CATEGORICAL} or {CONTINUOUS}, got {requested!r}")
    return CATEGORICAL if not numeric or any(is_categorical(p.values_n) for p in panels) else CONTINUOUS


def category_colours(categories: Sequence[str]) -> dict[str, str]:
    """A colour per category; more categories than the palette get evenly spaced hues (never a repeat).
    Missing values are light grey, behind every category."""
    named = [c for c in categories if c != MISSING]
    if len(named) <= len(PALETTE):
        colours = list(PALETTE)
    else:
        colours = ["#%02x%02x%02x" % tuple(int(255 * v) for v in colorsys.hls_to_rgb(i / len(named), 0.45, 0.65))
                   for i in range(len(named))]
    colour_of = {c: colours[i] for i, c in enumerate(named)}
    if MISSING in categories:
        colour_of[MISSING] = MISSING_COLOUR
    return colour_of


def _labels(values_n: pd.Series) -> np.ndarray:
    """Category names as text, missing values as MISSING (works for categorical and object columns)."""
    return values_n.astype(object).where(values_n.notna(), MISSING).astype(str).to_numpy()


def plot_points(panels: Sequence[Panel], cell_ids_n, colour_by: str, max_points: int = 200_000, seed: int = 0,
                kind: str = AUTO) -> PlotPoints:
    """The cells to draw (a subsample stratified by the first panel's colour) and their colours."""
    kind = colour_kind(panels, colour_by, kind)
    first = panels[0].values_n
    strata = _labels(first) if kind == CATEGORICAL else np.zeros(len(first), dtype=int)
    idx_m = stratified_subsample(strata, max_points=max_points, seed=seed)
    categories: list[str] = []
    if kind == CATEGORICAL:
        present = {v for p in panels for v in _labels(p.values_n.iloc[idx_m])}
        categories = sorted(present - {MISSING}) + ([MISSING] if MISSING in present else [])
    return PlotPoints(idx_m, np.asarray(cell_ids_n).astype(str)[idx_m], kind, categories,
                      category_colours(categories))


def continuous_range(panels: Sequence[Panel], points: PlotPoints) -> tuple[float, float]:
    """(min, max) of the drawn finite values over every panel: one scale for all; (0, 1) for categories
    or when no value is finite."""
    if points.kind != CONTINUOUS:
        return 0.0, 1.0
    values = np.concatenate([p.values_n.iloc[points.idx_m].to_numpy(float) for p in panels])
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)


def _grid(n_panels: int, n_cols: int) -> tuple[int, int]:
    n_cols = max(1, min(n_panels, n_cols))
    return -(-n_panels // n_cols), n_cols


def umap_grid(panels: list[Panel], cell_ids_n: np.ndarray, colour_by: str, max_points: int = 200_000,
              seed: int = 0, n_cols: int = 2, kind: str = AUTO) -> tuple[go.Figure, int]:
    """(figure, points drawn per panel). Categories keep one colour across panels (one legend); a
    continuous colour shares one scale. Each point carries its cell id (`customdata`) for selections."""
    points = plot_points(panels, cell_ids_n, colour_by, max_points, seed, kind)
    n_rows, n_cols = _grid(len(panels), n_cols)
    figure = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=[p.title for p in panels],
                           horizontal_spacing=0.06, vertical_spacing=0.1)
    for k, panel in enumerate(panels):
        row, col = divmod(k, n_cols)
        xy = panel.umap_n2[points.idx_m].astype(np.float32)
        shown = panel.values_n.iloc[points.idx_m]
        traces = (_category_traces(points, xy, shown, colour_by, k == 0) if points.kind == CATEGORICAL
                  else _continuous_traces(points, xy, shown, colour_by, k == 0))
        for trace in traces:
            figure.add_trace(trace, row=row + 1, col=col + 1)
        suffix = "" if k == 0 else str(k + 1)
        figure.update_yaxes(scaleanchor=f"x{suffix}", scaleratio=1, row=row + 1, col=col + 1)
    axis = dict(showgrid=False, zeroline=False, showticklabels=False, ticks="", showline=True, linecolor="#444",
                title_font=dict(size=11))
    figure.update_xaxes(title_text="UMAP 1", **axis)
    figure.update_yaxes(title_text="UMAP 2", **axis)
    cmin, cmax = continuous_range(panels, points)
    figure.update_layout(
        height=450 * n_rows, plot_bgcolor="white", dragmode="lasso", margin=dict(t=50, r=10),
        legend=dict(itemsizing="constant", title=colour_by, x=1.02, y=1, xanchor="left", yanchor="top"),
        coloraxis=dict(colorscale=COLORSCALE, cmin=cmin, cmax=cmax,
                       colorbar=dict(title=colour_by, x=1.02, xanchor="left", y=1, yanchor="top", len=0.9)),
    )
    return figure, len(points.idx_m)


def _category_traces(points: PlotPoints, xy, shown: pd.Series, colour_by: str, legend: bool):
    labels = _labels(shown)
    for cat in points.categories:
        mask = labels == cat
        if mask.any():
            yield go.Scattergl(
                x=xy[mask, 0], y=xy[mask, 1], mode="markers", name=cat, legendgroup=cat, showlegend=legend,
                marker=dict(size=3, color=points.colour_of[cat]), customdata=points.cell_ids_m[mask],
                hovertemplate=f"%{{customdata}}<br>{colour_by}: {cat}<extra></extra>",
            )


def _continuous_traces(points: PlotPoints, xy, shown: pd.Series, colour_by: str, legend: bool):
    values = shown.to_numpy(np.float32)
    missing = ~np.isfinite(values)
    if missing.any():
        yield go.Scattergl(
            x=xy[missing, 0], y=xy[missing, 1], mode="markers", name=MISSING, legendgroup=MISSING,
            showlegend=legend, marker=dict(size=3, color=MISSING_COLOUR),
            customdata=np.stack([points.cell_ids_m[missing], np.full(missing.sum(), MISSING)], axis=1),
            hovertemplate=f"%{{customdata[0]}}<br>{colour_by}: n/a<extra></extra>",
        )
    keep = ~missing
    yield go.Scattergl(
        x=xy[keep, 0], y=xy[keep, 1], mode="markers", showlegend=False,
        marker=dict(size=3, color=values[keep], coloraxis="coloraxis"),
        customdata=np.stack([points.cell_ids_m[keep], values[keep].astype(str)], axis=1),
        hovertemplate=f"%{{customdata[0]}}<br>{colour_by}: %{{customdata[1]}}<extra></extra>",
    )


def umap_image(panels: list[Panel], cell_ids_n: np.ndarray, colour_by: str, fmt: str = "png",
               max_points: int = 200_000, seed: int = 0, n_cols: int = 2, kind: str = AUTO,
               dpi: int = 300) -> bytes:
    """The same panels as `umap_grid` as a PNG or SVG file (matplotlib; points rasterised in SVG)."""
    if fmt not in ("png", "svg"):
        raise InputError(f"figure format must be png or svg, got {fmt!r}")
    from matplotlib.figure import Figure  # the object API: no pyplot state, safe off the main thread
    from matplotlib.lines import Line2D

    points = plot_points(panels, cell_ids_n, colour_by, max_points, seed, kind)
    n_rows, n_cols = _grid(len(panels), n_cols)
    figure = Figure(figsize=(4.2 * n_cols, 4.2 * n_rows))
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    size = float(np.clip(20_000 / max(len(points.idx_m), 1), 0.3, 12))
    mappable = None
    vmin, vmax = continuous_range(panels, points)
    for k, ax in enumerate(axes.ravel()):
        if k >= len(panels):
            ax.set_axis_off()
            continue
        panel = panels[k]
        xy = panel.umap_n2[points.idx_m]
        shown = panel.values_n.iloc[points.idx_m]
        if points.kind == CATEGORICAL:
            labels = _labels(shown)
            for cat in points.categories:
                mask = labels == cat
                ax.scatter(xy[mask, 0], xy[mask, 1], s=size, c=points.colour_of[cat], linewidths=0, rasterized=True)
        else:
            values = shown.to_numpy(float)
            missing = ~np.isfinite(values)
            ax.scatter(xy[missing, 0], xy[missing, 1], s=size, c=MISSING_COLOUR, linewidths=0, rasterized=True)
            mappable = ax.scatter(xy[~missing, 0], xy[~missing, 1], s=size, c=values[~missing], cmap="viridis",
                                  vmin=vmin, vmax=vmax, linewidths=0,
                                  rasterized=True)
        ax.set_title(panel.title, fontsize=10)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("UMAP 1", fontsize=9)
        ax.set_ylabel("UMAP 2", fontsize=9)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    if points.kind == CATEGORICAL:
        handles = [Line2D([], [], marker="o", linestyle="", color=points.colour_of[c], label=c)
                   for c in points.categories]
        figure.legend(handles=handles, title=colour_by, loc="center left", bbox_to_anchor=(1.0, 0.5),
                      frameon=False, ncol=-(-len(handles) // 25), fontsize=8)
    elif mappable is not None:
        figure.colorbar(mappable, ax=axes.ravel().tolist(), label=colour_by, shrink=0.8)
    else:
        figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def selected_cells(points: Sequence[dict]) -> list[str]:
    """Cell ids of a plotly selection's points (each carries its id first in `customdata`), once each
    even when the same cell was lassoed in several panels; in first-selected order."""
    ids = []
    for point in points:
        data = point.get("customdata")
        if data is None:
            continue
        ids.append(str(data[0] if isinstance(data, (list, tuple)) else data))
    return list(dict.fromkeys(ids))


def selection_composition(cell_ids: Sequence[str], values_by_cell: pd.Series, kind: str) -> pd.DataFrame:
    """What the selected cells are, against all cells. Categories: cells, share of the selection and
    share of all cells per category (most selected first). Continuous: count, mean, median, min, max of
    the selection and of all cells. `values_by_cell` is indexed by cell id; unknown ids are an error."""
    unknown = pd.Index(cell_ids).difference(values_by_cell.index)
    if len(unknown):
        raise InputError(f"{len(unknown):,} selected cells are not in this dataset (e.g. {unknown[0]!r})")
    chosen = values_by_cell.loc[list(cell_ids)]
    if kind == CONTINUOUS:
        stats = ("count", "mean", "median", "min", "max")
        return pd.DataFrame({"Selection": chosen.astype(float).agg(stats),
                             "All cells": values_by_cell.astype(float).agg(stats)})
    labels_all = pd.Series(_labels(values_by_cell), index=values_by_cell.index)
    counts = labels_all.loc[list(cell_ids)].value_counts()
    overall = labels_all.value_counts(normalize=True)
    table = pd.DataFrame({"Cells": counts, "Share of selection": counts / counts.sum(),
                          "Share of all cells": overall.reindex(counts.index)})
    table.index.name = values_by_cell.name
    return table


def scoreboard_bars(long: pd.DataFrame, baseline_runs: Sequence[str] = ()) -> go.Figure:
    """Grouped bars of the scoreboard's headline metrics (long form: Run, Metric, Value), one colour per
    run; the baseline (its own row or the default PCA run) in grey, so the eye finds it first."""
    runs = list(dict.fromkeys(long["Run"]))
    others = iter(PALETTE)
    figure = go.Figure()
    for run in runs:
        part = long[long["Run"] == run]
        colour = "#9e9e9e" if run in baseline_runs else next(others, None)
        figure.add_trace(go.Bar(x=part["Metric"], y=part["Value"], name=run, marker_color=colour,
                                hovertemplate=f"{run}<br>%{{x}}: %{{y:.3f}}<extra></extra>"))
    figure.update_layout(barmode="group", plot_bgcolor="white", height=380, margin=dict(t=30),
                         yaxis=dict(title="value (higher is better)", gridcolor="#eee", zeroline=True),
                         legend=dict(title="Run", orientation="h", y=-0.2))
    return figure

