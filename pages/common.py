"""What every page shares: the process-wide job manager, the workspace, and the current dataset.

The current dataset and job live in the URL (`?dataset=<sha256>&job=<id>`), so a refresh or a bookmark
comes back to the same place; a new browser session starts empty otherwise.
"""

from __future__ import annotations

from typing import Optional

import streamlit as st

from czb_core.config import get_settings
from czb_core.io.header import DatasetHeader, read_header
from czb_core.service.access import owner_scope
from czb_core.service.jobs import JobManager
from czb_core.models.compatibility import compatibility_matrix
from czb_core.types import Organism
from czb_core.service.workspace import DatasetRecord, Workspace


@st.cache_resource
def job_manager() -> JobManager:
    """One manager per server process: its worker threads run jobs whatever the pages do."""
    return JobManager()


def workspace() -> Workspace:
    return job_manager().workspace


def current_user() -> str:
    """The login's e-mail when `st.login` is configured, else the configured user (default "local")."""
    try:
        if st.user.is_logged_in:
            return str(st.user.email)
    except Exception:  # no auth configured
        pass
    return get_settings().user


def scope() -> Optional[str]:
    """What the current user may see: their own items, everything for an admin (`CZB_ADMINS`)."""
    return owner_scope(current_user())


def remember(key: str, value: Optional[str]) -> None:
    """Keep `key` in the session and the URL (None removes it)."""
    if value is None:
        st.session_state.pop(key, None)
        st.query_params.pop(key, None)
    else:
        st.session_state[key] = value
        st.query_params[key] = value


def recall(key: str) -> Optional[str]:
    value = st.query_params.get(key) or st.session_state.get(key)
    if value and st.query_params.get(key) != value:
        st.query_params[key] = value  # navigation between pages drops query parameters
    return value


def current_dataset() -> Optional[DatasetRecord]:
    sha = recall("dataset")
    if not sha:
        return None
    try:
        return workspace().get(sha, scope())
    except KeyError:  # gone, or another user's: "not found" either way
        remember("dataset", None)
        st.warning("That dataset was not found.")
        return None


@st.cache_data(max_entries=16, show_spinner="Reading the file header…")
def dataset_header(path: str, sha256: str) -> DatasetHeader:
    """Cached by content hash; holds obs/var frames, not the matrix."""
    return read_header(path)


def require_dataset() -> DatasetRecord:
    record = current_dataset()
    if record is None:
        st.info("Choose a dataset first.")
        st.page_link("pages/dataset.py", label="Go to 1. Dataset", icon="📂")
        st.stop()
    st.caption(f"Dataset: **{record.name}** · sha256 {record.sha256[:12]}…")
    return record


@st.cache_data(max_entries=32, show_spinner="Checking every model…")
def all_reports(path: str, sha256: str, organism_latin: Optional[str]) -> dict[str, dict]:
    """Validation report (as dict) of every model variant, keyed "model / variant"."""
    header = dataset_header(path, sha256)
    given = Organism.parse(organism_latin) if organism_latin else None
    return {f"{verdict.model} / {variant}": report.to_dict()
            for verdict in compatibility_matrix(header, given) for variant, report in verdict.reports.items()}
