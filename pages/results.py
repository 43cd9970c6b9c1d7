"""4. Results: UMAPs of finished runs side by side with one colour key, metrics, and downloads."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from czb_core.service.jobs import artifacts
from czb_core.viz.plots import Panel, umap_grid
from czb_core.tasks.column_roles import suggest_columns
from czb_core.tasks.comparison import compare_runs
from pages.common import dataset_header, job_manager, require_dataset, scope

MAX_POINTS = 200_000

st.title("Results")
record = require_dataset()
manager = job_manager()
header = dataset_header(str(record.path), record.sha256)
obs_names = header.obs.index.to_numpy()
done = [j for j in manager.list(dataset_sha256=record.sha256, owner=scope()) if j.status == "done"]
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
jobs = {j.id: j for j in done}


@st.cache_data(max_entries=16, show_spinner="Loading the run…")
def load_run(artifact_dir: str) -> tuple[np.ndarray, dict, pd.DataFrame]:
    """(umap_n2, record, obs) of a finished job; obs carries any per-cell outputs of the run."""
    directory = Path(artifact_dir)
    _, obs, _ = artifacts.read_embedding(directory)
    return artifacts.read_umap(directory), artifacts.read_record(directory), obs


runs = {job_id: load_run(str(jobs[job_id].artifact_dir)) for job_id in chosen}
roles = suggest_columns(header.obs)
columns = list(header.obs.columns)
columns += sorted({c for _, _, obs in runs.values() for c in obs.columns} - set(columns))  # e.g. a perturbation shift
colour_by = st.selectbox("Colour by", columns, index=columns.index(roles.label) if roles.label in columns else 0)


def colour_values(obs: pd.DataFrame) -> pd.Series:
    """This run's own column when it has one, else the dataset's; missing -> n/a (grey in the key)."""
    if colour_by in obs:
        return obs[colour_by].reset_index(drop=True)
    if colour_by in header.obs:
        return header.obs[colour_by].reset_index(drop=True)
    return pd.Series([None] * header.n_obs, dtype=object)


panels = [Panel(labels[j], runs[j][0], colour_values(runs[j][2])) for j in chosen]
figure, n_drawn = umap_grid(panels, obs_names, colour_by, max_points=MAX_POINTS)
if n_drawn < header.n_obs:
    st.caption(f"Showing {n_drawn:,} of {header.n_obs:,} cells: a stratified subsample by '{colour_by}' "
               f"(at most {MAX_POINTS:,} points are drawn).")
st.plotly_chart(figure, use_container_width=True)

st.subheader("Metrics")


@st.cache_data(max_entries=32)
def load_metrics(document_path: str) -> dict:
    return json.loads(Path(document_path).read_text())


def latest_metrics(job_id: str) -> dict:
    """The newest finished scoring of a run; a note while one is running or when scoring failed."""
    scores = manager.scores(job_id, scope())
    for score in scores:
        if score.status == "done":
            return load_metrics(str(score.document_path))
    if any(s.status in ("queued", "running") for s in scores):
        return {"error": "scoring is running; this page shows the metrics once it is done"}
    return {"error": scores[0].error if scores else "no metrics were computed for this run"}


def rescore_form(job_id: str) -> None:
    """Score this embedding with other columns: a new scoring run, no new embedding."""
    with st.expander("Score with other columns (reuses the embedding)"):
        c1, c2 = st.columns(2)
        label = c1.selectbox("Label column", columns_of_dataset, key=f"rescore_label_{job_id}",
                             index=columns_of_dataset.index(roles.label) if roles.label in columns_of_dataset else 0)
        batch = c2.selectbox("Batch column", ["(none)"] + columns_of_dataset, key=f"rescore_batch_{job_id}")
        if st.button("Score", key=f"rescore_go_{job_id}"):
            manager.rescore(job_id, {"label_key": label, "batch_key": False if batch == "(none)" else batch},
                            scope())
            st.info("Scoring queued; reload this page in a moment.")


def style_table(table: pd.DataFrame):
    """Green where the model beats the baseline, on the model's cell; on the baseline's cell otherwise."""
    def colour(row):
        good = "background-color:#c8e6c9"
        return ["", "", good if row["better"] == "model" else "", good if row["better"] == "baseline" else "",
                "", ""]
    return table.style.apply(colour, axis=1).format(precision=4, na_rep="—")


columns_of_dataset = list(header.obs.columns)
metrics_by_run = {job_id: latest_metrics(job_id) for job_id in chosen}
tabs = st.tabs([labels[j] for j in chosen] + (["Comparison"] if len(chosen) > 1 else []))
for tab, job_id in zip(tabs, chosen):
    document = metrics_by_run[job_id]
    with tab:
        rescore_form(job_id)
        if "error" in document:
            st.warning(f"Metrics: {document['error']}")
            continue
        options = document["options"]
        st.caption(" · ".join(f"{k}: {v}" for k, v in options.items() if v not in (None, False)))
        for warning in document.get("warnings", []):
            st.caption(f"Note: {warning}")
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
        comparison = compare_runs({labels[job_id]: metrics_by_run[job_id] for job_id in chosen})
        if not comparison.empty:
            st.caption("Higher is better for every metric; the best value of each row is highlighted.")
            st.dataframe(comparison.style.highlight_max(axis=1, color="#c8e6c9").format(precision=4, na_rep="—"),
                         use_container_width=True)

st.subheader("Downloads")
d1, d2, d3 = st.columns([2, 1, 1])
job_id = d1.selectbox("Run", chosen, format_func=labels.get, key="download_run")
fmt = d2.selectbox("Format", list(artifacts.FORMATS), key="download_format")
artifact_dir = Path(jobs[job_id].artifact_dir)
name, mime, data = artifacts.export_bytes(artifact_dir, fmt)
d3.download_button(f"Download {fmt}", data, file_name=f"{record.name.rsplit('.', 1)[0]}_{name}", mime=mime,
                   type="primary")
with st.expander("Run record"):
    st.json(runs[job_id][1])
