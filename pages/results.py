"""4. Results: UMAPs of finished runs side by side with one colour key, metrics, and downloads."""

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from czb_core import exports
from czb_core.jobs import artifacts
from czb_core.tasks.column_roles import suggest_columns
from czb_core.umap import stratified_subsample
from pages.common import dataset_header, job_manager, require_dataset

MAX_POINTS = 200_000
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd")

st.title("Results")
record = require_dataset()
manager = job_manager()
header = dataset_header(str(record.path), record.sha256)
obs_names = header.obs.index.to_numpy()
done = [j for j in manager.list(dataset_sha256=record.sha256) if j.status == "done"]
if not done:
    st.info("No finished run on this dataset yet.")
    st.page_link("pages/run.py", label="Go to 3. Run", icon="▶️")
    st.stop()

labels = {j.id: f"{j.model} / {j.variant} ({j.id})" for j in done}
latest = {}
for j in done:  # newest first: keep the latest run of each model/variant as the default selection
    latest.setdefault((j.model, j.variant), j.id)
chosen = st.multiselect("Runs", list(labels), default=list(latest.values())[:4], format_func=labels.get)
if not chosen:
    st.stop()
roles = suggest_columns(header.obs)
columns = list(header.obs.columns)
colour_by = st.selectbox("Colour by", columns, index=columns.index(roles.label) if roles.label in columns else 0)


@st.cache_data(max_entries=16, show_spinner="Loading the run…")
def load_run(artifact_dir: str) -> tuple[np.ndarray, dict]:
    """(umap_n2, record) of a finished job; the embedding stays on disk until downloaded."""
    return artifacts.read_umap(Path(artifact_dir)), artifacts.read_record(Path(artifact_dir))


values = header.obs[colour_by]
categorical = not pd.api.types.is_numeric_dtype(values) or values.nunique() <= 30
idx = stratified_subsample(values.astype(str).to_numpy() if categorical else np.zeros(len(values)),
                           max_points=MAX_POINTS, seed=0)
if len(idx) < header.n_obs:
    st.caption(f"Showing {len(idx):,} of {header.n_obs:,} cells: a stratified subsample by '{colour_by}' "
               f"(at most {MAX_POINTS:,} points are drawn).")

jobs = {j.id: j for j in done}
n_cols = min(len(chosen), 2)
n_rows = -(-len(chosen) // n_cols)
figure = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=[labels[c] for c in chosen],
                       horizontal_spacing=0.04, vertical_spacing=0.08)
shown = values.iloc[idx]
for k, job_id in enumerate(chosen):
    umap_n2, _ = load_run(str(jobs[job_id].artifact_dir))
    row, col = divmod(k, n_cols)
    xy = umap_n2[idx].astype(np.float32)
    cell_ids = obs_names[idx]
    if categorical:
        cats = pd.Categorical(shown.astype(str))
        for c, cat in enumerate(cats.categories):
            mask = np.asarray(cats == cat)
            figure.add_trace(go.Scattergl(
                x=xy[mask, 0], y=xy[mask, 1], mode="markers", name=str(cat), legendgroup=str(cat),
                showlegend=k == 0, marker=dict(size=3, color=PALETTE[c % len(PALETTE)]),
                customdata=cell_ids[mask], hovertemplate=f"%{{customdata}}<br>{colour_by}: {cat}<extra></extra>",
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
st.plotly_chart(figure, use_container_width=True)

st.subheader("Downloads")
d1, d2, d3 = st.columns([2, 1, 1])
job_id = d1.selectbox("Run", chosen, format_func=labels.get, key="download_run")
fmt = d2.selectbox("Format", list(exports.FORMATS), key="download_format")
artifact_dir = Path(jobs[job_id].artifact_dir)
name, mime, data = exports.export_bytes(artifact_dir, fmt)
d3.download_button(f"Download {fmt}", data, file_name=f"{record.name.rsplit('.', 1)[0]}_{name}", mime=mime,
                   type="primary")
with st.expander("Run record"):
    st.json(load_run(str(artifact_dir))[1])
