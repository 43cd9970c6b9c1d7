"""3. Run: pick a model and variant, set parameters, start a job, watch it, cancel or retry it.

The job runs in the server's worker, not in this script: clicking around, refreshing or closing the tab
does not stop it. The selected job is in the URL (`?job=<id>`). Only the jobs panel reruns while a job is
active, every `POLL_S` seconds, from one read of the job store: polling must cost the server next to
nothing, since every open Run tab polls and the jobs share the machine.
"""

from datetime import datetime, timezone
from typing import Optional

import pandas as pd
import streamlit as st

from czb_core.errors import CzbError
from czb_core.models.compatibility import check_variant
from czb_core.models.registry import discover_models
from czb_core.models.variant_weights import VariantWeights
from czb_core.progress import ACTIVE, format_duration, progress_fraction, progress_line, queue_line, seconds_since
from czb_core.schema.data_manager import DataManager
from czb_core.service.access import is_admin
from czb_core.service.jobs.kinds import kind_of
from czb_core.streaming.plan import plan_reading
from czb_core.tasks import NO_BATCH, MetricOptions, suggest_columns
from czb_core.types import Organism
from pages.common import (
    current_user,
    dataset_header,
    job_manager,
    recall,
    remember,
    require_dataset,
    run_params_key,
    scope,
)
from pages.params_form import parameter_form

POLL_S = 5

st.title("Run")
record = require_dataset()
manager = job_manager()
if (asked := recall("job")) and manager.get(asked, scope()) is None:  # gone, or another user's: "not found" either way
    st.warning(f"Job {asked} was not found.")
    remember("job", None)
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
    weights = variant_config.main_weights_uri
    if weights is None:
        weights_line = (f"to be given: download them from {variant_config.weights_from}"
                        if variant_config.weights_from else "none needed")
    else:
        from czb_core.models.weights import WeightsCache

        size = f"{variant_config.weights_size_mb:,.0f} MB, " if variant_config.weights_size_mb else ""
        weights_line = f"{size}{'cached' if WeightsCache().is_cached(weights) else 'not cached'} (`{weights}`)"
    st.markdown(
        f"- Organisms: {', '.join(card.organisms)}\n- Input: {card.expected_input}\n"
        f"- Embedding size: {config.embedding_dim(variant)}\n- Weights: {weights_line}\n- Licence: {card.licence}\n"
        f"- Citation: {card.citation}"
    )



@st.cache_data(max_entries=16, ttl=60, show_spinner="Reading the variant's training screen…")  # None until fetched
def perturbations_of(model: str, variant: str) -> Optional[list[str]]:
    config = discover_models()[model]
    return config.load_implementation()(config, variant).perturbation_choices()


def streams_by_default(config, variant: str) -> bool:
    """Whether the variant with its default parameters can read a matrix larger than memory."""
    return config.load_implementation()(config, variant).can_stream


def offered_values(implementation, config, variant: str) -> dict:
    """Parameters chosen from a list the variant knows: a prediction model's trained perturbations, once its
    training data is on this server (before that, the run fetches it and checks the name typed)."""
    if not hasattr(implementation, "perturbation_choices"):
        return {}
    choices = perturbations_of(config.name, variant)
    return {} if choices is None else {"perturbation": choices}


header = dataset_header(str(record.path), record.sha256)
roles = suggest_columns(header.obs)
try:
    reading = plan_reading(record.path, DataManager(header).matrix_location)
except (CzbError, OSError, KeyError):  # a 10x file or an unusual layout: read whole, as the run will say
    reading = None
if reading is not None and not reading.fits:
    how = ("this model reads it in row blocks (streamed), so it runs" if streams_by_default(config, variant) else
           "this model reads it whole, so the run would be refused; the PCA variants and the pretrained models "
           "stream")
    st.warning(f"Reading the matrix {reading.describe()}: {how}.")
elif reading is not None:
    st.caption(f"Reading the matrix {reading.describe()}.")
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
device = st.selectbox("Device", ["auto", *manager.devices],
                      help="auto: the least loaded GPU when the server has one, else the CPU")
implementation = config.load_implementation()
schema = implementation.param_schema(variant_config)
try:
    params = parameter_form(schema, columns, key_prefix=f"param_{model}_{variant}",
                            suggested={"batch_key": roles.batch}, chosen=st.session_state.get(run_params_key(model)),
                            offered=offered_values(implementation, config, variant))
    # validation with the chosen parameters: they can change what the model needs (e.g. batch columns)
    report = check_variant(header, config, variant, Organism.parse(organism_name) if organism_name else None,
                           params).to_dict()
except CzbError as exc:
    params, report = {}, {"ok": False, "problems": [{"severity": "error", "message": str(exc), "fix": ""}]}
# Weights with a download are fetched by the run itself (an offline server imports them first); weights
# without one must be imported (the check below blocks the run and says so). Either way the link leads there.
weights = VariantWeights.of(config, variant)
if weights.missing():
    import_first = not weights.has_download
    if not import_first:
        st.info("This variant's weights are not on this server yet: the run downloads them first. On a server "
                "without network, an admin imports them on the Weights page.")
    st.page_link("pages/weights.py", label=f"{'Import' if import_first else 'Download or import'} these weights on "
                 "the Weights page", icon="📦", query_params={"model": model, "variant": variant})
stream = False
if is_admin(current_user()):  # comparing the streamed path with the in-memory one on the same data
    stream = st.checkbox("Stream the matrix in row blocks, whatever its size (admin)",
                         help="Reads and embeds the cells chunk by chunk, as a dataset larger than memory is; "
                              "a separate cached result from the in-memory run (czb run --stream)")
blocked = not report["ok"]
if blocked:
    for problem in (p for p in report["problems"] if p["severity"] == "error"):
        st.error(problem["message"] + (f" Fix: {problem['fix']}" if problem["fix"] else ""))
    st.caption("A blocking check fails for this model and these parameters; 2. Validate lists the fixes.")
others = record.owner != current_user()  # an admin looking at another user's dataset
if others:
    st.info(f"This dataset is {record.owner}'s: runs on it are theirs to start. To run a model on the same "
            "file yourself, add it to your own datasets.")
submitted = st.button("Run", type="primary", disabled=blocked or others)
if submitted:
    try:
        job = manager.submit(record.id, model, variant, organism=organism_name, owner=current_user(),
                             params=params, metrics=metrics_options, device=device, score=score, stream=stream)
    except CzbError as exc:
        st.error(str(exc))
        st.stop()
    remember("job", job.id)
    if job.status == "done":
        st.success("This exact run already finished: showing the cached result (no recompute).")


def needs_polling(jobs, scores) -> bool:
    """Whether the panel must keep polling: a job of the list, or the scoring of the followed one, is active."""
    return any(j.status in ACTIVE for j in jobs) or any(s.status in ACTIVE for s in scores)


def followed(jobs):
    """The job in the URL when it is in the list, else the newest."""
    selected = recall("job")
    return next((j for j in jobs if j.id == selected), jobs[0])


def scores_of(job) -> list:
    return manager.scores(job.id, scope()) if job.status == "done" else []


def job_row(job) -> dict:
    line = progress_line(job.status, job.step, job.done, job.total)
    return {"job": job.id, "model": job.model, "variant": job.variant, "status": job.status,
            "progress": "" if job.status == "queued" else line, "created": job.created_at}


def job_timing(job, now: datetime) -> str:
    if job.status == "queued":
        return f"queued for {format_duration(seconds_since(job.created_at, now))}"
    if job.started_at is None:
        return ""
    end = datetime.fromisoformat(job.finished_at) if job.finished_at else now
    return f"ran for {format_duration(seconds_since(job.started_at, end))}"


def job_panel(job, scores, now: datetime) -> None:
    """One job as of the snapshot the table shows."""
    timing = job_timing(job, now)
    st.markdown(f"**Job {job.id}** · {job.model} / {job.variant} · **{job.status}**"
                + (f" · {timing}" if timing else ""))
    if job.status == "queued":
        mine, overall = manager.store.queue_position(job.id, scope()), manager.queue_position(job.id)
        if mine is not None and overall is not None:  # else a worker took it since: the next poll says so
            st.info(queue_line(mine, overall - mine, job.device))
    elif job.status == "running":
        line = progress_line(job.status, job.step, job.done, job.total, seconds_since(job.step_started_at, now))
        st.progress(progress_fraction(job.status, job.done, job.total) or 0.0, text=line)
    if job.status in ACTIVE and st.button("Cancel", key=f"cancel_{job.id}"):
        manager.cancel(job.id, scope())
    for note in job.notes:
        st.caption(f"Note: {note}")
    if job.status == "done":
        scoring = [s for s in scores if s.status in ACTIVE]
        if scoring:
            st.info(f"Embedding done; scoring beside the PCA baseline ({scoring[0].step or 'waiting'}).")
        else:
            st.success("Done." + (f" Metrics: {scores[0].error}" if scores and scores[0].error else ""))
        if kind_of(job.model).page == "tokenizer_lab":
            st.page_link("pages/tokenizer_lab.py", label="See it in the Tokenizer lab", icon="🧪")
        else:
            st.page_link("pages/results.py", label="See the results", icon="📊")
    elif job.status in ("failed", "cancelled", "interrupted"):
        st.caption(progress_line(job.status, job.step, job.done, job.total))
        (st.error if job.status == "failed" else st.warning)(job.error or job.message or job.status)
        if st.button("Run again", key=f"retry_{job.id}"):
            remember("job", manager.retry(job.id, scope()).id)
            st.rerun(scope="app")


def jobs_section(polling: bool) -> None:
    """The jobs table and the followed job's panel, from one read of the store, so that they never
    disagree. Once nothing is active, the whole page reruns once, which stops the polling."""
    jobs = manager.list(dataset_id=record.id, owner=scope())
    if not jobs:
        st.caption("No jobs yet.")
        return
    st.dataframe(pd.DataFrame([job_row(j) for j in jobs]), hide_index=True, width="stretch")
    ids = [j.id for j in jobs]
    chosen = st.selectbox("Follow job", ids, index=ids.index(followed(jobs).id))
    remember("job", chosen)
    job = jobs[ids.index(chosen)]
    scores = scores_of(job)
    job_panel(job, scores, datetime.now(timezone.utc))
    if polling and not needs_polling(jobs, scores):
        st.rerun(scope="app")


st.subheader("Jobs on this dataset")
listed = manager.list(dataset_id=record.id, owner=scope())
polling = bool(listed) and needs_polling(listed, scores_of(followed(listed)))
st.fragment(jobs_section, run_every=POLL_S if polling else None)(polling)
