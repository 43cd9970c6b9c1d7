"""3. Run: pick a model and variant, set parameters, start a job, watch it, cancel or retry it.

The job runs on the server's worker thread, not in this script: clicking around, refreshing or
closing the tab does not stop it. The selected job is in the URL (`?job=<id>`).
"""

import pandas as pd
import streamlit as st

from czb_core.errors import CzbError
from czb_core.models.compatibility import check_variant
from czb_core.models.registry import discover_models
from czb_core.tasks import NO_BATCH, MetricOptions, suggest_columns
from czb_core.types import Organism
from pages.common import current_user, dataset_header, job_manager, recall, remember, require_dataset, scope
from pages.params_form import parameter_form

st.title("Run")
record = require_dataset()
manager = job_manager()
models = discover_models()
organism_name = record.organism  # set on the Validate page for this dataset, else detected

left, right = st.columns([1, 1])
with left:
    model = st.selectbox("Model", list(models), format_func=lambda m: models[m].display_name)
    config = models[model]
    variant = st.selectbox("Variant", list(config.variants), index=list(config.variants).index(config.default_variant))
    variant_config = config.variant(variant)
with right:
    card = config.card
    st.markdown(f"**{config.display_name}** — {config.description}")
    weights = variant_config.weights.get("model") or next(iter(variant_config.weights.values()), None)
    if weights is None:
        weights_line = (f"to be given: download them from {variant_config.weights_from}"
                        if variant_config.weights_from else "none needed")
    else:
        from czb_core.models.weights import WeightsCache

        size = f"{variant_config.weights_size_mb:,.0f} MB, " if variant_config.weights_size_mb else ""
        weights_line = f"{size}{'cached' if WeightsCache().is_cached(weights) else 'not cached'} (`{weights}`)"
    st.markdown(
        f"- Organisms: {', '.join(card.organisms)}\n- Input: {card.expected_input}\n"
        f"- Embedding size: {card.embedding_dim}\n- Weights: {weights_line}\n- Licence: {card.licence}\n"
        f"- Citation: {card.citation}"
    )

header = dataset_header(str(record.path), record.sha256)
roles = suggest_columns(header.obs)
columns = list(header.obs.columns)
with st.expander("Metrics: which obs columns hold labels, batches and splits", expanded=False):
    st.caption("Every finished run is scored beside the PCA baseline of this dataset (cz-benchmarks tasks).")
    m1, m2 = st.columns(2)
    label_options = columns + ["(none: skip metrics)"]
    label_key = m1.selectbox("Label column", label_options,
                             index=columns.index(roles.label) if roles.label in columns else len(columns))
    batch_options = ["(none)"] + columns
    batch_key = m2.selectbox("Batch column", batch_options,
                             index=batch_options.index(roles.batch) if roles.batch in columns else 0)
    s1, s2, s3 = st.columns(3)
    split_key = s1.selectbox("Cross-split column (optional)", ["(none)"] + columns)
    split_values = [] if split_key == "(none)" else sorted(header.obs[split_key].dropna().astype(str).unique())
    train = s2.selectbox("Train on", split_values, disabled=not split_values)
    test = s3.selectbox("Test on", split_values, index=min(1, max(0, len(split_values) - 1)),
                        disabled=not split_values)
score = label_key in columns
split = split_values and train != test
metrics_options = MetricOptions(label_key=label_key if score else None,
                                batch_key=batch_key if batch_key in columns else NO_BATCH,  # "(none)" stays none
                                split_key=split_key if split else None, train=train if split else None,
                                test=test if split else None)

st.markdown("**Parameters**")
device = st.selectbox("Device", ["auto", "cpu", "cuda"], help="auto: the GPU when the server has one")
schema = config.load_implementation().param_schema(variant_config)
try:
    params = parameter_form(schema, columns, key_prefix=f"param_{model}_{variant}")
    # validation with the chosen parameters: they can change what the model needs (e.g. batch columns)
    report = check_variant(header, config, variant, Organism.parse(organism_name) if organism_name else None,
                           params).to_dict()
except CzbError as exc:
    params, report = {}, {"ok": False, "problems": [{"severity": "error", "message": str(exc), "fix": ""}]}
blocked = not report["ok"]
if blocked:
    for problem in (p for p in report["problems"] if p["severity"] == "error"):
        st.error(problem["message"] + (f" Fix: {problem['fix']}" if problem["fix"] else ""))
    st.caption("A blocking check fails for this model and these parameters; 2. Validate lists the fixes.")
submitted = st.button("Run", type="primary", disabled=blocked)
if submitted:
    try:
        job = manager.submit(record.sha256, model, variant, organism=organism_name, owner=current_user(),
                             params=params, metrics=metrics_options, device=device, score=score)
    except CzbError as exc:
        st.error(str(exc))
        st.stop()
    remember("job", job.id)
    if job.status == "done":
        st.success("This exact run already finished: showing the cached result (no recompute).")

st.subheader("Jobs on this dataset")
jobs = manager.list(dataset_sha256=record.sha256, owner=scope())
if jobs:
    st.dataframe(pd.DataFrame([{
        "job": j.id, "model": j.model, "variant": j.variant, "status": j.status,
        "queue position": manager.queue_position(j.id) if j.status == "queued" else None,
        "step": j.step, "progress": f"{100 * j.progress_fraction:.0f}%", "created": j.created_at,
    } for j in jobs]), hide_index=True, use_container_width=True)
    ids = [j.id for j in jobs]
    selected = recall("job")
    chosen = st.selectbox("Follow job", ids, index=ids.index(selected) if selected in ids else 0)
    remember("job", chosen)
else:
    st.caption("No jobs yet.")


@st.fragment(run_every="1s")
def job_panel(job_id: str) -> None:
    job = manager.get(job_id, scope())
    if job is None:
        st.warning(f"Job {job_id} was not found.")
        return
    st.markdown(f"**Job {job.id}** · {job.model} / {job.variant} · **{job.status}**")
    if job.status == "queued":
        st.info(f"Waiting: position {manager.queue_position(job.id)} in the {job.device} queue.")
    if job.status in ("queued", "running"):
        label = f"{job.step or 'starting'}"
        if job.total:
            label += f": {job.done:,.0f} / {job.total:,.0f}"
        st.progress(min(1.0, job.progress_fraction), text=label)
        if st.button("Cancel", key=f"cancel_{job.id}"):
            manager.cancel(job.id, scope())
    for note in job.notes:
        st.caption(f"Note: {note}")
    if job.status == "done":
        scores = manager.scores(job.id, scope())
        scoring = [s for s in scores if s.status in ("queued", "running")]
        if scoring:
            st.info(f"Embedding done; scoring beside the PCA baseline ({scoring[0].step or 'starting'}).")
        else:
            st.success("Done." + (f" Metrics: {scores[0].error}" if scores and scores[0].error else ""))
        st.page_link("pages/results.py", label="See the results", icon="📊")
    elif job.status in ("failed", "cancelled", "interrupted"):
        (st.error if job.status == "failed" else st.warning)(job.error or job.message or job.status)
        if st.button("Run again", key=f"retry_{job.id}"):
            remember("job", manager.retry(job.id, scope()).id)
            st.rerun(scope="app")
    if job.status == "done" and any(s.status in ("queued", "running") for s in manager.scores(job.id, scope())):
        return  # keep polling until the scoring is done too
    if job.is_finished and st.session_state.get("_last_status") not in (None, job.status):
        st.session_state["_last_status"] = job.status
        st.rerun(scope="app")
    st.session_state["_last_status"] = job.status


job_id = recall("job")
if job_id:
    job_panel(job_id)
