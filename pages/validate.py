"""2. Validate: every model x every check, green / amber / red, each problem with its fix."""

import pandas as pd
import streamlit as st

from czb_core.errors import CzbError
from czb_core.schema.report import CHECKS
from czb_core.types import Organism
from pages.common import all_reports, current_user, dataset_header, job_manager, recall, remember, require_dataset

STATUS_STYLE = {"ok": "background-color:#c8e6c9", "info": "background-color:#c8e6c9",
                "warning": "background-color:#ffe0b2", "error": "background-color:#ffcdd2",
                "not run": "color:#9e9e9e"}
STATUS_TEXT = {"ok": "ok", "info": "ok", "warning": "warning", "error": "error", "not run": "—"}

st.title("Validate")
record = require_dataset()
header = dataset_header(str(record.path), record.sha256)

organism_names = ["detect from gene ids"] + [o.latin_name for o in Organism]
chosen = recall("organism")
organism_name = st.selectbox("Organism", organism_names,
                             index=organism_names.index(chosen) if chosen in organism_names else 0)
remember("organism", None if organism_name == organism_names[0] else organism_name)
organism = None if organism_name == organism_names[0] else Organism.parse(organism_name)


reports = all_reports(str(record.path), record.sha256, organism.latin_name if organism else None)
matrix = pd.DataFrame(
    {key: {check: rep["checks"].get(check, "not run") for check in CHECKS} for key, rep in reports.items()}
).T
matrix.insert(0, "verdict", ["blocked" if not rep["ok"] else "can run" for rep in reports.values()])
st.subheader("Compatibility")
st.dataframe(
    matrix.style.map(lambda v: STATUS_STYLE.get(v, ""), subset=list(CHECKS))
    .map(lambda v: STATUS_STYLE["error" if v == "blocked" else "ok"], subset=["verdict"]).format(
        lambda v: STATUS_TEXT.get(v, v), subset=list(CHECKS)),
    use_container_width=True,
)

for key, rep in reports.items():
    problems = [p for p in rep["problems"] if p["severity"] != "info"]
    label = f"{key}: " + ("can run" if rep["ok"] else f"{sum(p['severity'] == 'error' for p in problems)} blocking")
    with st.expander(label, expanded=not rep["ok"]):
        for fact, value in rep["facts"].items():
            st.write(f"**{fact}:** {value}")
        for p in rep["problems"]:
            show = {"error": st.error, "warning": st.warning, "info": st.info}[p["severity"]]
            show(f"**{p['check']}** · {p['message']}" + (f"\n\n**Fix:** {p['fix']}" if p["fix"] else ""))

st.subheader("Fixes")
st.caption("Each fix writes a new version of the dataset; the original file is never changed.")
fixes = job_manager().fixes


def start_fix(fix: str, **args) -> None:
    remember("fix", fixes.submit(record.sha256, fix, owner=current_user(), **args))


@st.fragment(run_every="2s")
def fix_panel(fix_id: str) -> None:
    try:
        result = fixes.result(fix_id)
    except KeyError:  # the server restarted: the fix is gone, the dataset is unchanged
        remember("fix", None)
        return
    except CzbError as exc:
        st.error(str(exc))
        remember("fix", None)
        return
    if result is None:
        st.info("Applying the fix…")
        return
    remember("fix", None)
    if result.mapping_csv is not None:
        st.session_state["mapping_report"] = (result.mapping_summary, result.mapping_csv)
    remember("dataset", result.record.sha256)
    st.rerun(scope="app")


with st.expander("Use a var column as the gene names"):
    column = st.selectbox("var column", list(header.var.columns) or ["(none)"], key="fix_column")
    if st.button("Create version", key="fix_column_go", disabled=header.var.empty):
        start_fix("var_column_as_genes", column=column)

with st.expander("Map gene symbols to Ensembl ids (human)"):
    source = st.selectbox("Symbols are in", ["var_names"] + list(header.var.columns), key="fix_symbols")
    if st.button("Map and create version", key="fix_symbols_go"):
        start_fix("symbols_to_ids", column=None if source == "var_names" else source)
    if "mapping_report" in st.session_state:
        summary, csv = st.session_state["mapping_report"]
        st.write(summary)
        st.download_button("Download the mapping report (CSV)", csv, "gene_mapping_report.csv", "text/csv")

with st.expander("Build a batch key from obs columns"):
    chosen_cols = st.multiselect("obs columns", list(header.obs.columns), key="fix_batch_cols")
    key = st.text_input("New obs column", "batch", key="fix_batch_key")
    if st.button("Create version", key="fix_batch_go", disabled=not chosen_cols):
        start_fix("batch_key", columns=chosen_cols, key=key)

if recall("fix"):
    fix_panel(recall("fix"))

st.page_link("pages/run.py", label="Next: run a model", icon="▶️")
