"""1. Dataset: reopen one of your datasets, or add one (upload, server path, demo); then what it holds and its QC."""

import os
from pathlib import Path
from typing import Optional

import pandas as pd
import streamlit as st

from czb_core.config import get_settings
from czb_core.errors import CzbError
from czb_core.io.synthetic import write_demo
from czb_core.progress import format_amount
from czb_core.schema.data_manager import DataManager, detect_organism_of
from czb_core.service.history import dataset_shape, version_tree
from czb_core.service.retention import expires_at
from czb_core.tasks.column_roles import suggest_columns
from czb_core.viz.charts import qc_histogram
from czb_core.viz.qc import per_cell_qc
from pages.common import (
    current_dataset,
    current_user,
    dataset_header,
    job_manager,
    recall,
    remember,
    scope,
    workspace,
)

st.title("Dataset")
st.markdown(
    "CZB Studio embeds your single-cell data with foundation models (scVI, Geneformer, scGPT, UCE, "
    "TranscriptFormer, …) and scores every embedding beside a PCA baseline.  \n"
    "Start here: reopen one of your datasets or add an `.h5ad` / 10x `.h5` file (or the demo); then "
    "**2. Validate** shows which models fit it, **3. Run** embeds it, **4. Results** compares the runs.  \n"
    "Your datasets and runs stay on this server, so you can come back to them in any later session."
)
settings = get_settings()


def use(record) -> None:
    remember("dataset", record.id)
    st.rerun()


@st.cache_data(max_entries=256, show_spinner=False)
def shape_of(path: str, sha256: str) -> Optional[tuple[int, int]]:
    """Cached by content hash: a stored file never changes."""
    return dataset_shape(Path(path))


def history_row(entry, opened: Optional[str]) -> None:
    """One dataset of the list: what it is, and Open / Delete (Delete asks once more)."""
    record = entry.record
    shape = shape_of(str(record.path), record.sha256)
    name = ("↳ " * entry.depth) + record.name + (" (open)" if record.id == opened else "")
    facts = [f"{shape[0]:,} cells × {shape[1]:,} genes" if shape else "file unreadable or gone",
             record.organism.replace("_", " ") if record.organism else "species detected when opened",
             f"added {record.created_at.replace('T', ' ')[:16]} UTC", format_amount(record.size_bytes, "bytes")]
    if record.note:
        facts.append(record.note)
    if scope() is None:  # an admin's list holds every user's records: say whose this one is
        facts.insert(0, f"owner {record.owner}")
    if (expiry := expires_at(record)) is not None:
        facts.append(f"kept until {expiry:%Y-%m-%d} (server retention)")
    text, open_col, delete_col = st.columns([8, 1, 1])
    text.markdown(f"**{name}**  \n{' · '.join(facts)}")
    if open_col.button("Open", key=f"open_{record.id}", disabled=record.id == opened):
        use(record)
    if delete_col.button("Delete", key=f"delete_{record.id}"):
        st.session_state["confirm_delete"] = record.id
    if st.session_state.get("confirm_delete") == record.id:
        st.warning(f"Delete **{record.name}** and your runs on it? Versions made from it stay.")
        yes, no = st.columns(2)
        if yes.button("Yes, delete", key=f"delete_yes_{record.id}", type="primary"):
            st.session_state.pop("confirm_delete")
            try:
                workspace().delete_dataset(record.id, scope())  # exactly the record of this row
            except KeyError:
                st.warning("That dataset was already deleted.")
            except CzbError as exc:
                st.error(str(exc))
                return
            if record.id == opened:
                remember("dataset", None)
            st.rerun()
        if no.button("Keep it", key=f"delete_no_{record.id}"):
            st.session_state.pop("confirm_delete")
            st.rerun()


history = version_tree(workspace().list(owner=scope()))
opened = recall("dataset")
if history:
    with st.expander(f"Your datasets ({len(history)})", expanded=not opened):
        for entry in history:
            history_row(entry, opened)

st.subheader("Add a dataset")
source = st.radio("Source", ["Upload a file", "Path on this server", "Demo dataset"], horizontal=True)
if source == "Upload a file":
    uploaded = st.file_uploader(
        f"An .h5ad (AnnData) or 10x Genomics .h5 file, up to {settings.max_upload_mb:,} MB",
        type=["h5ad", "h5"],
        help="The file is copied to the server's workspace by content hash; the browser copy is released.",
    )
    if uploaded is not None and st.button("Use this file", type="primary"):
        try:
            job_manager().quotas.check_upload(current_user(), uploaded.size)
            record = workspace().add_stream(uploaded, uploaded.name, owner=current_user(),
                                            max_bytes=settings.max_upload_mb * 2**20)
        except CzbError as exc:
            st.error(str(exc))
        else:
            del uploaded
            use(record)
elif source == "Path on this server":
    roots = ", ".join(str(r) for r in settings.data_roots) or "none configured (set CZB_DATA_ROOTS)"
    path = st.text_input("File path", help=f"Allowed folders: {roots}")
    st.caption(f"Allowed folders: {roots}. Big files are read in place, not copied.")
    if st.button("Open", type="primary", disabled=not path):
        try:
            record = workspace().add_server_path(path, owner=current_user())
        except CzbError as exc:
            st.error(str(exc))
        else:
            use(record)
else:
    st.write("About 3,000 synthetic cells: six cell types, two batches, human Ensembl ids, raw counts.")
    if st.button("Use the demo dataset", type="primary"):
        demo = Path(os.environ.get("CZB_DEMO") or settings.workspace / "demo" / "demo.h5ad")
        if not demo.exists():
            with st.spinner("Generating the demo dataset…"):
                write_demo(demo)
        use(workspace().add_file(demo, name="demo.h5ad", owner=current_user()))

record = current_dataset()
if record is None:
    st.stop()

st.divider()
st.subheader(record.name)
try:
    header = dataset_header(str(record.path), record.sha256)
except CzbError as exc:
    st.error(str(exc))
    st.stop()
detection = detect_organism_of(header)
roles = suggest_columns(header.obs)
x = header.x_sample
cols = st.columns(5)
cols[0].metric("Cells", f"{header.n_obs:,}")
cols[1].metric("Genes", f"{header.n_vars:,}")
cols[2].metric("X", f"{x.dtype}, {x.encoding.replace('_matrix', '')}")
cols[3].metric("Non-zero (sampled)", f"{x.nnz_fraction:.1%}")
cols[4].metric("Raw counts in", header.counts_location or "not found")
st.write(f"**Genes:** {detection.describe()}")
if record.parent_sha256:
    st.write(f"**Version of** {record.parent_sha256[:12]}…: {record.note}")
st.write(
    f"**Suggested label column:** {roles.label or '—'} · **suggested batch column:** {roles.batch or '—'}"
)
for warning in roles.warnings:
    st.warning(warning)

left, right = st.columns(2)
with left:
    st.markdown("**obs columns**")
    st.dataframe(
        pd.DataFrame({"column": header.obs.columns,
                      "distinct values": [header.obs[c].nunique() for c in header.obs.columns],
                      "dtype": [str(header.obs[c].dtype) for c in header.obs.columns]}),
        hide_index=True, width="stretch",
    )
with right:
    st.markdown("**var columns**")
    st.dataframe(pd.DataFrame({"column": header.var.columns}), hide_index=True, width="stretch")
    st.markdown(f"**obsm keys:** {', '.join(header.obsm_keys) or 'none'} · **layers:** "
                f"{', '.join(header.layers) or 'none'}")

st.subheader("Quality control")


@st.cache_data(max_entries=8, show_spinner="Computing counts and genes per cell…")
def qc_table(path: str, sha256: str, location: str) -> pd.DataFrame:
    return per_cell_qc(path, location)


try:
    qc = qc_table(str(record.path), record.sha256, DataManager(header).matrix_location)
except CzbError as exc:
    st.error(str(exc))
    st.stop()
q1, q2 = st.columns(2)
q1.plotly_chart(qc_histogram(qc, "total_counts", "Counts per cell"), width="stretch")
q2.plotly_chart(qc_histogram(qc, "n_genes", "Genes per cell"), width="stretch")
st.caption(f"Median {qc['total_counts'].median():,.0f} counts and {qc['n_genes'].median():,.0f} genes per cell; "
           f"{int((qc['total_counts'] == 0).sum()):,} empty cells.")
st.page_link("pages/validate.py", label="Next: check which models fit", icon="✅")
