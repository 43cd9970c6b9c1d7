"""4. Results: a scoreboard of finished runs against the PCA baseline, their UMAPs, metrics and downloads."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from czb_core.errors import CzbError, InputError
from czb_core.io.exports import download_name, run_file_stem
from czb_core.models.reproduce import reproduce_script
from czb_core.service.baseline import is_the_baseline
from czb_core.service.jobs import artifacts
from czb_core.service.jobs.kinds import PREDICTION, kind_of
from czb_core.service.sharing import Shares
from czb_core.tasks.column_roles import suggest_columns
from czb_core.tasks.comparison import compare_runs
from czb_core.tasks.per_class import CLASSIFIERS, class_report_for_options
from czb_core.tasks.scoreboard import (
    BASELINE_ROW,
    CLASSIFIER_NAMES,
    RunEntry,
    headline_long,
    metric_table,
    run_label,
    scoreboard,
)
from czb_core.viz.charts import confusion_heatmap
from czb_core.viz.plots import (
    AUTO,
    CATEGORICAL,
    CONTINUOUS,
    Panel,
    colour_kind,
    panel_title,
    scoreboard_bars,
    selected_cells,
    selection_composition,
    umap_grid,
    umap_image,
)
from czb_core.viz.tables import style_scoreboard
from czb_core.viz.umap import umap_note
from pages.common import dataset_header, job_manager, require_dataset, scope
from pages.prediction_view import prediction_view

MAX_POINTS = 200_000

st.title("Results")
record = require_dataset()
manager = job_manager()
header = dataset_header(str(record.path), record.sha256)
obs_names = header.obs.index.to_numpy()
done = [j for j in manager.list(dataset_id=record.id, owner=scope())
        if j.status == "done" and kind_of(j.model).page == "results"]  # lab trainings: the Tokenizer lab page
if not done:
    st.info("No finished run on this dataset yet.")
    st.page_link("pages/run.py", label="Go to 3. Run", icon="▶️")
    st.stop()
predictions = [j for j in done if kind_of(j.model) == PREDICTION]  # predicted expression: no UMAP, no embedding metrics
if predictions:
    prediction_view(predictions, {j.id: run_label(j.model, j.variant, j.spec.params, j.id) for j in predictions},
                    {j.id: run_file_stem(record.name, j.model, j.variant, j.id) for j in predictions}, str(record.path))
done = [j for j in done if kind_of(j.model) != PREDICTION]
if not done:
    st.stop()
if predictions:
    st.subheader("Embeddings")

labels = {j.id: run_label(j.model, j.variant, j.spec.params, j.id) for j in done}
latest = {}
for j in done:  # newest first: keep the latest run of each model/variant/params as the default selection
    latest.setdefault(j.spec_key, j.id)
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


@st.cache_data(max_entries=32)
def load_metrics(document_path: str) -> dict:
    return json.loads(Path(document_path).read_text())


@st.cache_data(max_entries=16, show_spinner="Predicting every cell's label with the metrics' folds…")
def per_class(artifact_dir: str, options_json: str, classifier: str):
    emb_nd, obs, _ = artifacts.read_embedding(Path(artifact_dir))
    return class_report_for_options(emb_nd, obs, json.loads(options_json), classifier)


def latest_metrics(job_id: str) -> dict:
    """The newest finished scoring of a run; a note while one is running or when scoring failed."""
    scores = manager.scores(job_id, scope())
    for score in scores:
        if score.status == "done":
            return load_metrics(str(score.document_path))
    if any(s.status in ("queued", "running") for s in scores):
        return {"error": "scoring is running; this page shows the metrics once it is done"}
    return {"error": scores[0].error if scores else "no metrics were computed for this run"}


runs = {job_id: load_run(str(jobs[job_id].artifact_dir)) for job_id in chosen}
metrics_by_run = {job_id: latest_metrics(job_id) for job_id in chosen}
baseline_ids = {job_id for job_id in chosen if is_the_baseline(runs[job_id][1])}
stems = {job_id: run_file_stem(record.name, jobs[job_id].model, jobs[job_id].variant, job_id) for job_id in chosen}

# -- scoreboard -----------------------------------------------------------------------------------------
st.subheader("Scoreboard")
entries = [RunEntry(labels[j], runs[j][1], None if "error" in metrics_by_run[j] else metrics_by_run[j],
                    j in baseline_ids) for j in chosen]
board = scoreboard(entries)
st.dataframe(style_scoreboard(board), width="stretch", key="scoreboard")
baseline_labels = [labels[j] for j in chosen if j in baseline_ids] or [BASELINE_ROW]
st.caption("Δ = run − PCA baseline, on the same cells with the same metric options; green: better than PCA, "
           "red: worse. Every metric here is higher-is-better. "
           + (f"{baseline_labels[0]} is the PCA baseline itself (Δ 0)." if baseline_ids else ""))
for j in chosen:
    if "error" in metrics_by_run[j]:
        st.caption(f"{labels[j]}: {metrics_by_run[j]['error']}")
long = headline_long(board)
if not long.empty:
    st.plotly_chart(scoreboard_bars(long, baseline_labels), width="stretch", key="scoreboard_bars")

# -- UMAPs ----------------------------------------------------------------------------------------------
st.subheader("UMAP")
roles = suggest_columns(header.obs)
columns = list(header.obs.columns)
columns += sorted({c for _, _, obs in runs.values() for c in obs.columns} - set(columns))  # e.g. a perturbation shift
c1, c2 = st.columns([2, 1])
colour_by = c1.selectbox("Colour by", columns, index=columns.index(roles.label) if roles.label in columns else 0)
kinds = {"Automatic": AUTO, "Categories": CATEGORICAL, "Continuous scale": CONTINUOUS}
kind = kinds[c2.radio("Colours", list(kinds), horizontal=True)]


def colour_values(obs: pd.DataFrame) -> pd.Series:
    """This run's own column when it has one, else the dataset's; missing -> n/a (grey in the key)."""
    if colour_by in obs:
        return obs[colour_by].reset_index(drop=True)
    if colour_by in header.obs:
        return header.obs[colour_by].reset_index(drop=True)
    return pd.Series([None] * header.n_obs, dtype=object)


def title(job_id: str) -> str:
    params = ", ".join(f"{k}={v}" for k, v in sorted(jobs[job_id].spec.params.items()))
    return panel_title(jobs[job_id].model, jobs[job_id].variant, len(runs[job_id][0]), params)


panels = [Panel(title(j), runs[j][0], colour_values(runs[j][2])) for j in chosen]
try:
    kind = colour_kind(panels, colour_by, kind)
except InputError as exc:  # a text column asked for as a continuous scale
    st.error(str(exc))
    st.stop()
figure, n_drawn = umap_grid(panels, obs_names, colour_by, max_points=MAX_POINTS, kind=kind)
for j in chosen:
    if (note := umap_note(len(runs[j][0]), stratified_by=runs[j][1].get("umap", {}).get("stratified_by"))):
        st.caption(f"{labels[j]}: {note}.")
if n_drawn < header.n_obs:
    st.caption(f"Showing {n_drawn:,} of {header.n_obs:,} cells: a stratified subsample by '{colour_by}' "
               f"(at most {MAX_POINTS:,} points are drawn).")
event = st.plotly_chart(figure, width="stretch", on_select="rerun", selection_mode=("lasso", "box"), key="umap")
selected = selected_cells(event.selection.points) if event and event.selection else []
if selected:
    values_by_cell = pd.Series(colour_values(runs[chosen[0]][2]).to_numpy(), index=obs_names, name=colour_by)
    st.markdown(f"**{len(selected):,} selected cells** by {colour_by}")
    st.dataframe(selection_composition(selected, values_by_cell, kind), width="stretch", column_config={
        "Share of selection": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1),
        "Share of all cells": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1)})
else:
    st.caption("Lasso or box-select cells in any panel to see what they are.")
figure_stem = f"{run_file_stem(record.name, 'umap', colour_by, '-'.join(chosen))}"
f1, f2, _ = st.columns([1, 1, 3])
for column, fmt, mime in ((f1, "png", "image/png"), (f2, "svg", "image/svg+xml")):
    column.download_button(f"Figure ({fmt.upper()})", lambda fmt=fmt: umap_image(panels, obs_names, colour_by, fmt,
                                                                                 MAX_POINTS, kind=kind),
                           f"{figure_stem}.{fmt}", mime, key=f"figure_{fmt}")

# -- each run's metrics ---------------------------------------------------------------------------------
st.subheader("Metrics")
columns_of_dataset = list(header.obs.columns)


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


def per_class_section(job_id: str, options: dict) -> None:
    """Per-cell-type accuracy and the confusion matrix, from the label-prediction folds (on request)."""
    if not st.toggle("Per-cell-type accuracy and confusion matrix", key=f"per_class_{job_id}"):
        return
    classifier = st.selectbox("Classifier", CLASSIFIERS, format_func=CLASSIFIER_NAMES.get, key=f"clf_{job_id}")
    try:
        report = per_class(str(jobs[job_id].artifact_dir), json.dumps(options), classifier)
    except InputError as exc:  # fewer than 2 classes big enough
        st.warning(str(exc))
        return
    st.caption(f"Each cell predicted by the {CLASSIFIER_NAMES[classifier]} of the fold that held it out "
               f"({report.n_folds} folds, seed {report.seed}); pooled accuracy {report.accuracy:.3f}.")
    c1, c2 = st.columns([1, 2])
    c1.dataframe(report.per_class, width="stretch", column_config={
        "accuracy": st.column_config.ProgressColumn("Accuracy", format="%.3f", min_value=0, max_value=1)})
    c2.plotly_chart(confusion_heatmap(report.confusion), width="stretch", key=f"cm_lp_{job_id}")


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
        table = metric_table(document)
        st.dataframe(table.drop(columns="Key").style.format(precision=4, na_rep="—"), hide_index=True,
                     width="stretch", key=f"table_{job_id}", column_config={
                         "Meaning": st.column_config.TextColumn(help="what the metric says, in one line"),
                         "Δ": st.column_config.NumberColumn(help="model − PCA baseline; higher is better")})
        if "label_prediction" in document["extra"]:
            per_class_section(job_id, options)
        confusion = document["extra"].get("cross_split", {}).get("confusion_matrices", {})
        if confusion:
            classifier = st.selectbox("Confusion matrix of", list(confusion), key=f"cm_{job_id}")
            cm = confusion[classifier]
            st.plotly_chart(confusion_heatmap(cm["matrix"], cm["classes"],
                                              title=f"{options.get('train')} -> {options.get('test')}, {classifier}"),
                            width="stretch", key=f"cm_plot_{job_id}")
        c1, c2 = st.columns(2)
        c1.download_button("Metrics (CSV)", table.to_csv(index=False), f"{stems[job_id]}.metrics.csv", "text/csv",
                           key=f"csv_{job_id}")
        c2.download_button("Metrics (JSON)", json.dumps(document, indent=2), f"{stems[job_id]}.metrics.json",
                           "application/json", key=f"json_{job_id}")
if len(chosen) > 1:
    with tabs[-1]:
        comparison = compare_runs({labels[j]: metrics_by_run[j] for j in chosen},
                                  baseline_runs={labels[j] for j in baseline_ids})
        if not comparison.empty:
            st.caption("Higher is better for every metric; the best value of each row is highlighted."
                       + (f" {labels[next(iter(baseline_ids))]} is the PCA baseline column." if baseline_ids else ""))
            st.dataframe(comparison.style.highlight_max(axis=1, color="#c8e6c9").format(precision=4, na_rep="—"),
                         width="stretch")

# -- downloads ------------------------------------------------------------------------------------------
st.subheader("Downloads")
d1, d2, d3 = st.columns([2, 1, 1])
job_id = d1.selectbox("Run", chosen, format_func=labels.get, key="download_run")
artifact_dir = Path(jobs[job_id].artifact_dir)
fmt = d2.selectbox("Format", artifacts.formats_of(artifact_dir), key="download_format")
artifact_name, mime = artifacts.FORMATS[fmt]
d3.download_button(f"Download {fmt}", lambda: artifacts.export_bytes(artifact_dir, fmt)[2],
                   file_name=download_name(stems[job_id], artifact_name), mime=mime, type="primary")
options = metrics_by_run[job_id].get("options")
script = reproduce_script(runs[job_id][1], record.name, stems[job_id], options)
st.download_button("Reproduce (shell script)", script, f"{stems[job_id]}.reproduce.sh", "text/x-shellscript",
                   help="checks the input's sha256, then the `czb run` and `czb benchmark` commands that make "
                        "this embedding and its metrics again")
st.code(script, language="bash")
with st.expander("Run record"):
    st.json(runs[job_id][1])

# -- sharing and deleting -------------------------------------------------------------------------------
st.subheader("Share or delete this run")
shares = Shares(manager.store)
page_url = (st.context.url or "").rsplit("/", 1)[0]  # the app's base address, as the browser sees it
s1, s2 = st.columns(2)
if s1.button("Make a read-only link", key=f"share_{job_id}",
             help="anyone with the link sees this run's UMAP, metrics and downloads, without an account"):
    shares.share_job(job_id, scope())
for link in shares.shares_of(job_id, scope()):
    l1, l2 = st.columns([6, 1])
    l1.code(f"{page_url}/shared?share={link.token}", language=None)
    if l2.button("Revoke", key=f"revoke_{link.token[:12]}"):
        shares.revoke_share(link.token, scope())
        st.rerun()
if s2.button("Delete this run", key=f"delete_run_{job_id}"):
    st.session_state["confirm_delete_run"] = job_id
if st.session_state.get("confirm_delete_run") == job_id:
    st.warning(f"Delete **{labels[job_id]}**, its metrics and its share links? The dataset stays.")
    yes, no = st.columns(2)
    if yes.button("Yes, delete the run", key=f"delete_run_yes_{job_id}", type="primary"):
        st.session_state.pop("confirm_delete_run")
        try:
            manager.store.delete_job(job_id, scope())
        except (KeyError, CzbError) as exc:
            st.error(str(exc))
        else:
            st.rerun()
    if no.button("Keep it", key=f"delete_run_no_{job_id}"):
        st.session_state.pop("confirm_delete_run")
        st.rerun()
