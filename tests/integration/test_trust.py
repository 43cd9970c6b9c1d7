"""A shared server that loses nothing and leaks nothing: records with owners, one writer per workspace,
compare-and-set status moves, per-job logs, store failures and atomic submits.

Each test reproduces one way a lab server lost or leaked data before: it fails if the cause comes back.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from czb_core.errors import ConfigError, InputError, StorageError
from czb_core.service.jobs import JobManager, JobSpec, JobStore
from czb_core.service.jobs import execution as execution_module
from czb_core.service.jobs.artifacts import is_complete, read_embedding
from czb_core.service.jobs.execution import JobRunner
from czb_core.service.jobs.job_log import job_log, job_log_tail
from czb_core.service.quotas import QuotaError, Quotas
from czb_core.service.workspace import Workspace, owner_key
from tests.helpers.apptest import fresh_manager, page  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


def wait_for(manager, job_id, statuses, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = manager.get(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} stayed {manager.get(job_id).status}, expected {statuses}")


@pytest.fixture
def fast_umap(monkeypatch):
    monkeypatch.setattr(execution_module, "compute_umap", lambda emb_nd, seed=0, labels_n=None: emb_nd[:, :2].copy())


@pytest.fixture
def managers(fast_umap):
    started = []

    def start(**kwargs):
        kwargs.setdefault("processes", False)
        kwargs.setdefault("score", False)
        manager = JobManager(Workspace(), **kwargs)
        started.append(manager)
        return manager

    yield start
    for manager in started:
        manager.shutdown(timeout=10)


# -- records, not hashes -------------------------------------------------------------------------------


def test_an_admin_deletes_exactly_the_record_on_screen(small_h5ad, monkeypatch, fresh_manager):  # noqa: F811
    monkeypatch.setenv("CZB_ADMINS", "root")
    from pages.common import job_manager

    manager = job_manager()
    alice = manager.workspace.add_file(small_h5ad, owner="alice")
    bob = manager.workspace.add_file(small_h5ad, owner="bob")
    job = wait_for(manager, manager.submit(alice.id, "pca", owner="alice", params={"n_comps": 3}, score=False).id,
                   {"done"})
    monkeypatch.setenv("CZB_USER", "root")
    at = page("dataset")
    assert not at.exception, at.exception  # one row per record: no duplicate keys for the same bytes
    at.button(key=f"delete_{bob.id}").click().run()
    assert any(bob.name in w.value for w in at.warning)
    at.button(key=f"delete_yes_{bob.id}").click().run()
    assert not at.exception
    assert [r.id for r in manager.workspace.list()] == [alice.id]
    kept = manager.get(job.id)
    assert kept.status == "done" and is_complete(kept.artifact_dir)


def test_a_job_reads_its_owners_file_never_another_users_copy(managers, tmp_path, monkeypatch):
    """Alice registers a server file; Bob uploads the same bytes. Alice's in-place edit must not reach
    Bob's runs, which read Bob's own copy; her runs are refused; her path never shows in his messages."""
    root = tmp_path / "lab"
    root.mkdir()
    monkeypatch.setenv("CZB_DATA_ROOTS", str(root))
    from czb_core.io.synthetic import make_synthetic_counts

    adata = make_synthetic_counts(n_cells=120, n_genes=60, n_types=3, n_batches=1, seed=4)
    server_file = root / "cells.h5ad"
    adata.write_h5ad(server_file)
    manager = managers()
    alices = manager.workspace.add_server_path(server_file, owner="alice")
    with open(server_file, "rb") as fh:
        bobs = manager.workspace.add_stream(fh, "cells.h5ad", owner="bob")
    assert bobs.sha256 == alices.sha256 and bobs.path != alices.path

    edited = adata.copy()
    edited.obs["cell_type"] = edited.obs["cell_type"].astype(str).str.upper()  # same shape, other labels
    edited.write_h5ad(tmp_path / "edited.h5ad")
    data = (tmp_path / "edited.h5ad").read_bytes()
    if len(data) == server_file.stat().st_size:
        server_file.write_bytes(data)  # in place, same size: the case a size check alone misses
    else:
        with open(server_file, "r+b") as fh:  # flip bytes inside the file, keeping its size
            fh.seek(server_file.stat().st_size // 2)
            fh.write(b"\x00" * 64)

    job = wait_for(manager, manager.submit(bobs.id, "pca", owner="bob", params={"n_comps": 3}).id, {"done", "failed"})
    assert job.status == "done", job.error
    _, obs, _ = read_embedding(job.artifact_dir)
    assert set(obs["cell_type"].astype(str)) == set(adata.obs["cell_type"].astype(str))  # Bob's bytes
    record = json.loads((job.artifact_dir / "record.json").read_text())
    assert str(root) not in json.dumps(record)

    with pytest.raises(InputError, match="changed since it was added"):
        manager.workspace.dataset_path(alices.id, "alice")
    refused = wait_for(manager, manager.submit(alices.id, "pca", owner="alice", params={"n_comps": 2}).id,
                       {"done", "failed"})
    assert refused.status == "failed" and "changed since it was added" in refused.error

    server_file.unlink()
    again = wait_for(manager, manager.submit(bobs.id, "pca", owner="bob", params={"n_comps": 2}).id,
                     {"done", "failed"})
    assert again.status == "done" and str(root) not in (again.error or "")


def test_a_touched_file_with_the_same_bytes_is_accepted_after_a_rehash(tmp_path, monkeypatch, small_h5ad):
    root = tmp_path / "lab"
    root.mkdir()
    monkeypatch.setenv("CZB_DATA_ROOTS", str(root))
    path = root / "a.h5ad"
    path.write_bytes(small_h5ad.read_bytes())
    ws = Workspace()
    record = ws.add_server_path(path, owner="alice")
    os.utime(path, ns=(1, 1))
    assert ws.dataset_path(record.id, "alice") == path
    assert ws.get(record.id).identity.mtime_ns == 1  # the new identity is kept: no re-hash next time


def test_the_workspace_cannot_be_opened_by_server_path(tmp_path, monkeypatch, small_h5ad):
    monkeypatch.setenv("CZB_DATA_ROOTS", str(tmp_path))  # a data root that holds CZB_HOME
    ws = Workspace()
    bobs = ws.add_file(small_h5ad, owner="bob")
    with pytest.raises(InputError, match="outside the allowed data folders"):
        ws.add_server_path(bobs.path, owner="alice")
    with pytest.raises(ConfigError, match="lies inside the data folder"):  # and a server refuses to start so
        JobManager(ws, processes=False, score=False)


def test_a_legacy_workspace_gets_record_ids_and_its_jobs_name_them(tmp_path, small_h5ad):
    ws_root = tmp_path / "old"
    ws_root.mkdir()
    db = ws_root / "czb.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE datasets (sha256 TEXT NOT NULL, name TEXT NOT NULL, path TEXT NOT NULL, "
                     "owner TEXT NOT NULL, created_at TEXT NOT NULL, size_bytes INTEGER NOT NULL, "
                     "parent_sha256 TEXT, note TEXT NOT NULL DEFAULT '', organism TEXT, PRIMARY KEY (sha256, owner))")
        for owner in ("alice", "bob"):
            conn.execute("INSERT INTO datasets VALUES ('a' || ?, 'x.h5ad', ?, ?, '2026-01-01', ?, NULL, '', NULL)",
                         ("0" * 63, str(small_h5ad), owner, small_h5ad.stat().st_size))
    store = JobStore(db)  # a jobs table without dataset ids, made before the datasets were migrated
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO jobs (id, owner, spec_json, spec_key, dataset_sha256, model, variant, status, "
                     "device, created_at) VALUES ('j1', 'bob', ?, 'k', ?, 'pca', 'default', 'done', 'cpu', 'x')",
                     (JobSpec("a" + "0" * 63, "pca", "default").to_json(), "a" + "0" * 63))
        conn.execute("UPDATE jobs SET dataset_id = NULL")
    ws = Workspace(ws_root)
    JobStore(db)
    records = {r.owner: r for r in ws.list()}
    assert set(records) == {"alice", "bob"} and records["alice"].id != records["bob"].id
    assert store.get("j1").dataset_id == records["bob"].id


# -- one writer per workspace --------------------------------------------------------------------------


def test_a_second_server_on_the_same_workspace_refuses_to_start(tmp_path):
    script = ("import sys, time; from czb_core.service.writer_lock import acquire_writer; "
              "from pathlib import Path; acquire_writer(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)")
    Workspace()  # the folder exists
    holder = subprocess.Popen([sys.executable, "-c", script, str(Workspace().root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
            JobManager(Workspace(), processes=False, score=False)
    finally:
        holder.kill()
        holder.wait()
    manager = JobManager(Workspace(), processes=False, score=False)  # released with its holder's end
    manager.shutdown()


def test_finishing_a_job_twice_never_destroys_its_result(managers, small_h5ad):
    """A second CPU stage on a job that is already done (a second server once re-queued its UMAP) fails
    on the missing pending record, and must leave the done job and its files alone."""
    manager = managers()
    record = manager.workspace.add_file(small_h5ad)
    job = wait_for(manager, manager.submit(record.id, "pca", params={"n_comps": 3}).id, {"done"})
    files = sorted(p.name for p in job.artifact_dir.iterdir())
    JobRunner(manager.workspace, manager.store).finish(manager.store.get(job.id))
    kept = manager.get(job.id)
    assert kept.status == "done" and kept.error is None
    assert sorted(p.name for p in kept.artifact_dir.iterdir()) == files and is_complete(kept.artifact_dir)


def test_progress_of_a_job_that_is_no_longer_running_is_not_written(tmp_path):
    store = JobStore(tmp_path / "db.sqlite")
    job, _ = store.submit(JobSpec("d" * 64, "pca", "default"), "ana", "cpu", "rec")
    store.claim_next("cpu")
    store.mark_interrupted_on_startup()
    store.update_progress(job.id, "embed", 5, 10)
    got = store.get(job.id)
    assert got.status == "interrupted" and got.done == 0


# -- per-job logs --------------------------------------------------------------------------------------


def test_a_jobs_log_holds_its_own_lines_only_and_no_traceback(tmp_path):
    import logging

    log = logging.getLogger("czb.test.joblog")
    log.setLevel(logging.INFO)
    ready, go = threading.Barrier(2), threading.Event()

    def run(job_id: str, secret: str) -> None:
        with job_log(tmp_path, job_id):
            ready.wait()
            log.info("reading %s", secret)
            try:
                raise RuntimeError(f"inside {secret}")
            except RuntimeError:
                log.exception("failed")
            go.wait(5)

    threads = [threading.Thread(target=run, args=(j, s)) for j, s in (("a", "/data/alice.h5ad"),
                                                                   ("b", "/data/bob.h5ad"))]
    for t in threads:
        t.start()
    time.sleep(0.2)
    go.set()
    for t in threads:
        t.join()
    alice, bob = job_log_tail(tmp_path, "a"), job_log_tail(tmp_path, "b")
    assert "alice" in alice and "bob" not in alice and "bob" in bob and "alice" not in bob
    assert "Traceback" not in alice and "inside" not in alice


# -- storage failures ----------------------------------------------------------------------------------


def test_a_full_disk_fails_the_job_with_the_cause_once_the_store_answers(managers, small_h5ad, monkeypatch):
    manager = managers()
    record = manager.workspace.add_file(small_h5ad)
    original = JobStore.set_status
    failures = iter([True, True])  # the first two final writes meet a full disk

    def flaky(self, job_id, status, **kwargs):
        if status == "failed" and next(failures, False):
            raise sqlite3.OperationalError("database or disk is full")
        return original(self, job_id, status, **kwargs)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(JobStore, "set_status", flaky)
    monkeypatch.setattr(execution_module, "write_run_h5ad", full_disk)
    monkeypatch.setattr("czb_core.service.jobs.store.STORE_RETRY_S", 0.05)
    job = wait_for(manager, manager.submit(record.id, "pca", params={"n_comps": 3}).id, {"done", "failed"})
    assert job.status == "failed" and "disk is full" in job.error
    assert not (manager.workspace.root / "jobs" / job.id).exists()


def test_an_upload_on_a_full_disk_says_so_and_leaves_nothing(small_h5ad, monkeypatch):
    ws = Workspace()

    class FullDisk:
        def __init__(self, data: bytes):
            self.data, self.sent = data, False

        def read(self, n):
            if self.sent:
                raise OSError(28, "No space left on device")
            self.sent = True
            return self.data[:n]

    with pytest.raises(StorageError, match="disk is full"):
        ws.add_stream(FullDisk(small_h5ad.read_bytes()), "cells.h5ad", owner="ana")
    assert ws.list() == [] and not any((ws.datasets_dir / ".incoming").iterdir())


# -- atomic submits and quotas -------------------------------------------------------------------------


def test_simultaneous_submits_make_one_job_and_respect_the_queue_cap(small_h5ad, monkeypatch):
    monkeypatch.setenv("CZB_MAX_QUEUED_JOBS", "2")
    manager = JobManager(Workspace(), start_workers=False)
    record = manager.workspace.add_file(small_h5ad)
    barrier = threading.Barrier(8)
    same, different, refused = [], [], []

    def submit(n_comps, into):
        barrier.wait()
        try:
            into.append(manager.submit(record.id, "pca", params={"n_comps": n_comps}, score=False).id)
        except QuotaError:
            refused.append(n_comps)

    threads = [threading.Thread(target=submit, args=(3, same)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(same)) == 1 and len(same) == 8 and not refused
    barrier.reset()
    threads = [threading.Thread(target=submit, args=(4 + i, different)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(manager.store.list(statuses=("queued",))) == 2 and len(refused) == 7


def test_partial_uploads_count_against_the_quota_and_are_swept_at_start(managers, small_h5ad, monkeypatch):
    monkeypatch.setenv("CZB_USER_QUOTA_GB", str(1.5 / 1024))  # 1.5 MB
    ws = Workspace()
    partial = ws.datasets_dir / ".incoming" / f"{owner_key('ana')}-left-by-a-crash"
    partial.mkdir(parents=True)
    (partial / "upload.h5ad").write_bytes(b"\0" * (1 << 20))
    quotas = Quotas(ws, JobStore(ws.db_path))
    assert quotas.disk_use("ana") == 1 << 20 and quotas.disk_use("bob") == 0
    with pytest.raises(QuotaError):
        quotas.check_upload("ana", 1 << 20)
    managers()  # a new server: what a crash left half-written is removed
    assert not partial.exists() and quotas.disk_use("ana") == 0


def test_a_fix_past_the_disk_quota_is_refused_before_it_is_written(managers, small_h5ad, monkeypatch):
    manager = managers()
    record = manager.workspace.add_file(small_h5ad, owner="ana")
    monkeypatch.setenv("CZB_USER_QUOTA_GB", str(record.size_bytes * 1.5 / (1 << 30)))
    fix_id = manager.fixes.submit(record.id, "batch_key", owner="ana", columns=["batch"])
    deadline = time.monotonic() + 30
    with pytest.raises(QuotaError, match="disk quota"):
        while manager.fixes.result(fix_id) is None and time.monotonic() < deadline:
            time.sleep(0.05)
    assert [r.id for r in manager.workspace.list()] == [record.id]


def test_an_admin_on_another_users_dataset_gets_no_run_button(small_h5ad, monkeypatch, fresh_manager):  # noqa: F811
    monkeypatch.setenv("CZB_ADMINS", "root")
    monkeypatch.setenv("CZB_USER", "root")
    from pages.common import job_manager

    alice = job_manager().workspace.add_file(small_h5ad, owner="alice")
    at = page("run", dataset=alice.id)
    assert not at.exception, at.exception
    assert any("alice's" in i.value for i in at.info)
    assert next(b for b in at.button if b.label == "Run").disabled
