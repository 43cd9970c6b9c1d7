"""CZB Studio: bring a single-cell dataset, see which models fit it, embed it, compare the results.

This script only sets up navigation, the account panel and the error guard; each page lives in `pages/`
and calls `czb_core`. With login configured (`[auth]` in .streamlit/secrets.toml) a visitor sees only the
login prompt until logged in; without it, `make serve` starts only for one person on this machine
(`czb_core.service.identity`). A share link shows its run alone. Start with `make run` (the bundled demo) or
`make serve` (production).
"""

import streamlit as st

from czb_core.service.access import is_admin
from czb_core.service.identity import serving_problem
from pages.common import account_sidebar, auth_configured, current_user, is_logged_in, job_manager, login_prompt
from pages.errors import run_guarded


def start() -> None:
    """The root URL opens the Dataset page under its own address, so `/dataset` is a real link too (a page
    marked default is served only at the root)."""
    st.switch_page("pages/dataset.py", query_params=st.query_params.to_dict())


PAGES = [
    st.Page(start, title="Start", url_path="start", default=True, visibility="hidden"),
    st.Page("pages/dataset.py", title="1. Dataset", url_path="dataset"),
    st.Page("pages/validate.py", title="2. Validate", url_path="validate"),
    st.Page("pages/run.py", title="3. Run", url_path="run"),
    st.Page("pages/results.py", title="4. Results", url_path="results"),
    st.Page("pages/tokenizer_lab.py", title="Tokenizer lab", url_path="tokenizer-lab"),
    st.Page("pages/weights.py", title="Weights", url_path="weights"),
]
SHARED = st.Page("pages/shared.py", title="Shared result", url_path="shared", visibility="hidden")
ADMIN = st.Page("pages/admin.py", title="Admin", url_path="admin")


def show() -> None:
    st.set_page_config(page_title="CZB Studio", page_icon="🧬", layout="wide")
    if problem := serving_problem(auth_configured(), st.get_option("server.address")):
        st.navigation(PAGES, position="hidden")  # no page runs, none is listed (nor the `pages/` folder)
        st.error(problem)  # CZB_SINGLE_USER=1 where other machines reach the app, or beside login
        return
    job_manager()  # the first visit to any page starts the workers (and the /health endpoint)
    if st.query_params.get("share"):  # a share link is its own permission, for one run: no login, no sidebar
        st.navigation([SHARED], position="hidden").run()
        return
    logged_out = auth_configured() and not is_logged_in()
    pages = [*PAGES, SHARED] + ([ADMIN] if not logged_out and is_admin(current_user()) else [])
    navigation = st.navigation(pages, position="hidden" if logged_out else "sidebar")
    account_sidebar()
    if logged_out:
        login_prompt()
    else:
        navigation.run()


# Streamlit runs this script as `__main__`; a worker process started with `spawn` re-imports it as
# `__mp_main__` and must not start another manager.
if __name__ == "__main__":
    run_guarded(show)
