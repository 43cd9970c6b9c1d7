"""Figures of a predicted perturbation: the change per gene against its control level, and the
predicted change beside the observed one when the dataset holds cells of that perturbation."""

from __future__ import annotations

from typing import Optional

import numpy as np
import plotly.graph_objects as go

from czb_core.tasks.perturbation import PredictionEvaluation

UP, DOWN, FLAT = "#d62728", "#1f77b4", "#9a9a9a"


def effect_figure(evaluation: PredictionEvaluation, n_labels: int = 10) -> go.Figure:
    """Volcano-style: predicted change (predicted mean - control mean, log-normalised) on x, the control
    mean on y; the `n_labels` most changed genes each way are named."""
    effect = evaluation.effect
    change_g = effect.change_g
    order = np.argsort(change_g, kind="stable")
    named = set(order[:n_labels]) | set(order[::-1][:n_labels])
    colour_g = np.where(change_g > 0, UP, DOWN)
    colour_g[[i for i in range(len(change_g)) if i not in named]] = FLAT
    labels = [str(g) if i in named else "" for i, g in enumerate(effect.genes_g)]
    figure = go.Figure(go.Scattergl(
        x=change_g, y=effect.control_mean_g, mode="markers+text", text=labels, textposition="top center",
        marker=dict(color=colour_g, size=6), customdata=np.stack([effect.genes_g, effect.predicted_mean_g], 1),
        hovertemplate="%{customdata[0]}<br>change %{x:.3f}<br>control %{y:.3f}<br>predicted %{customdata[1]:.3f}"
                      "<extra></extra>"))
    figure.add_vline(x=0, line_width=1, line_color="#555")
    figure.update_layout(title=f"{evaluation.condition}: predicted change of {len(change_g):,} genes",
                         xaxis_title="predicted change (log1p, normalised to 1e4)", yaxis_title="control mean",
                         template="simple_white", height=480, showlegend=False)
    return figure


def observed_vs_predicted_figure(evaluation: PredictionEvaluation) -> Optional[go.Figure]:
    """The observed change against the predicted change per gene, with their Pearson correlation; None
    when the dataset has no cells of the condition."""
    observed_g = evaluation.observed_change_g
    if observed_g is None:
        return None
    predicted_g = evaluation.effect.change_g
    lo, hi = float(min(observed_g.min(), predicted_g.min())), float(max(observed_g.max(), predicted_g.max()))
    figure = go.Figure(go.Scattergl(x=predicted_g, y=observed_g, mode="markers", text=evaluation.effect.genes_g,
                                    marker=dict(size=6, color="#444"),
                                    hovertemplate="%{text}<br>predicted %{x:.3f}<br>observed %{y:.3f}<extra></extra>"))
    figure.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(dash="dot", color="#999"),
                                hoverinfo="skip"))
    figure.update_layout(title=f"{evaluation.condition}: observed vs predicted change "
                               f"(Pearson r = {evaluation.change_correlation():.3f})",
                         xaxis_title="predicted change", yaxis_title="observed change", template="simple_white",
                         height=480, showlegend=False)
    figure.update_yaxes(scaleanchor="x", scaleratio=1)
    return figure
