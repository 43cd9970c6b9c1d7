"""2. Validate: every model x every check, green / amber / red, each problem with its fix."""

import pandas as pd
import streamlit as st

from czb_core.errors import CzbError
from czb_core.schema.report import CHECKS
from czb_core.types import Organism
from czb_core.schema.data_manager import detect_organism_of
from pages.common import (all_reports, current_user, dataset_header, job_manager, recall, remember, require_dataset,
                          scope, workspace)

STATUS_STYLE = {"ok": "background-color:#c8e6c9", "info": "background-color:#c8e6c9",
                "warning": "background-color:#ffe0b2", "error": "background-color:#ffcdd2",
                "not run": "color:#9e9e9e"}
STATUS_TEXT = {"ok": "ok", "info": "ok", "warning": "warning", "error": "error", "not run": "—"}

st.title("Validate")
record = require_dataset()
header = dataset_header(str(record.path), record.sha256)

detection = detect_organism_of(header)
st.write(f"**Genes:** {detection.describe()}")
organism_names = ["detect from the gene names"] + [o.latin_name for o in Organism]
organism_name = st.selectbox("Organism of this dataset", organism_names,
                             index=organism_names.index(record.organism) if record.organism in organism_names else 0)
chosen = None if organism_name == organism_names[0] else organism_name
if chosen != record.organism:
    record = workspace().set_organism(record.sha256, chosen, scope())
organism = Organism.parse(chosen) if chosen else None
dataset_organism = organism or detection.organism


reports = all_reports(str(record.path), record.sha256, organism.latin_name if organism else None)
matrix = pd.DataFrame(
    {key: {check: rep["checks"].get(check, "not run") for check in CHECKS} for key, rep in reports.items()}
).T
matrix.insert(0, "verdict", [rep["verdict"] for rep in reports.values()])
st.subheader("Compatibility")
st.dataframe(
    matrix.style.map(lambda v: STATUS_STYLE.get(v, ""), subset=list(CHECKS))
    .map(lambda v: STATUS_STYLE["error" if v == "blocked" else "warning" if "once" in v else "ok"],
         subset=["verdict"]).format(
        lambda v: STATUS_TEXT.get(v, v), subset=list(CHECKS)),
    use_container_width=True,
)

for key, rep in reports.items():
    problems = [p for p in rep["problems"] if p["severity"] != "info"]
    label = f"{key}: " + (rep["verdict"] if rep["ok"] else f"{sum(p['severity'] == 'error' for p in problems)} blocking")
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

with st.expander("Map gene symbols to Ensembl ids"):
    source = st.selectbox("Symbols are in", ["var_names"] + list(header.var.columns), key="fix_symbols")
    if dataset_organism is None:
        st.caption("Set the organism of this dataset first: symbols are mapped within its own species.")
    else:
        st.caption(f"Symbols are mapped to {dataset_organism.latin_name} genes, case-insensitively.")
    if st.button("Map and create version", key="fix_symbols_go", disabled=dataset_organism is None):
        start_fix("symbols_to_ids", column=None if source == "var_names" else source,
                  organism=dataset_organism.latin_name)
    if "mapping_report" in st.session_state:
        summary, csv = st.session_state["mapping_report"]
        st.write(summary)
        st.download_button("Download the mapping report (CSV)", csv, "gene_mapping_report.csv", "text/csv")

with st.expander("Cross-species experiment: use another species' orthologs (not a fix)"):
    st.caption("Replaces each gene by its one-to-one ortholog in the target species, so a model of that species "
               "can read the cells. The cells stay what they are: results are a cross-species experiment, and "
               "the report says how many genes survive.")
    target = st.selectbox("Target species", [o.latin_name for o in (Organism.HUMAN, Organism.MOUSE)
                                             if o is not dataset_organism], key="fix_orth_target")
    if st.button("Map to orthologs and create a labelled version", key="fix_orth_go",
                 disabled=dataset_organism is None):
        start_fix("orthologs", source=dataset_organism.latin_name, target=target)

with st.expander("Build a batch key from obs columns"):
    chosen_cols = st.multiselect("obs columns", list(header.obs.columns), key="fix_batch_cols")
    key = st.text_input("New obs column", "batch", key="fix_batch_key")
    if st.button("Create version", key="fix_batch_go", disabled=not chosen_cols):
        start_fix("batch_key", columns=chosen_cols, key=key)

if recall("fix"):
    fix_panel(recall("fix"))

st.page_link("pages/run.py", label="Next: run a model", icon="▶️")
