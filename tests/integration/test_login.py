"""Login through Streamlit's OIDC (`st.user`, as AppTest seeds it): who sees what, and what a visitor
who is not logged in sees. Items of another user are "not found", by dataset hash and by job id."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest
from streamlit.testing.v1 import AppTest

from czb_core.service.jobs import JobManager
from czb_core.service.workspace import Workspace
from tests.helpers.apptest import TIMEOUT, fresh_manager  # noqa: F401  (fixture)
from tests.integration.test_jobs import FakeRun, wait_for

pytestmark = pytest.mark.usefixtures("fresh_manager")
ROOT = Path(__file__).resolve().parents[2]
AUTH = {"auth": {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "a-long-random-string-for-the-test",
    "client_id": "czb-studio",
    "client_secret": "not-a-real-secret",
    "server_metadata_url": "https://idp.example.org/.well-known/openid-configuration",
}}


def visit(email: Optional[str], page: Optional[str] = None, **query) -> AppTest:
    """The app with login configured, as `email` (None: a visitor who is not logged in).

    Without `page`, app.py runs at its default page; with it, Streamlit runs that page file.
    """
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.secrets.update(AUTH)
    at.user = {"is_logged_in": True, "email": email, "sub": f"sub-{email}"} if email else {"is_logged_in": False}
    for key, value in query.items():
        at.query_params[key] = value
    if page:
        at.switch_page(f"pages/{page}.py")
    return at.run()


@pytest.fixture
def alices_run(small_h5ad, monkeypatch):
    """A dataset and a finished job of alice's; bob holds a record of the same file (same hash)."""
    monkeypatch.setattr("czb_core.service.jobs.execution.compute_umap",
                        lambda emb_nd, seed=0, labels_n=None: emb_nd[:, :2].copy())
    manager = JobManager(Workspace(), run_fn=FakeRun(), score=False, processes=False)
    try:
        dataset_id = manager.workspace.add_file(small_h5ad, owner="alice@lab.org").id
        job = wait_for(manager, manager.submit(dataset_id, "pca", owner="alice@lab.org", score=False).id, {"done"})
    finally:
        manager.shutdown(timeout=5)
    return dataset_id, job.id


def test_a_visitor_who_is_not_logged_in_sees_only_the_login_prompt(small_h5ad):
    at = visit(None)
    assert not at.exception
    assert [i.value for i in at.info] == ["Log in to see your datasets and jobs."]
    assert not at.radio and not at.file_uploader  # the Dataset page did not run
    assert [b.label for b in at.sidebar.button] == ["Log in"]
    assert not any("Single local user" in c.value for c in at.sidebar.caption)


def test_a_deep_link_while_logged_out_stops_at_the_login_prompt(alices_run):
    dataset_id, job_id = alices_run
    at = visit(None, "run", dataset=dataset_id, job=job_id)
    assert not at.exception
    assert any("Log in to see your datasets and jobs" in i.value for i in at.info)
    assert not any(job_id in m.value for m in at.markdown)


def test_the_sidebar_names_the_logged_in_user_with_log_out(small_h5ad):
    at = visit("Alice@Lab.org")
    assert any(c.value == "Logged in as **alice@lab.org**" for c in at.sidebar.caption)
    assert [b.label for b in at.sidebar.button] == ["Log out"]
    assert at.radio  # the Dataset page ran


def test_bob_gets_not_found_for_alices_dataset_and_job(alices_run, small_h5ad):
    dataset_id, job_id = alices_run
    at = visit("bob@lab.org", dataset=dataset_id)
    assert any("That dataset was not found" in w.value for w in at.warning)
    assert not at.metric  # nothing of the file is shown

    alice = visit("alice@lab.org", "run", dataset=dataset_id, job=job_id)
    assert any(f"**Job {job_id}**" in m.value for m in alice.markdown)

    bobs = Workspace().add_file(small_h5ad, owner="bob@lab.org")  # bob's own record of the same bytes
    bob = visit("bob@lab.org", "run", dataset=bobs.id, job=job_id)
    assert any(f"Job {job_id} was not found" in w.value for w in bob.warning)
    assert not any(job_id in m.value for m in bob.markdown)
    assert not any(job_id in str(df.value) for df in bob.dataframe)  # not in bob's job list either
