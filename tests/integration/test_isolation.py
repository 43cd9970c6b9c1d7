"""Per-user isolation: another user's dataset or job is "not found" by URL and by API; an admin sees all."""

from __future__ import annotations

import sqlite3

import pytest

from czb_core.service.workspace import Workspace
from tests.helpers.apptest import fresh_manager, page  # noqa: F401  (fixture)
from tests.integration.test_jobs import fake_manager, wait_for  # noqa: F401  (fixture)


@pytest.fixture
def manager(fake_manager):
    return fake_manager


def test_identical_uploads_share_bytes_but_not_records(small_h5ad):
    workspace = Workspace()
    alice = workspace.add_file(small_h5ad, owner="alice")
    bob = workspace.add_file(small_h5ad, owner="bob")
    assert alice.sha256 == bob.sha256 and alice.path == bob.path and alice.owner != bob.owner
    assert len(list(workspace.datasets_dir.glob("*.h5ad"))) == 1
    workspace.set_organism(alice.sha256, "mus_musculus", "alice")
    assert workspace.get(bob.sha256, "bob").organism is None  # one user's setting is not another's
    with pytest.raises(KeyError, match="not found"):
        workspace.get(alice.sha256, "charlie")
    assert [r.owner for r in workspace.list("alice")] == ["alice"]


def test_jobs_of_another_user_are_not_found_and_admins_see_all(manager, small_h5ad, monkeypatch):
    sha = manager.workspace.add_file(small_h5ad, owner="alice").sha256
    job = wait_for(manager, manager.submit(sha, "pca", owner="alice", score=False).id, {"done"})
    assert manager.get(job.id, "bob") is None and manager.list(owner="bob") == []
    for action in (lambda: manager.cancel(job.id, "bob"), lambda: manager.retry(job.id, "bob"),
                   lambda: manager.rescore(job.id, {"label_key": "cell_type"}, "bob"),
                   lambda: manager.scores(job.id, "bob")):
        with pytest.raises(KeyError, match="not found"):
            action()
    with pytest.raises(KeyError, match="not found"):
        manager.submit(sha, "pca", owner="bob")  # bob has no record of that dataset
    bobs = manager.workspace.add_file(small_h5ad, owner="bob").sha256
    own = manager.submit(bobs, "pca", owner="bob", score=False)
    assert own.id != job.id  # the same spec is cached per owner, never served across users
    monkeypatch.setenv("CZB_ADMINS", "Root@Lab.org")
    from czb_core.service.access import owner_scope

    assert owner_scope("root@lab.org") is None and manager.get(job.id, owner_scope("root@lab.org")).id == job.id


@pytest.mark.usefixtures("fresh_manager")
def test_a_url_with_another_users_dataset_says_not_found(small_h5ad, monkeypatch):
    monkeypatch.setenv("CZB_USER", "alice")
    sha = Workspace().add_file(small_h5ad, owner="alice").sha256
    assert not page("validate", dataset=sha).exception
    monkeypatch.setenv("CZB_USER", "bob")
    at = page("validate", dataset=sha)
    assert any("not found" in w.value for w in at.warning)
    assert any("Choose a dataset first" in i.value for i in at.info)


def test_a_workspace_keyed_by_hash_alone_is_rebuilt_keeping_its_records(tmp_path):
    root = tmp_path / "old"
    root.mkdir()
    conn = sqlite3.connect(root / "czb.sqlite")
    conn.execute("CREATE TABLE datasets (sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, path TEXT NOT NULL, "
                 "owner TEXT NOT NULL, created_at TEXT NOT NULL, size_bytes INTEGER NOT NULL, parent_sha256 TEXT, "
                 "note TEXT NOT NULL DEFAULT '')")
    conn.execute("INSERT INTO datasets VALUES ('abc', 'x.h5ad', '/p', 'alice', '2026-01-01', 5, NULL, '')")
    conn.commit()
    conn.close()
    workspace = Workspace(root)
    record = workspace.get("abc", "alice")
    assert record.name == "x.h5ad" and record.organism is None
    with sqlite3.connect(root / "czb.sqlite") as check:
        key = [r[1] for r in check.execute("PRAGMA table_info(datasets)") if r[5]]
    assert key == ["sha256", "owner"]
