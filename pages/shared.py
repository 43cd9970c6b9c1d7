"""A shared result, read-only: what a link made on the Results page shows (`/shared?share=<token>`).

The token is the whole permission (`czb_core.service.sharing`): the page works without logging in, shows one
finished run (its UMAP, its latest metrics beside the PCA baseline, its run record) and offers its
embedding and record for download; nothing here changes anything. A revoked or unknown link, or a run
deleted since, is "not found". It shows that run and nothing of the server: app.py gives it no sidebar or
navigation, and the run record, shown or downloaded (also inside the h5ad), is the public one, without
the owner's e-mail or server paths.
"""

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from czb_core.io.exports import download_name, run_file_stem
from czb_core.service.jobs import artifacts
from czb_core.service.jobs.store import DONE
from czb_core.service.sharing import Shares, public_record, public_result
from czb_core.tasks.column_roles import suggest_columns
from czb_core.tasks.scoreboard import metric_table, run_label
from czb_core.viz.plots import AUTO, Panel, panel_title, umap_grid
from pages.common import job_manager

MAX_POINTS = 200_000

st.title("Shared result")
manager = job_manager()
job = Shares(manager.store).resolve_share(st.query_params.get("share", ""))
if job is None:
    st.error("This link is not valid: it was revoked, the run was deleted, or the address is incomplete.")
    st.stop()

record = public_record(artifacts.read_record(Path(job.artifact_dir)))
dataset_name = manager.workspace.get(job.dataset_id, job.owner).name
st.markdown(f"**{run_label(job.model, job.variant, job.spec.params, job.id)}** on **{dataset_name}** · read-only link")
if artifacts.is_prediction_record(record):
    st.info("This run is a perturbation prediction; download it below.")
else:
    emb_nd, obs, _ = artifacts.read_embedding(Path(job.artifact_dir))
    umap_n2 = artifacts.read_umap(Path(job.artifact_dir))
    columns = list(obs.columns)
    label = suggest_columns(obs).label
    if columns:
        colour_by = st.selectbox("Colour by", columns, index=columns.index(label) if label in columns else 0)
        values = obs[colour_by].reset_index(drop=True)
    else:
        colour_by, values = "cells", pd.Series(["cell"] * len(obs))
    panel = Panel(panel_title(job.model, job.variant, len(umap_n2), ""), umap_n2, values)
    figure, _ = umap_grid([panel], obs.index.to_numpy(), colour_by, max_points=MAX_POINTS, kind=AUTO)
    st.plotly_chart(figure, width="stretch", key="shared_umap")
    scores = [s for s in manager.store.scores_of(job.id) if s.status == DONE and s.document_path.is_file()]
    if scores:
        document = json.loads(scores[0].document_path.read_text())
        st.subheader("Metrics beside the PCA baseline")
        st.dataframe(metric_table(document).drop(columns="Key").style.format(precision=4, na_rep="—"),
                     hide_index=True, width="stretch")

stem = run_file_stem(dataset_name, job.model, job.variant, job.id)
c1, c2 = st.columns(2)
name, mime = artifacts.FORMATS["h5ad"]
c1.download_button("Download the result (h5ad)", lambda: public_result(Path(job.artifact_dir)),
                   download_name(stem, name), mime)
c2.download_button("Download the run record (JSON)", artifacts.record_json(record), f"{stem}.run_record.json",
                   "application/json")
with st.expander("Run record"):
    st.json(record)
