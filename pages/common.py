"""What every page shares: the process-wide job manager, the workspace, and the current dataset.

The current dataset record and job live in the URL (`?dataset=<record id>&job=<id>`), so a refresh or a bookmark
comes back to the same place; a new browser session starts with none open, and the Dataset page lists
the user's datasets to reopen.
"""

from __future__ import annotations

from typing import Optional

import streamlit as st

from czb_core.config import get_settings
from czb_core.errors import CzbError
from czb_core.io.header import DatasetHeader, read_header
from czb_core.models.compatibility import compatibility_matrix
from czb_core.service.access import owner_scope
from czb_core.service.health import serve_health
from czb_core.service.identity import NO_LOGIN_NOTE, SINGLE_USER_NOTE, login_configured, login_owner, login_refusal
from czb_core.service.jobs import JobManager
from czb_core.service.retention import expires_at
from czb_core.service.workspace import DatasetRecord, Workspace
from czb_core.types import Organism
from czb_core.viz.warmup import start_warm_up


@st.cache_resource(show_spinner="Starting the job workers…")
def job_manager() -> JobManager:
    """One manager per server process: its workers run jobs whatever the pages do. The UMAP code is
    compiled (or checked in its disk cache) in the background meanwhile, so the first job does not wait."""
    manager = JobManager()
    start_warm_up(manager.workspace.root / "logs" / "warmup.log")
    serve_health(manager)  # GET /health about this manager's workers, when CZB_HEALTH_PORT is set
    return manager


def workspace() -> Workspace:
    return job_manager().workspace


def current_user() -> str:
    """The login's e-mail (lower case) when login is configured, else the configured user (default "local").

    With login configured, a visitor who is not logged in (or whose e-mail the provider has not verified)
    has no identity: the page stops at the login prompt instead of falling back to the shared local user,
    whose items they must not see.
    """
    if not auth_configured():
        return get_settings().user
    if not is_logged_in():
        login_prompt()
        st.stop()
    return login_owner(st.user)


def scope() -> Optional[str]:
    """What the current user may see: their own items, everything for an admin (`CZB_ADMINS`)."""
    return owner_scope(current_user())


def run_params_key(model: str) -> str:
    """Session key of the run settings chosen for `model` on the Validate page (a fix such as "use `batch`
    as scVI's batch column"): a dict of parameter values the Run page's form starts from."""
    return f"run_params:{model}"


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
    """The dataset record in the URL, if the user may see it and its file still holds the bytes it was
    hashed from (every page reads the file through this check; a changed file is refused, with the reason)."""
    dataset_id = recall("dataset")
    if not dataset_id:
        return None
    try:
        record = workspace().get(dataset_id, scope())
        workspace().dataset_path(record.id, scope())
    except KeyError:  # gone, or another user's: "not found" either way
        remember("dataset", None)
        st.warning("That dataset was not found.")
        return None
    except CzbError as exc:
        st.error(str(exc))
        return None
    return record


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
    if (expiry := expires_at(record)) is not None:
        st.sidebar.caption(f"**{record.name}** and its runs are kept until {expiry:%Y-%m-%d %H:%M} UTC "
                           "(server retention), then deleted.")
    return record


@st.cache_data(max_entries=32, show_spinner="Checking every model…")
def all_reports(path: str, sha256: str, organism_latin: Optional[str]) -> dict[str, dict]:
    """Validation report (as dict) of every model variant, keyed "model / variant"."""
    header = dataset_header(path, sha256)
    given = Organism.parse(organism_latin) if organism_latin else None
    return {f"{verdict.model} / {variant}": report.to_dict()
            for verdict in compatibility_matrix(header, given) for variant, report in verdict.reports.items()}


# -- login: Streamlit's OIDC (`st.login`), on when .streamlit/secrets.toml has an [auth] section ----------


def auth_configured() -> bool:
    """True when secrets.toml has an [auth] section, i.e. every user must log in."""
    return login_configured()


def is_logged_in() -> bool:
    """Logged in, as a user the app accepts (`czb_core.service.identity.login_refusal`)."""
    return bool(st.user.get("is_logged_in", False)) and login_refusal(st.user) is None


def login_prompt() -> None:
    """All a visitor sees before logging in: datasets and jobs belong to their owners. A login the app
    refuses (an unverified e-mail) is told why; the sidebar offers "Log out" to try another account."""
    st.title("CZB Studio")
    if st.user.get("is_logged_in", False) and (refusal := login_refusal(st.user)):
        st.error(refusal)
        return
    st.info("Log in to see your datasets and jobs.")
    if st.button("Log in", key="login_main", type="primary"):
        st.login()


def account_sidebar() -> None:
    """Who is using the app: the logged-in e-mail with "Log out", a "Log in" button, or, without login, a
    single user (`CZB_SINGLE_USER=1`: this machine only; else everyone who can open the address)."""
    with st.sidebar:
        if not auth_configured():
            st.caption(SINGLE_USER_NOTE if get_settings().single_user else NO_LOGIN_NOTE)
        elif st.user.get("is_logged_in", False):  # a login refused here (unverified e-mail) may only log out
            if is_logged_in():
                st.caption(f"Logged in as **{current_user()}**")
            if st.button("Log out", key="logout"):
                st.logout()
        elif st.button("Log in", key="login_sidebar"):
            st.login()
