"""Share links: a random token shows one finished job read-only until its owner revokes it or deletes the job;
other users can neither make nor revoke links to it (the job is "not found" to them)."""

from __future__ import annotations

import sqlite3

import pytest

from czb_core.errors import ConfigError
from czb_core.service.access import owner_scope
from czb_core.service.jobs import JobSpec, JobStore
from czb_core.service.sharing import Shares
from czb_core.service.workspace import Workspace
from tests.integration.test_jobs import fake_manager, wait_for  # noqa: F401  (fixture)


@pytest.fixture
def manager(fake_manager):
    return fake_manager


@pytest.fixture
def done_job(manager, small_h5ad):
    dataset_id = manager.workspace.add_file(small_h5ad, owner="alice").id
    return wait_for(manager, manager.submit(dataset_id, "pca", owner="alice", score=False).id, {"done"})


def share_rows(manager) -> int:
    with sqlite3.connect(manager.workspace.db_path) as conn:
        return conn.execute("SELECT COUNT(*) FROM shares").fetchone()[0]


def test_owner_shares_resolves_and_revokes(manager, done_job):
    shares = Shares(manager.store)
    first, second = shares.share_job(done_job.id, "alice"), shares.share_job(done_job.id, "alice")
    assert first != second and min(len(first), len(second)) >= 22  # 22 url-safe characters carry 128 bits
    assert Shares(manager.store).resolve_share(first).id == done_job.id  # kept in the database, not in memory
    assert {s.token for s in shares.shares_of(done_job.id, "alice")} == {first, second}
    assert all(s.owner == "alice" and s.job_id == done_job.id for s in shares.shares_of(done_job.id, "alice"))
    shares.revoke_share(first, "alice")
    assert shares.resolve_share(first) is None and shares.resolve_share(second).id == done_job.id
    assert [s.token for s in shares.shares_of(done_job.id, "alice")] == [second]
    with pytest.raises(KeyError, match="not found"):
        shares.revoke_share(first, "alice")  # already revoked
    for unknown in ("", "x" * 43, second[:-1]):
        assert shares.resolve_share(unknown) is None


def test_another_user_can_neither_share_nor_revoke(manager, done_job, monkeypatch):
    shares = Shares(manager.store)
    token = shares.share_job(done_job.id, "alice")
    for action in (lambda: shares.share_job(done_job.id, "bob"), lambda: shares.revoke_share(token, "bob"),
                   lambda: shares.shares_of(done_job.id, "bob")):
        with pytest.raises(KeyError, match="not found"):
            action()
    assert shares.resolve_share(token).id == done_job.id and share_rows(manager) == 1
    monkeypatch.setenv("CZB_ADMINS", "root@lab.org")
    admin = owner_scope("root@lab.org")
    made_by_admin = shares.share_job(done_job.id, admin)
    assert [s.owner for s in shares.shares_of(done_job.id, admin)] == ["alice", "alice"]
    shares.revoke_share(token, admin)
    assert shares.resolve_share(token) is None and shares.resolve_share(made_by_admin).id == done_job.id


def test_only_a_done_job_can_be_shared(small_h5ad):
    workspace = Workspace()  # no manager: nothing takes the queued job
    store = JobStore(workspace.db_path)
    record = workspace.add_file(small_h5ad, owner="alice")
    job, _ = store.submit(JobSpec(record.sha256, "pca", "default"), "alice", "cpu", record.id)
    shares = Shares(store)
    for status in ("queued", "failed"):
        store.set_status(job.id, status, error="boom" if status == "failed" else None)
        with pytest.raises(ConfigError, match=f"job {job.id} is {status}; only a finished run's result can be shared"):
            shares.share_job(job.id, "alice")
    assert shares.shares_of(job.id, "alice") == []


def test_deleting_the_job_ends_its_links(manager, done_job):
    shares = Shares(manager.store)
    token = shares.share_job(done_job.id, "alice")
    manager.store.delete_job(done_job.id, "alice")
    assert shares.resolve_share(token) is None and share_rows(manager) == 0
    with pytest.raises(KeyError, match="not found"):
        shares.shares_of(done_job.id, "alice")


def test_the_shared_page_shows_the_run_read_only_until_revoked(manager, done_job, monkeypatch):
    """The link's page in the app (AppTest): the run's UMAP and downloads for anyone holding the token; a
    revoked link is not valid any more."""
    import streamlit as st

    from tests.helpers.apptest import page

    st.cache_resource.clear()
    monkeypatch.setattr("pages.common.JobManager", lambda: manager)
    monkeypatch.setenv("CZB_USER", "bob")  # not the owner: the token alone grants the view
    shares = Shares(manager.store)
    token = shares.share_job(done_job.id, "alice")
    at = page("shared", share=token)
    assert not at.exception, at.exception
    assert at.title[0].value == "Shared result" and not at.error
    assert at.markdown[0].value == f"**pca / default · {done_job.id[:6]}** on **small.h5ad** · read-only link"
    assert len(at.get("plotly_chart")) == 1 and [b.proto.label for b in at.get("download_button")] == [
        "Download the result (h5ad)", "Download the run record (JSON)"]
    shares.revoke_share(token, "alice")
    at = page("shared", share=token)
    assert "This link is not valid" in at.error[0].value and not at.get("plotly_chart")
    st.cache_resource.clear()


def test_the_admin_page_lists_every_users_queue_and_disk_and_is_not_found_for_others(
        manager, done_job, small_h5ad, monkeypatch):
    import streamlit as st

    from tests.helpers.apptest import page

    st.cache_resource.clear()
    monkeypatch.setattr("pages.common.JobManager", lambda: manager)
    record = manager.workspace.add_file(small_h5ad, owner="bob")
    queued, _ = manager.store.submit(JobSpec(record.sha256, "pca", "default", {"n_comps": 3}), "bob",
                                     "gpu-that-is-not-here", record.id)
    monkeypatch.setenv("CZB_USER", "carol")
    at = page("admin")
    assert at.error[0].value == "Page not found." and not at.dataframe
    monkeypatch.setenv("CZB_ADMINS", "carol")
    at = page("admin")
    assert not at.exception, at.exception
    assert any(queued.id in m.value and "bob" in m.value for m in at.markdown)
    table = at.dataframe[0].value
    assert list(table["user"]) == ["alice", "bob"] and list(table["runs"]) == [1, 1]
    at.button(key=f"admin_cancel_{queued.id}").click().run()
    assert manager.get(queued.id).status == "cancelled"
    st.cache_resource.clear()
