"""1. Dataset: upload, open a server path, or use the demo; then what the file holds and its QC."""

import os
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from czb_core.config import get_settings
from czb_core.errors import CzbError
from czb_core.schema.data_manager import DataManager, detect_organism_of
from czb_core.viz.qc import per_cell_qc
from czb_core.io.synthetic import write_demo
from czb_core.tasks.column_roles import suggest_columns
from pages.common import current_dataset, current_user, dataset_header, remember, workspace

st.title("Dataset")
settings = get_settings()


def use(record) -> None:
    remember("dataset", record.sha256)
    st.rerun()


source = st.radio("Source", ["Upload a file", "Path on this server", "Demo dataset"], horizontal=True)
if source == "Upload a file":
    uploaded = st.file_uploader(
        f"An .h5ad (AnnData) or 10x Genomics .h5 file, up to {settings.max_upload_mb:,} MB",
        type=["h5ad", "h5"],
        help="The file is copied to the server's workspace by content hash; the browser copy is released.",
    )
    if uploaded is not None and st.button("Use this file", type="primary"):
        try:
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
        hide_index=True, use_container_width=True,
    )
with right:
    st.markdown("**var columns**")
    st.dataframe(pd.DataFrame({"column": header.var.columns}), hide_index=True, use_container_width=True)
    st.markdown(f"**obsm keys:** {', '.join(header.obsm_keys) or 'none'} · **layers:** "
                f"{', '.join(header.layers) or 'none'}")

st.subheader("Quality control")


@st.cache_data(max_entries=8, show_spinner="Computing counts and genes per cell…")
def qc_table(path: str, sha256: str, location: str) -> pd.DataFrame:
    return per_cell_qc(path, location)


qc = qc_table(str(record.path), record.sha256, DataManager(header).matrix_location)
q1, q2 = st.columns(2)
q1.plotly_chart(px.histogram(qc, x="total_counts", nbins=60, title="Counts per cell"), use_container_width=True)
q2.plotly_chart(px.histogram(qc, x="n_genes", nbins=60, title="Genes per cell"), use_container_width=True)
st.caption(f"Median {qc['total_counts'].median():,.0f} counts and {qc['n_genes'].median():,.0f} genes per cell; "
           f"{int((qc['total_counts'] == 0).sum()):,} empty cells.")
st.page_link("pages/validate.py", label="Next: check which models fit", icon="✅")
