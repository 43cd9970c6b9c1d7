"""4. Results: UMAPs of finished runs side by side with one colour key, metrics, and downloads."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from czb_core import exports
from czb_core.jobs import artifacts
from czb_core.jobs.metrics import METRICS_JSON
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

st.subheader("Metrics")


@st.cache_data(max_entries=32)
def load_metrics(artifact_dir: str) -> dict:
    path = Path(artifact_dir) / METRICS_JSON
    return json.loads(path.read_text()) if path.exists() else {"error": "no metrics were computed for this run"}


def style_table(table: pd.DataFrame):
    """Green where the model beats the baseline, on the model's cell; on the baseline's cell otherwise."""
    def colour(row):
        good = "background-color:#c8e6c9"
        return ["", "", good if row["better"] == "model" else "", good if row["better"] == "baseline" else "",
                "", ""]
    return table.style.apply(colour, axis=1).format(precision=4, na_rep="—")


metrics_by_run = {job_id: load_metrics(str(jobs[job_id].artifact_dir)) for job_id in chosen}
tabs = st.tabs([labels[j] for j in chosen] + (["Comparison"] if len(chosen) > 1 else []))
for tab, job_id in zip(tabs, chosen):
    document = metrics_by_run[job_id]
    with tab:
        if "error" in document or "skipped" in document:
            st.warning(f"Metrics: {document.get('error') or 'skipped ' + document['skipped']}")
            continue
        options = document["options"]
        st.caption(" · ".join(f"{k}: {v}" for k, v in options.items()) +
                   (f" · a stratified subsample of {document['n_used']:,} of {document['n_total']:,} cells"
                    if document["n_used"] < document["n_total"] else ""))
        table = pd.DataFrame(document["table"])
        st.dataframe(style_table(table), hide_index=True, use_container_width=True)
        confusion = document["extra"].get("cross_split", {}).get("confusion_matrices", {})
        if confusion:
            classifier = st.selectbox("Confusion matrix of", list(confusion), key=f"cm_{job_id}")
            cm = confusion[classifier]
            st.plotly_chart(px.imshow(np.array(cm["matrix"]), x=cm["classes"], y=cm["classes"], text_auto=True,
                                      labels=dict(x="predicted", y="true", color="cells"),
                                      title=f"{options.get('train')} -> {options.get('test')}, {classifier}"),
                            use_container_width=True, key=f"cm_plot_{job_id}")
        c1, c2 = st.columns(2)
        c1.download_button("Metrics (CSV)", table.to_csv(index=False), f"metrics_{job_id}.csv", "text/csv",
                           key=f"csv_{job_id}")
        c2.download_button("Metrics (JSON)", json.dumps(document, indent=2), f"metrics_{job_id}.json",
                           "application/json", key=f"json_{job_id}")
if len(chosen) > 1:
    with tabs[-1]:
        rows = {}
        for job_id in chosen:
            document = metrics_by_run[job_id]
            for row in document.get("table", []):
                key = (row["task"], row["metric"])
                rows.setdefault(key, {"PCA baseline": row["baseline"]})[labels[job_id]] = row["model"]
        if rows:
            comparison = pd.DataFrame.from_dict(rows, orient="index")
            comparison.index = pd.MultiIndex.from_tuples(comparison.index, names=["task", "metric"])
            st.caption("Higher is better for every metric; the best value of each row is highlighted.")
            st.dataframe(comparison.style.highlight_max(axis=1, color="#c8e6c9").format(precision=4, na_rep="—"),
                         use_container_width=True)

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
