"""Per-user isolation: another user's dataset or job is "not found" by URL and by API; an admin sees all."""

from __future__ import annotations

import re
import sqlite3

import pytest

from czb_core.service.jobs import JobSpec, JobStore
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
    workspace.set_organism(alice.id, "mus_musculus", "alice")
    assert workspace.get(bob.id, "bob").organism is None  # one user's setting is not another's
    with pytest.raises(KeyError, match="not found"):
        workspace.get(alice.id, "charlie")
    assert [r.owner for r in workspace.list("alice")] == ["alice"]


def test_jobs_of_another_user_are_not_found_and_admins_see_all(manager, small_h5ad, monkeypatch):
    alices = manager.workspace.add_file(small_h5ad, owner="alice").id
    job = wait_for(manager, manager.submit(alices, "pca", owner="alice", score=False).id, {"done"})
    assert manager.get(job.id, "bob") is None and manager.list(owner="bob") == []
    for action in (lambda: manager.cancel(job.id, "bob"), lambda: manager.retry(job.id, "bob"),
                   lambda: manager.rescore(job.id, {"label_key": "cell_type"}, "bob"),
                   lambda: manager.scores(job.id, "bob")):
        with pytest.raises(KeyError, match="not found"):
            action()
    with pytest.raises(KeyError, match="not found"):
        manager.submit(alices, "pca", owner="bob")  # alice's record is not bob's to run on
    bobs = manager.workspace.add_file(small_h5ad, owner="bob").id
    own = manager.submit(bobs, "pca", owner="bob", score=False)
    assert own.id != job.id  # the same spec is cached per owner, never served across users
    monkeypatch.setenv("CZB_ADMINS", "Root@Lab.org")
    from czb_core.service.access import owner_scope

    assert owner_scope("root@lab.org") is None and manager.get(job.id, owner_scope("root@lab.org")).id == job.id


@pytest.mark.usefixtures("fresh_manager")
def test_a_url_with_another_users_dataset_says_not_found(small_h5ad, monkeypatch):
    monkeypatch.setenv("CZB_USER", "alice")
    dataset_id = Workspace().add_file(small_h5ad, owner="alice").id
    assert not page("validate", dataset=dataset_id).exception
    monkeypatch.setenv("CZB_USER", "bob")
    at = page("validate", dataset=dataset_id)
    assert any("not found" in w.value for w in at.warning)
    assert any("Choose a dataset first" in i.value for i in at.info)


LEGACY_TABLES = {
    "keyed by hash alone": "sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, path TEXT NOT NULL, owner TEXT NOT NULL, "
                           "created_at TEXT NOT NULL, size_bytes INTEGER NOT NULL, parent_sha256 TEXT, "
                           "note TEXT NOT NULL DEFAULT ''",
    "keyed by hash and owner": "sha256 TEXT NOT NULL, name TEXT NOT NULL, path TEXT NOT NULL, owner TEXT NOT NULL, "
                               "created_at TEXT NOT NULL, size_bytes INTEGER NOT NULL, parent_sha256 TEXT, "
                               "note TEXT NOT NULL DEFAULT '', organism TEXT, PRIMARY KEY (sha256, owner)",
}


@pytest.mark.parametrize("legacy", LEGACY_TABLES)
def test_a_workspace_made_before_record_ids_gets_them_keeping_its_records_and_jobs(tmp_path, legacy):
    root = tmp_path / "old"
    root.mkdir()
    conn = sqlite3.connect(root / "czb.sqlite")
    conn.execute(f"CREATE TABLE datasets ({LEGACY_TABLES[legacy]})")
    conn.execute("INSERT INTO datasets (sha256, name, path, owner, created_at, size_bytes, parent_sha256, note) "
                 "VALUES ('abc', 'x.h5ad', '/p', 'alice', '2026-01-01', 5, NULL, '')")
    # a job of that time: it named its dataset by content hash only
    conn.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, owner TEXT NOT NULL, spec_json TEXT NOT NULL, "
                 "spec_key TEXT NOT NULL, dataset_sha256 TEXT NOT NULL, model TEXT NOT NULL, variant TEXT NOT NULL, "
                 "status TEXT NOT NULL, device TEXT NOT NULL, step TEXT NOT NULL DEFAULT '', "
                 "done REAL NOT NULL DEFAULT 0, total REAL, message TEXT NOT NULL DEFAULT '', error TEXT, "
                 "notes_json TEXT NOT NULL DEFAULT '[]', artifact_dir TEXT, created_at TEXT NOT NULL, "
                 "started_at TEXT, finished_at TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0)")
    spec = JobSpec("abc", "pca", "default")
    conn.execute("INSERT INTO jobs (id, owner, spec_json, spec_key, dataset_sha256, model, variant, status, device, "
                 "created_at) VALUES ('job1', 'alice', ?, ?, 'abc', 'pca', 'default', 'done', 'cpu', '2026-01-01')",
                 (spec.to_json(), spec.key()))
    conn.commit()
    conn.close()
    workspace = Workspace(root)
    found = workspace.find("abc", "alice")
    assert found is not None and re.fullmatch(r"[0-9a-f]{16}", found.id)
    record = workspace.get(found.id, "alice")
    assert (record.sha256, record.name, record.owner, record.size_bytes) == ("abc", "x.h5ad", "alice", 5)
    assert record.organism is None and record.identity is None  # filled in at the file's next read
    assert workspace.find("abc", "bob") is None
    with pytest.raises(KeyError, match="not found"):
        workspace.get("abc", "alice")  # a content hash is no record id
    with sqlite3.connect(root / "czb.sqlite") as check:
        key = [r[1] for r in check.execute("PRAGMA table_info(datasets)") if r[5]]
    assert key == ["id"]
    store = JobStore(workspace.db_path)
    (job,) = store.list(dataset_id=record.id)
    assert job.id == "job1" and job.dataset_sha256 == "abc" and job.spec == spec
