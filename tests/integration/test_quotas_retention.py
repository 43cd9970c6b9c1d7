"""A shared server's limits and clean-up: per-user disk quota and queued-run cap, deleting datasets and runs
(a file stays while another record points at it), retention, and who may delete what."""

from __future__ import annotations

import re
import shutil
import sqlite3
from datetime import datetime, timedelta

import pytest

from czb_core.config import get_settings
from czb_core.errors import ConfigError
from czb_core.service.access import owner_scope
from czb_core.service.jobs import JobSpec, JobStore
from czb_core.service.quotas import GB, QuotaError, Quotas, format_size
from czb_core.service.retention import expires_at, purge_expired
from czb_core.service.sharing import Shares
from czb_core.service.workspace import Workspace
from czb_core.tasks.options import MetricOptions
from tests.integration.test_jobs import fake_manager, wait_for  # noqa: F401  (fixture)


@pytest.fixture(autouse=True)
def no_limits(monkeypatch):
    for var in ("CZB_USER_QUOTA_GB", "CZB_MAX_QUEUED_JOBS", "CZB_RETENTION_DAYS", "CZB_ADMINS"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def manager(fake_manager):
    return fake_manager


@pytest.fixture
def idle():
    """A workspace and job store with no workers: a created job stays queued."""
    workspace = Workspace()
    return workspace, JobStore(workspace.db_path)


def run_done(manager, dataset_id, owner, n_comps=2):
    job = manager.submit(dataset_id, "pca", owner=owner, params={"n_comps": n_comps}, score=False)
    return wait_for(manager, job.id, {"done"})


def files_under(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -- quotas ----------------------------------------------------------------------------------------


def test_disk_use_counts_stored_copies_per_owner_and_artifacts(manager, small_h5ad, tmp_path, monkeypatch):
    size = small_h5ad.stat().st_size
    ws, quotas = manager.workspace, Quotas(manager.workspace, manager.store)
    alices_id = ws.add_file(small_h5ad, owner="alice").id
    ws.add_file(small_h5ad, owner="bob")
    assert quotas.disk_use("alice") == quotas.disk_use("bob") == size  # one file on disk, counted for each
    job = run_done(manager, alices_id, "alice")
    artifacts = files_under(job.artifact_dir)
    assert artifacts > 0 and quotas.disk_use("alice") == size + artifacts and quotas.disk_use("bob") == size
    roots = tmp_path / "lab"
    roots.mkdir()
    monkeypatch.setenv("CZB_DATA_ROOTS", str(roots))
    shutil.copyfile(small_h5ad, roots / "big.h5ad")
    ws.add_server_path(roots / "big.h5ad", owner="carol")  # the lab's file, not a copy
    assert quotas.disk_use("carol") == 0


def test_quota_refuses_an_upload_with_the_numbers_and_the_fix(manager, small_h5ad, monkeypatch):
    size = small_h5ad.stat().st_size
    ws, quotas = manager.workspace, Quotas(manager.workspace, manager.store)
    ws.add_file(small_h5ad, owner="alice")
    monkeypatch.setenv("CZB_USER_QUOTA_GB", str(2.5 * size / GB))
    limit = int(2.5 * size / GB * GB)
    quotas.check_upload("alice", size)  # 2 x size fits
    with pytest.raises(QuotaError) as caught:
        quotas.check_upload("alice", 2 * size)
    message = str(caught.value)
    for number in (format_size(2 * size), format_size(3 * size), format_size(limit), format_size(size)):
        assert number in message
    assert "delete datasets or results" in message and "ask an admin to raise CZB_USER_QUOTA_GB" in message
    assert isinstance(caught.value, ConfigError)
    quotas.check_upload("bob", 2 * size)  # bob's use is his own


def test_runs_are_refused_past_the_queue_cap_or_at_the_disk_quota(idle, small_h5ad, monkeypatch):
    ws, store = idle
    quotas = Quotas(ws, store)
    record = ws.add_file(small_h5ad, owner="alice")
    monkeypatch.setenv("CZB_MAX_QUEUED_JOBS", "2")
    for n in (1, 2):
        quotas.check_submit("alice")
        store.submit(JobSpec(record.sha256, "pca", "default", {"n_comps": n}), "alice", "cpu", record.id)
    with pytest.raises(QuotaError, match=re.escape("alice has 2 runs waiting in the queue, the most one user may "
                                                   "have (CZB_MAX_QUEUED_JOBS=2)")):
        quotas.check_submit("alice")
    quotas.check_submit("bob")
    store.set_status(store.list(owner="alice")[0].id, "cancelled")  # a finished run no longer waits
    quotas.check_submit("alice")
    monkeypatch.setenv("CZB_USER_QUOTA_GB", str(small_h5ad.stat().st_size / GB))
    with pytest.raises(QuotaError, match="uses .* the whole .* disk quota, so no new run can store its results"):
        quotas.check_submit("alice")


@pytest.mark.parametrize("var, value", [("CZB_MAX_QUEUED_JOBS", "zero"), ("CZB_MAX_QUEUED_JOBS", "2.5"),
                                        ("CZB_USER_QUOTA_GB", "-1"), ("CZB_RETENTION_DAYS", "nan")])
def test_a_malformed_limit_is_refused_by_name(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=f"{var}='{value}' is not a positive"):
        get_settings()


def test_limits_default_to_twenty_queued_runs_and_no_quota_or_expiry():
    settings = get_settings()
    assert (settings.max_queued_jobs, settings.user_quota_gb, settings.retention_days) == (20, None, None)


# -- deletion ---------------------------------------------------------------------------------------


def test_deleting_alices_copy_keeps_bobs_file(manager, small_h5ad):
    ws = manager.workspace
    alice = ws.add_file(small_h5ad, owner="alice")
    bob = ws.add_file(small_h5ad, owner="bob")
    alices_job, bobs_job = run_done(manager, alice.id, "alice"), run_done(manager, bob.id, "bob")
    token = Shares(manager.store).share_job(alices_job.id, "alice")
    ws.delete_dataset(alice.id, "alice")
    with pytest.raises(KeyError, match="not found"):
        ws.get(alice.id, "alice")
    assert manager.store.get(alices_job.id) is None and not alices_job.artifact_dir.exists()
    assert Shares(manager.store).resolve_share(token) is None
    assert ws.dataset_path(bob.id, "bob") == alice.path and alice.path.is_file()
    assert manager.get(bobs_job.id, "bob").artifact_dir.is_dir()
    ws.delete_dataset(bob.id, "bob")  # the last record: the file goes
    assert not alice.path.exists() and ws.list() == [] and manager.store.list() == []


def test_deleting_a_dataset_keeps_its_derived_version(manager, small_h5ad, small_adata):
    ws = manager.workspace
    original = ws.add_file(small_h5ad, owner="alice")
    fixed = small_adata.copy()
    fixed.obs["batch"] = "one"
    version = ws.add_anndata(fixed, "small · batch key built", "alice", original.sha256, "obs['batch'] rebuilt")
    job_on_original = run_done(manager, original.id, "alice")
    job_on_version = run_done(manager, version.id, "alice")
    ws.delete_dataset(original.id, "alice")
    assert not original.path.exists() and manager.store.get(job_on_original.id) is None
    kept = ws.get(version.id, "alice")
    assert kept.parent_sha256 == original.sha256 and ws.dataset_path(version.id, "alice").is_file()
    assert manager.get(job_on_version.id, "alice").artifact_dir.is_dir()


def test_a_server_file_is_never_removed(small_h5ad, tmp_path, monkeypatch):
    monkeypatch.setenv("CZB_DATA_ROOTS", str(tmp_path))
    ws = Workspace()
    record = ws.add_server_path(small_h5ad, owner="alice")
    ws.delete_dataset(record.id, "alice")
    assert small_h5ad.is_file() and ws.list() == []


def test_work_in_progress_is_refused_before_anything_is_removed(idle, small_h5ad):
    ws, store = idle
    record = ws.add_file(small_h5ad, owner="alice")
    job, _ = store.submit(JobSpec(record.sha256, "pca", "default"), "alice", "cpu", record.id)
    with pytest.raises(ConfigError, match=f"runs queued or running \\({job.id}\\); cancel them"):
        ws.delete_dataset(record.id, "alice")
    with pytest.raises(ConfigError, match=f"job {job.id} is queued; cancel it before deleting it"):
        store.delete_job(job.id, "alice")
    assert ws.get(record.id, "alice") and store.get(job.id) and record.path.is_file()


def test_delete_job_removes_its_scores_and_files_and_refuses_while_scoring(manager, small_h5ad):
    dataset_id = manager.workspace.add_file(small_h5ad, owner="alice").id
    job = run_done(manager, dataset_id, "alice")
    score = manager.store.create_score(job.id, MetricOptions.from_dict({"label_key": "cell_type"}), "alice")
    manager.store.finish_score(score.id, "running")
    with pytest.raises(ConfigError, match="being scored"):
        manager.store.delete_job(job.id, "alice")
    manager.store.finish_score(score.id, "failed", error="stopped")
    assert manager.store.delete_job(job.id, "alice").id == job.id
    assert manager.store.get(job.id) is None and manager.store.scores_of(job.id) == []
    assert not job.artifact_dir.exists() and manager.workspace.get(dataset_id, "alice")  # the dataset stays


def test_an_admin_can_delete_others_items_a_user_cannot(manager, small_h5ad, monkeypatch):
    ws = manager.workspace
    alices_id = ws.add_file(small_h5ad, owner="alice").id
    job, second = run_done(manager, alices_id, "alice"), run_done(manager, alices_id, "alice", n_comps=3)
    for action in (lambda: ws.delete_dataset(alices_id, "bob"), lambda: manager.store.delete_job(job.id, "bob")):
        with pytest.raises(KeyError, match="not found"):
            action()
    assert ws.get(alices_id, "alice") and manager.store.get(job.id)
    monkeypatch.setenv("CZB_ADMINS", "root@lab.org")
    admin = owner_scope("root@lab.org")
    manager.store.delete_job(job.id, admin)
    ws.delete_dataset(alices_id, admin)
    assert manager.store.list() == [] and ws.list() == [] and not second.artifact_dir.exists()


# -- retention -------------------------------------------------------------------------------------


def age(ws: Workspace, owner: str, days: float) -> None:
    """Make the owner's records `days` old (test setup: the clock cannot be moved back)."""
    added = (datetime.fromisoformat(ws.list(owner)[0].created_at) - timedelta(days=days)).isoformat()
    with sqlite3.connect(ws.db_path) as conn:
        conn.execute("UPDATE datasets SET created_at = ? WHERE owner = ?", (added, owner))


def test_retention_purges_only_old_items(manager, small_h5ad, monkeypatch):
    ws = manager.workspace
    alices = ws.add_file(small_h5ad, owner="alice")
    bobs = ws.add_file(small_h5ad, owner="bob")
    sha = alices.sha256  # the same content: purge_expired names "<owner>/<content hash>"
    old_job, new_job = run_done(manager, alices.id, "alice"), run_done(manager, bobs.id, "bob")
    age(ws, "alice", 31)
    assert expires_at(ws.get(alices.id, "alice")) is None and purge_expired(ws, manager.store) == []  # kept forever
    monkeypatch.setenv("CZB_RETENTION_DAYS", "30")
    record = ws.get(alices.id, "alice")
    assert expires_at(record) == datetime.fromisoformat(record.created_at) + timedelta(days=30)
    assert purge_expired(ws, manager.store) == [f"alice/{sha}"]
    assert [r.owner for r in ws.list()] == ["bob"] and ws.get(bobs.id, "bob").path.is_file()
    assert manager.store.get(old_job.id) is None and manager.store.get(new_job.id).artifact_dir.is_dir()
    bobs = ws.get(bobs.id, "bob")
    assert purge_expired(ws, manager.store, now=expires_at(bobs) - timedelta(seconds=1)) == []
    assert purge_expired(ws, manager.store, now=expires_at(bobs)) == [f"bob/{sha}"]
    assert ws.list() == [] and not bobs.path.exists()


def test_retention_waits_for_a_run_in_progress(idle, small_h5ad, monkeypatch):
    ws, store = idle
    record = ws.add_file(small_h5ad, owner="alice")
    job, _ = store.submit(JobSpec(record.sha256, "pca", "default"), "alice", "cpu", record.id)
    monkeypatch.setenv("CZB_RETENTION_DAYS", "1")
    later = expires_at(record) + timedelta(days=1)
    assert purge_expired(ws, store, now=later) == [] and ws.get(record.id, "alice")
    store.set_status(job.id, "cancelled")
    assert purge_expired(ws, store, now=later) == [f"alice/{record.sha256}"] and store.list() == []
