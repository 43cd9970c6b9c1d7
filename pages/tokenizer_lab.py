"""Tokenizer lab: which way of turning cells into tokens generalises to cells of a group never trained on?

Pick the label to predict and a split column whose values make the training, validation and test cells;
pick tokenizers (presets, or one composed from Fg, Fe and Fc) and seeds. Every tokenizer and seed is a
training job on the device queue (`JobManager.submit_lab`), so it survives a refresh; the jobs panel polls
every `POLL_S` seconds, only while a training is active. The results gather the finished trainings of one
experiment (same split and settings, chosen in the URL as `?experiment=<id>`): test accuracy and MCC per
tokenizer over seeds, the best run's confusion matrix, the learning curves, CSV files and trained models.
"""

from datetime import datetime, timezone

import pandas as pd
import streamlit as st

from czb_core.errors import CzbError
from czb_core.io.exports import run_file_stem
from czb_core.progress import ACTIVE, progress_fraction
from czb_core.service.jobs.lab import (
    collect_lab_result,
    describe_experiment,
    find_model_file,
    find_split_columns,
    format_job_row,
    group_finished_experiments,
    identify_experiment,
    melt_summary,
    select_lab_jobs,
)
from czb_core.tasks import suggest_columns
from czb_core.tokenizer_lab import LAB_MODEL, fe, fg
from czb_core.tokenizer_lab.lab import LabSplit, split_problems
from czb_core.tokenizer_lab.model import ModelShape
from czb_core.tokenizer_lab.presets import FC_CHOICES, PRESETS, compose
from czb_core.tokenizer_lab.train import TrainConfig
from czb_core.viz.charts import confusion_heatmap, lab_metric_bars, learning_curves
from pages.common import current_user, dataset_header, job_manager, recall, remember, require_dataset, scope

POLL_S = 3
CURVES = {"val_mcc": "validation MCC", "val_accuracy": "validation accuracy", "train_loss": "training loss"}

st.title("Tokenizer lab")
st.caption("Train a small transformer classifier per tokenizer and seed on your cells, and see which tokenizer "
           "carries over to held-out groups (e.g. a tissue never seen in training).")
record = require_dataset()
manager = job_manager()
header = dataset_header(str(record.path), record.sha256)
columns = list(header.obs.columns)
roles = suggest_columns(header.obs)

# -- what to predict, and on which cells ------------------------------------------------------------------
c1, c2 = st.columns(2)
label_key = c1.selectbox("Label column (what the classifier predicts)", columns,
                         index=columns.index(roles.label) if roles.label in columns else 0)
splittable = find_split_columns(header.obs, label_key)
if not splittable:
    st.warning("No other obs column has three to 200 values to make training, validation and test cells of.")
    st.stop()
split_key = c2.selectbox("Split column (its values make the training, validation and test cells)", splittable)
values = sorted(header.obs[split_key].dropna().astype(str).unique())
t1, t2, t3 = st.columns(3)
train = t1.multiselect("Train on", values, default=values[:1], key=f"train_{split_key}")
val = t2.multiselect("Validate on (early stopping)", values, default=values[1:2], key=f"val_{split_key}")
test = t3.multiselect("Test on", values, default=values[2:3], key=f"test_{split_key}")
split = LabSplit(label_key, split_key, tuple(train), tuple(val), tuple(test))
problems = split_problems(split)
for problem in problems:
    st.error(f"Split: {problem}.")

# -- tokenizers -------------------------------------------------------------------------------------------
st.markdown("**Tokenizers**")
presets = st.multiselect("Presets", list(PRESETS), default=["geneformer", "scgpt"],
                         help="; ".join(f"{name}: {spec.describe()}" for name, spec in PRESETS.items()))
tokenizers = [PRESETS[name] for name in presets]
if st.checkbox("Compose one more from Fg, Fe and Fc"):
    f1, f2, f3, f4 = st.columns(4)
    fg_kind = f1.selectbox("Fg (gene identity)", fg.KINDS)
    fe_kind = f2.selectbox("Fe (expression value)", fe.KINDS)
    fc_kind = f3.selectbox("Fc (cell sentence)", list(FC_CHOICES))
    max_length = f4.number_input("Max length (0: the Fc's own)", min_value=0, max_value=16384, value=0, step=64)
    table = ""
    if fg_kind != "identity":
        hint = " — empty: the cached ESM-2 table of the dataset's species" if fg_kind == "esm2" else ""
        table = st.text_input(f"Gene table file on the server (under the allowed data folders){hint}")
    try:
        fg_text = f"{fg_kind}:{manager.workspace.resolve_server_path(table.strip())}" if table.strip() else fg_kind
        tokenizers.append(compose(fg_text, fe_kind, fc_kind, int(max_length) or None))
    except CzbError as exc:
        st.error(f"Composed tokenizer: {exc}")
        problems.append(str(exc))
if not tokenizers:
    st.info("Pick at least one tokenizer.")

# -- training -----------------------------------------------------------------------------------------------
s1, s2, s3 = st.columns(3)
n_seeds = s1.number_input("Seeds per tokenizer", min_value=1, max_value=20, value=3)
epochs = s2.number_input("Epochs at most", min_value=1, max_value=1000, value=50,
                         help="training stops early after 5 epochs without a better validation MCC")
device = s3.selectbox("Device", ["auto", *manager.devices],
                      help="auto: the least loaded GPU when the server has one, else the CPU")
with st.expander("More training settings"):
    m1, m2, m3 = st.columns(3)
    batch_size = m1.number_input("Batch size", min_value=1, max_value=4096, value=32)
    lr = m2.number_input("Learning rate", min_value=1e-6, max_value=1.0, value=2e-3, step=1e-4, format="%.4g")
    width = m3.number_input("Model width (muP: the learning rate carries over)", min_value=16, max_value=2048,
                            value=128, step=16)
try:
    config = TrainConfig(epochs=int(epochs), batch_size=int(batch_size), lr=float(lr),
                         shape=ModelShape(d_model=int(width)))
except ValueError as exc:
    st.error(f"Training settings: {exc}")
    problems.append(str(exc))
    config = None

n_runs = len(tokenizers) * int(n_seeds)
if st.button(f"Start {n_runs} training{'s' if n_runs != 1 else ''}", type="primary",
             disabled=bool(problems) or not tokenizers):
    try:
        submitted = [manager.submit_lab(record.id, split, tokenizer, seed, config, organism=record.organism,
                                        owner=current_user(), device=device)
                     for tokenizer in tokenizers for seed in range(int(n_seeds))]
    except CzbError as exc:
        st.error(str(exc))
    else:
        cached = sum(job.status == "done" for job in submitted)
        queued = len(submitted) - cached
        done_already = f"; {cached} already done (cached)" if cached else ""
        st.success(f"{queued} training{'s' if queued != 1 else ''} queued{done_already}")
        remember("experiment", identify_experiment(submitted[0].spec.params))


# -- the jobs -------------------------------------------------------------------------------------------------
def jobs_section(polling: bool) -> None:
    """The lab's jobs with their progress (the epoch and validation MCC while training) and cancel buttons,
    from one read of the store. Once nothing is active, the whole page reruns once: the results update and
    the polling stops."""
    jobs = select_lab_jobs(manager.list(dataset_id=record.id, owner=scope()))
    if not jobs:
        st.caption("No trainings yet.")
        return
    now = datetime.now(timezone.utc)
    rows = {job.id: format_job_row(job, now) for job in jobs}
    st.dataframe(pd.DataFrame(rows.values()), hide_index=True, width="stretch")
    active = [job for job in jobs if job.status in ACTIVE]
    if active and st.button("Cancel every active training", key="cancel_all"):
        for job in active:
            manager.cancel(job.id, scope())
    for job in active:
        bar, button = st.columns([6, 1])
        bar.progress(progress_fraction(job.status, job.done, job.total) or 0.0,
                     text=f"{job.variant} · seed {job.spec.params['seed']}: {rows[job.id]['progress']}")
        if button.button("Cancel", key=f"cancel_{job.id}"):
            manager.cancel(job.id, scope())
    if polling and not active:
        st.rerun(scope="app")


st.subheader("Trainings on this dataset")
polling = any(job.status in ACTIVE
              for job in select_lab_jobs(manager.list(dataset_id=record.id, owner=scope())))
st.fragment(jobs_section, run_every=POLL_S if polling else None)(polling)

# -- results ------------------------------------------------------------------------------------------------
st.subheader("Results")
experiments = group_finished_experiments(manager.list(dataset_id=record.id, owner=scope()))
if not experiments:
    st.info("No finished training on this dataset yet.")
    st.stop()
ids = list(experiments)
wanted = recall("experiment")
chosen = st.selectbox("Experiment (same split and training settings)", ids,
                      index=ids.index(wanted) if wanted in ids else 0,
                      format_func=lambda key: describe_experiment(experiments[key][0].spec.params))
remember("experiment", chosen)
result = collect_lab_result(experiments[chosen])
for warning in result.warnings:
    st.warning(warning)
stem = run_file_stem(record.name, LAB_MODEL, "experiment", chosen)

summary = result.summary()
st.dataframe(summary.style.format(precision=4), hide_index=True, width="stretch", key="lab_summary")
st.plotly_chart(lab_metric_bars(melt_summary(summary)), width="stretch", key="lab_metrics")

best = result.best_run()
left, right = st.columns(2)
with left:
    st.markdown(f"**Confusion matrix of the best run**: {best.tokenizer}, seed {best.seed} "
                f"(test MCC {best.test_mcc:.3f}, accuracy {best.test_accuracy:.3f})")
    confusion = result.best_confusion()
    st.plotly_chart(confusion_heatmap(confusion, cells="test cells"), width="stretch", key="lab_confusion")
with right:
    curve = st.radio("Learning curves", list(CURVES), format_func=CURVES.get, horizontal=True)
    curves = result.curves()
    st.plotly_chart(learning_curves(curves, curve, CURVES[curve]), width="stretch", key="lab_curves")

d1, d2, d3, d4 = st.columns(4)
d1.download_button("Summary (CSV)", summary.to_csv(index=False), f"{stem}.summary.csv", "text/csv")
d2.download_button("Runs (CSV)", result.runs_table().to_csv(index=False), f"{stem}.runs.csv", "text/csv")
d3.download_button("Learning curves (CSV)", curves.to_csv(index=False), f"{stem}.curves.csv", "text/csv")
d4.download_button("Best confusion matrix (CSV)", confusion.to_csv(), f"{stem}.confusion_best.csv", "text/csv")
with st.expander("Trained models (PyTorch files: load with `torch.load(path, weights_only=True)`)"):
    for job in experiments[chosen]:
        seed = job.spec.params["seed"]
        path = find_model_file(job)
        st.download_button(f"{job.variant} · seed {seed}", lambda path=path: path.read_bytes(),
                           f"{run_file_stem(record.name, LAB_MODEL, f'{job.variant}-seed{seed}', job.id)}.pt",
                           "application/octet-stream", key=f"model_{job.id}")
