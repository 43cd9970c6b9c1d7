"""2. Validate: the dataset's species and gene ids, one verdict per model, each problem once with its fix.

A fix that changes the data makes a new dataset version (the original is never changed); a fix that is
a run setting (scVI's batch column) is kept in the session under "run_params:<model>" for the Run page,
and this page re-validates that model with it.
"""

import json

import pandas as pd
import streamlit as st

from czb_core.errors import CzbError
from czb_core.models.compatibility import check_variant
from czb_core.models.registry import discover_models
from czb_core.schema.data_manager import ENSEMBL_COLUMNS, SYMBOL_COLUMNS, UNASSIGNED, detect_organism_of
from czb_core.schema.report import CHECKS, Severity, ValidationReport
from czb_core.schema.species import GeneIdSystem
from czb_core.schema.summary import group_problems, split_report_key, summarize_by_model
from czb_core.tasks import suggest_columns
from czb_core.types import Organism
from pages.common import (
    all_reports,
    dataset_header,
    job_manager,
    recall,
    remember,
    require_dataset,
    run_params_key,
    scope,
    workspace,
)

STATUS_ICON = {"ready": ":material/check_circle:", "pending": ":material/download:", "blocked": ":material/block:"}
CELL_TEXT = {"ok": "ok", "info": "ok", "warning": "warning", "error": "error", "not run": "·"}
CELL_STYLE = {"ok": "background-color:#c8e6c9", "warning": "background-color:#ffe0b2",
              "error": "background-color:#ffcdd2", "·": "color:#9e9e9e"}
ROW_PX = 35  # a dataframe row: the matrix's height follows its rows, so it never scrolls inside
DETECT = "detect from the gene names"


def stored_params(model: str) -> dict:
    """Run settings chosen here for `model` (the Run page starts its form from them)."""
    return dict(st.session_state.get(run_params_key(model), {}))


@st.cache_data(max_entries=32, show_spinner="Checking the model with your settings…")
def reports_with_params(path: str, sha256: str, organism_latin, model: str, params_json: str) -> dict[str, dict]:
    """Every variant of one model checked with the run settings chosen on this page."""
    header = dataset_header(path, sha256)
    config = discover_models()[model]
    organism = Organism.parse(organism_latin) if organism_latin else None
    out = {}
    for variant in config.variants:
        try:
            report = check_variant(header, config, variant, organism, json.loads(params_json))
        except CzbError as exc:  # settings this variant refuses
            report = ValidationReport(model=config.display_name, variant=variant)
            report.add("parameters", "bad_run_params", Severity.ERROR, str(exc), "change or clear the settings")
        out[f"{model} / {variant}"] = report.to_dict()
    return out


@st.cache_resource
def models_with_batch_param() -> frozenset[str]:
    """Models whose runs take a `batch_key` (a batch column, or one constant batch)."""
    return frozenset(name for name, config in discover_models().items()
                     if any("batch_key" in config.load_implementation().param_schema(config.variant(v)).params
                            for v in config.variants))


def set_organism(dataset_id: str, latin: str) -> None:
    workspace().set_organism(dataset_id, latin, scope())


def start_fix(fix: str, **args) -> None:
    """Submit a fix to the background runner; the panel at the top follows it."""
    remember("fix", job_manager().fixes.submit(record.id, fix, owner=scope(), **args))
    st.session_state.pop("mapping_report", None)
    st.rerun()


def store_params(model: str, **params) -> None:
    st.session_state[run_params_key(model)] = {**stored_params(model), **params}
    st.rerun()


@st.fragment(run_every="2s")
def fix_panel(fix_id: str) -> None:
    try:
        result = job_manager().fixes.result(fix_id)
    except KeyError:  # the server restarted: the fix is gone, the dataset is unchanged
        remember("fix", None)
        return
    except CzbError as exc:
        st.error(str(exc))
        remember("fix", None)
        return
    if result is None:
        st.info("Applying the fix: a new version of the dataset is being written…")
        return
    remember("fix", None)
    if result.mapping_csv is not None:
        st.session_state["mapping_report"] = (result.record.id, result.mapping_summary, result.mapping_csv)
    remember("dataset", result.record.id)
    st.rerun(scope="app")


# -- the actions that resolve a problem (see czb_core.schema.summary.FIX_ACTIONS) ----------------------


def first_present(candidates, options) -> int:
    return next((options.index(c) for c in candidates if c in options), 0)


def action_map_symbols(key: str) -> None:
    sources = ["var_names"] + list(header.var.columns)
    start = 0 if detection.system is GeneIdSystem.SYMBOL else first_present(SYMBOL_COLUMNS, sources)
    left, right = st.columns([1, 2], vertical_alignment="bottom")
    source = left.selectbox("Symbols are in", sources, index=start, key=f"{key}_source")
    if dataset_organism is None:
        right.caption("Set the organism first: symbols are mapped within the dataset's own species.")
        return
    if right.button(f"Map symbols to {dataset_organism.latin_name} Ensembl ids", key=f"{key}_go", type="primary"):
        start_fix("symbols_to_ids", column=None if source == "var_names" else source,
                  organism=dataset_organism.latin_name)


def action_var_column(key: str, code: str) -> None:
    columns = list(header.var.columns)
    if not columns:
        return
    wanted = SYMBOL_COLUMNS if code == "ids_not_symbols" else ENSEMBL_COLUMNS
    left, right = st.columns([1, 2], vertical_alignment="bottom")
    column = left.selectbox("var column", columns, index=first_present(wanted, columns), key=f"{key}_column")
    if right.button("Use this column as the gene names", key=f"{key}_go"):
        start_fix("var_column_as_genes", column=column)


def action_set_organism(key: str) -> None:
    names = [o.latin_name for o in Organism]
    guess = detection.organism or next(iter(detection.candidates), None)
    left, right = st.columns([1, 2], vertical_alignment="bottom")
    chosen = left.selectbox("Organism", names, index=names.index(guess.latin_name) if guess else 0, key=f"{key}_org")
    right.button("Set the organism", key=f"{key}_go", on_click=set_organism, args=(record.id, chosen))


def action_batch_params(key: str, models: tuple[str, ...], offered: set[str]) -> None:
    """A batch column (or one constant batch) for each listed model that takes one, offered once per model
    (one choice resolves every batch column the model misses)."""
    takers = [m for m in models if m in models_with_batch_param()]
    options = list(header.obs.columns) + [UNASSIGNED]
    for model in takers:
        if model in offered:
            st.caption(f"The batch column chosen above for {display_names[model]} resolves this too.")
            continue
        offered.add(model)
        left, right = st.columns([1, 2], vertical_alignment="bottom")
        choice = left.selectbox(f"Batch column for {display_names[model]} runs", options,
                                index=first_present([roles.batch, UNASSIGNED], options), key=f"{key}_{model}_batch",
                                format_func=lambda c: "one constant batch" if c == UNASSIGNED else c)
        if right.button(f"Use it for {display_names[model]} runs", key=f"{key}_{model}_go"):
            store_params(model, batch_key=choice)


def usable_actions(group) -> list[str]:
    """The group's actions this dataset and these models allow (a var column to choose, a model that
    takes a batch column)."""
    return [a for a in group.actions
            if not (a == "var_column" and header.var.empty)
            and not (a == "batch_params" and not set(group.models) & models_with_batch_param())]


def show_group(group, key: str, offered: set[str]) -> None:
    """One problem item: its message(s), where it applies, then the actions that fix it (or the written
    fix when the page has none)."""
    actions = usable_actions(group)
    shared, parts = group.split_messages()
    if len(parts) == 1:
        text = f"**{group.check}** · {parts[0]}  \n"
    else:
        text = f"**{group.check}** · {shared}\n\n" + "\n".join(f"- {m}" for m in parts) + "\n\n"
    text += f"*Applies to:* {group.applies_to}"
    if group.fix and not actions:
        text += f"  \n*Fix:* {group.fix}"
    (st.error if group.severity is Severity.ERROR else st.warning)(text)
    for action in actions:
        if action == "map_symbols":
            action_map_symbols(f"{key}_sym")
        elif action == "var_column":
            action_var_column(f"{key}_col", group.code)
        elif action == "set_organism":
            action_set_organism(f"{key}_org")
        elif action == "batch_params":
            action_batch_params(f"{key}_batch", group.models, offered)


def show_matrix(reports: dict[str, ValidationReport]) -> None:
    """Every variant x every check; as tall as its rows, so nothing hides in an inner scroll box."""
    matrix = pd.DataFrame({key: {c: CELL_TEXT[r.status(c)] for c in CHECKS} for key, r in reports.items()}).T
    matrix.insert(0, "verdict", [r.verdict for r in reports.values()])
    st.dataframe(matrix.style.map(lambda v: CELL_STYLE.get(v, ""), subset=list(CHECKS)),
                 height=ROW_PX * (len(matrix) + 1) + 3, width="stretch")


# -- the page -----------------------------------------------------------------------------------------

st.title("Validate")
record = require_dataset()
header = dataset_header(str(record.path), record.sha256)
detection = detect_organism_of(header)
roles = suggest_columns(header.obs)

genes, choose = st.columns([3, 1], vertical_alignment="bottom")
genes.markdown(f"**Genes:** {detection.describe()}")
organism_names = [DETECT] + [o.latin_name for o in Organism]
organism_name = choose.selectbox("Organism of this dataset", organism_names,
                                 index=organism_names.index(record.organism) if record.organism in organism_names
                                 else 0)
chosen = None if organism_name == DETECT else organism_name
if chosen != record.organism:
    record = workspace().set_organism(record.id, chosen, scope())
organism = Organism.parse(chosen) if chosen else None
dataset_organism = organism or detection.organism

if recall("fix"):
    fix_panel(recall("fix"))
mapping = st.session_state.get("mapping_report")
if mapping and mapping[0] == record.id:
    _, summary, csv = mapping
    note, download = st.columns([3, 1], vertical_alignment="center")
    note.success(f"New version created. {summary}")
    download.download_button("Gene mapping report (CSV)", csv, "gene_mapping_report.csv", "text/csv")

# The report lives in one slot. While a re-validation computes, the slot holds only the validation's
# spinner (an element replacing the whole report), so the old report is not shown greyed out beneath it.
slot = st.empty()
with slot:
    organism_latin = organism.latin_name if organism else None
    report_dicts = dict(all_reports(str(record.path), record.sha256, organism_latin))
    for model in {split_report_key(k)[0] for k in report_dicts}:
        params = stored_params(model)
        if params:
            report_dicts.update(reports_with_params(str(record.path), record.sha256, organism_latin, model,
                                                    json.dumps(params, sort_keys=True)))
reports = {key: ValidationReport.from_dict(d) for key, d in report_dicts.items()}
with slot.container():
    lines = summarize_by_model(reports)
    display_names = {line.model: line.display_name for line in lines}

    st.subheader("Models")
    for line in lines:
        with st.expander(line.text, expanded=False, icon=STATUS_ICON[line.status]):
            for variant, verdict in line.verdicts:
                report = reports[f"{line.model} / {variant}"]
                why = "; ".join(dict.fromkeys(p.check for p in report.errors))
                st.markdown(f"- `{variant}`: {verdict}" + (f" ({why})" if why else ""))
            best = reports[f"{line.model} / {line.best_variant}"]
            st.caption(" · ".join(f"{k}: {v}" for k, v in best.facts.items()))
            infos = [p.message for p in best.problems if p.severity is Severity.INFO]
            if infos:
                st.caption(" ".join(infos))
    for model in display_names:
        params = stored_params(model)
        if params:
            text, clear = st.columns([3, 1], vertical_alignment="center")
            text.info(f"{display_names[model]} runs will use "
                      + ", ".join(f"`{k}` = {v}" for k, v in params.items()) + " (set on this page).")
            if clear.button("Clear", key=f"clear_{model}"):
                st.session_state.pop(run_params_key(model), None)
                st.rerun()

    groups = group_problems(reports)
    st.subheader(f"Problems ({len(groups)})" if groups else "No problems")
    batch_offered: set[str] = set()
    for i, group in enumerate(groups):
        show_group(group, f"p{i}", batch_offered)

    with st.expander("Compatibility matrix: every variant × every check"):
        show_matrix(reports)

    with st.expander("Other changes to the dataset (each makes a new version)"):
        st.markdown("**Build a batch column from obs columns**")
        cols, name, go = st.columns([2, 1, 1], vertical_alignment="bottom")
        batch_cols = cols.multiselect("obs columns", list(header.obs.columns), key="fix_batch_cols")
        batch_name = name.text_input("New obs column", "batch", key="fix_batch_key")
        if go.button("Create version", key="fix_batch_go", disabled=not batch_cols):
            start_fix("batch_key", columns=batch_cols, key=batch_name)
        st.markdown("**Use a var column as the gene names**")
        action_var_column("fix_any_col", "")
        st.markdown("**Map gene symbols to Ensembl ids**")
        action_map_symbols("fix_any_sym")
        st.markdown("**Cross-species experiment: another species' orthologs (not a fix)**")
        st.caption("Replaces each gene by its one-to-one ortholog in the target species, so a model of that "
                   "species can read the cells. The cells stay what they are: results are a cross-species "
                   "experiment, and the report says how many genes survive.")
        target_box, go = st.columns([1, 2], vertical_alignment="bottom")
        target = target_box.selectbox("Target species", [o.latin_name for o in (Organism.HUMAN, Organism.MOUSE)
                                                         if o is not dataset_organism], key="fix_orth_target")
        if go.button("Map to orthologs and create a labelled version", key="fix_orth_go",
                     disabled=dataset_organism is None):
            start_fix("orthologs", source=dataset_organism.latin_name, target=target)

st.page_link("pages/run.py", label="Next: run a model", icon="▶️")
