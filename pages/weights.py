"""Weights: which models' weights this server holds, and getting the missing ones before a user's run needs
them: download now, or import a folder (under the allowed data roots) or a tarball copied from elsewhere,
for servers without network. Downloads and imports run in the background (`WeightsTasks`), so clicking
elsewhere does not stop them. The logic is in `czb_core.models.weights_admin`; who may download, import or
cancel is `may_manage_weights` (with login: only `CZB_ADMINS`), everyone else sees the table.

`?model=<name>&variant=<name>` preselects a variant (the Run page links here with them).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from czb_core.config import get_settings
from czb_core.errors import CzbError
from czb_core.models.registry import discover_models
from czb_core.models.variant_weights import VariantWeights
from czb_core.models.weights_admin import (
    WeightsTasks,
    fetch_weights,
    import_weights,
    list_weights,
    source_sizes,
    with_source_sizes,
)
from czb_core.progress import format_amount
from czb_core.service.access import may_manage_weights
from pages.common import auth_configured, current_user, recall, remember

POLL_S = 1.0
ALL_PARTS = "all parts (one subfolder per part)"


@st.cache_resource
def weights_tasks() -> WeightsTasks:
    """One set of background downloads and imports per server process."""
    return WeightsTasks()


@st.cache_data(ttl=600, show_spinner="Asking the weights' sources for their sizes…")
def sizes_at_sources(uris: tuple[str, ...]) -> dict[str, int]:
    return source_sizes(uris)


def weights_table() -> pd.DataFrame:
    entries = list_weights(look_up_sizes=False)
    entries = with_source_sizes(entries, sizes_at_sources(tuple(sorted({e.uri for e in entries if not e.cached}))))
    return pd.DataFrame([{
        "model": e.model, "variant": e.variant, "part": e.role,
        "state": "cached" if e.cached else ("import only" if e.weights_from else "not cached"),
        "size": e.size_text, "sha256": e.sha256 or "", "source": e.weights_from or e.uri, "origin": e.origin,
    } for e in entries])


def task_panel(model: str, variant: str, manages: bool) -> None:
    """The variant's running download or import with a byte progress bar (and, for who `manages` weights, its
    Cancel); the page reloads when it ends."""
    task = weights_tasks().task(model, variant)
    if task is None:
        return
    if task.running:
        unit = f"{format_amount(task.done, 'bytes')} of {format_amount(task.total, 'bytes')}" if task.total else \
            format_amount(task.done, "bytes")
        st.progress(min(1.0, task.done / task.total) if task.total else 0.0, text=f"{task.step or task.kind}: {unit}")
        if manages and st.button("Cancel", key="cancel-weights"):
            task.cancel.cancel()
    elif task.error:
        st.error(f"The {task.kind} of {model} / {variant} failed: {task.error}")
    else:
        st.success(f"{model} / {variant}: {task.kind} complete, checksums recorded.")


@st.fragment(run_every=POLL_S)
def poll(model: str, variant: str, manages: bool) -> None:
    task = weights_tasks().task(model, variant)
    task_panel(model, variant, manages)
    if task is not None and task.finished:
        st.rerun(scope="app")


def start(kind: str, model: str, variant: str, work) -> None:
    try:
        weights_tasks().start(kind, model, variant, work)
    except CzbError as exc:
        st.error(str(exc))
    else:
        st.rerun()


st.title("Model weights")
st.caption("Weights are downloaded once into the server's cache and shared by every run. On a server without "
           "network, copy them onto it and import them here.")
st.dataframe(weights_table(), hide_index=True, width="stretch")

models = {name: config for name, config in discover_models().items()
          if any(VariantWeights.of(config, v).entries for v in config.variants)}
chosen_model = recall("model")
model = st.selectbox("Model", list(models), index=list(models).index(chosen_model) if chosen_model in models else 0,
                     format_func=lambda name: models[name].display_name)
config = models[model]
with_weights = [v for v in config.variants if VariantWeights.of(config, v).entries]
chosen_variant = recall("variant")
variant = st.selectbox("Variant", with_weights,
                       index=with_weights.index(chosen_variant) if chosen_variant in with_weights else 0)
remember("model", model)
remember("variant", variant)
parts = VariantWeights.of(config, variant).entries

user = current_user()
manages = may_manage_weights(user, login_required=auth_configured())
task = weights_tasks().task(model, variant)
if task is not None and task.running:
    poll(model, variant, manages)
    st.stop()
task_panel(model, variant, manages)

if not manages:
    st.info("Only the server's admins download or import weights here; ask one of them.")
    st.stop()

download, from_folder, from_upload = st.tabs(["Download now", "Import from a server folder", "Upload a tarball"])
with download:
    source = config.variant(variant).weights_from
    if source:
        st.write(f"These weights have no download: get them from {source}, then import them.")
    else:
        st.write("Source: " + ", ".join(f"`{uri}` ({role})" for role, uri in parts.items()))
        if st.button("Download now", type="primary"):
            start("download", model, variant, lambda progress, cancel: fetch_weights(model, variant, progress, cancel))

role_choices = [ALL_PARTS, *parts] if len(parts) > 1 else [None]
with from_folder:
    roots = ", ".join(str(r) for r in get_settings().data_roots) or "none configured (set CZB_DATA_ROOTS)"
    path = st.text_input("Folder (or .tar.gz) on this server", help=f"Allowed folders: {roots}",
                         placeholder="/data/weights/scgpt_human")
    st.caption(f"Allowed folders: {roots}. The folder holds the files in the layout of the weights' source; "
               "they are checked by the model before they replace anything in the cache.")
    role = st.selectbox("Part", role_choices, key="folder-part") if len(parts) > 1 else None
    if st.button("Import", type="primary", disabled=not path):
        part = None if role in (None, ALL_PARTS) else role
        start("import", model, variant, lambda progress, cancel: import_weights(
            model, variant, path, role=part, progress=progress, cancel=cancel, imported_by=user))
with from_upload:
    uploaded = st.file_uploader("A .tar.gz or .tar of the weights", type=["gz", "tgz", "tar"])
    role = st.selectbox("Part", role_choices, key="upload-part") if len(parts) > 1 else None
    if uploaded is not None and st.button("Import the upload", type="primary"):
        part = None if role in (None, ALL_PARTS) else role
        start("import", model, variant, lambda progress, cancel: import_weights(
            model, variant, uploaded, role=part, name=uploaded.name, progress=progress, cancel=cancel,
            imported_by=user))
