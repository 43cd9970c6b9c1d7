"""Faults in worker processes, on real OS processes: the server process stays up and the next job runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from czb_core.service.jobs import JobManager
from czb_core.service.jobs.artifacts import read_embedding, read_record, read_umap
from czb_core.service.jobs.store import JobStore
from czb_core.service.workspace import Workspace
from tests.helpers.fault_runs import ABORTS, ALLOCATES, KILLED, STUCK, fault_run

pytestmark = pytest.mark.slow
SERVER_PID = os.getpid()


def wait_for(manager, job_id, statuses, timeout=300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = manager.get(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} stayed {manager.get(job_id).status}, expected {statuses}")


@pytest.fixture
def dataset(small_h5ad):
    return Workspace().add_file(small_h5ad)


@pytest.fixture
def manager():
    managers = []

    def start(**kwargs):
        m = JobManager(run_fn=fault_run, score=False, **kwargs)
        managers.append(m)
        return m

    yield start
    for m in managers:
        m.shutdown(timeout=10)


def next_job_completes(m, dataset):
    job = wait_for(m, m.submit(dataset.id, "pca", params={"n_comps": 5}, score=False).id, {"done", "failed"})
    assert job.status == "done", job.error
    assert os.getpid() == SERVER_PID


@pytest.mark.parametrize("fault, cause", [(KILLED, "killed (SIGKILL): most often the OS out-of-memory killer"),
                                          (ABORTS, "crashed (SIGABRT)")])
def test_a_worker_that_dies_fails_its_job_with_the_cause_and_is_replaced(manager, dataset, fault, cause):
    m = manager()
    first_pid = m.supervisor.workers["cpu"].pid
    job = wait_for(m, m.submit(dataset.id, "pca", params={"n_comps": fault}).id, {"failed", "done"})
    assert job.status == "failed" and cause in job.error and "unaffected" in job.error
    next_job_completes(m, dataset)
    worker = m.supervisor.workers["cpu"]
    assert worker.pid != first_pid and worker.restarts == 1


def test_a_job_past_the_workers_memory_limit_fails_alone(manager, dataset, monkeypatch):
    monkeypatch.setenv("CZB_WORKER_MEMORY_LIMIT_MB", "3000")
    m = manager()
    job = wait_for(m, m.submit(dataset.id, "pca", params={"n_comps": ALLOCATES}).id, {"failed", "done"})
    assert job.status == "failed" and job.error.startswith("MemoryError")
    next_job_completes(m, dataset)
    assert m.supervisor.workers["cpu"].restarts == 0  # the process survived its job's failure


def test_cancel_of_a_job_stuck_in_a_native_call_ends_its_worker(manager, dataset):
    m = manager()
    job = m.submit(dataset.id, "pca", params={"n_comps": STUCK})
    wait_for(m, job.id, {"running"})
    time.sleep(1.0)  # inside the call
    asked = time.monotonic()
    m.cancel(job.id)
    job = wait_for(m, job.id, {"cancelled"}, timeout=30)
    assert time.monotonic() - asked < 15 and "worker was stopped" in job.message
    next_job_completes(m, dataset)


def finished_files(job):
    """What a finished job's pages read: the embedding, the UMAP and the run record."""
    return read_embedding(job.artifact_dir)[0], read_umap(job.artifact_dir), read_record(job.artifact_dir)


def test_a_restart_keeps_finished_jobs_reruns_queued_ones_and_marks_running_ones(manager, dataset):
    first = manager()
    done = wait_for(first, first.submit(dataset.id, "pca", params={"n_comps": 6}).id, {"done"})
    emb_nd, umap_n2, record = finished_files(done)
    running = first.submit(dataset.id, "pca", params={"n_comps": STUCK})
    wait_for(first, running.id, {"running"})
    queued = first.submit(dataset.id, "pca", params={"n_comps": 7})
    first.shutdown(timeout=10)  # the server goes away; its worker with it
    second = manager()
    assert second.get(running.id).status == "interrupted"
    assert wait_for(second, queued.id, {"done", "failed"}).status == "done"
    kept = second.get(done.id)
    assert kept.status == "done" and kept.artifact_dir == done.artifact_dir
    emb_after, umap_after, record_after = finished_files(kept)
    np.testing.assert_array_equal(emb_after, emb_nd)
    np.testing.assert_array_equal(umap_after, umap_n2)
    assert record_after == record


def hold_exclusive_lock(db, seconds: float) -> subprocess.Popen:
    """Another OS process holding the database's write lock (BEGIN EXCLUSIVE) for `seconds`."""
    locker = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
        f"c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep({seconds}); c.execute('COMMIT')"),
        str(db)], stdout=subprocess.PIPE, text=True)
    assert locker.stdout.readline().strip() == "locked"
    return locker


def test_a_database_locked_by_another_process_only_delays_the_job(manager, dataset):
    m = manager()
    db = Workspace().db_path
    locker = hold_exclusive_lock(db, 4)
    try:
        job = m.submit(dataset.id, "pca", params={"n_comps": 8}, score=False)  # waits for the lock
    finally:
        locker.wait(30)
    assert wait_for(m, job.id, {"done", "failed"}).status == "done"
    assert JobStore(db).get(job.id).status == "done"


def test_a_database_locked_while_jobs_run_loses_nothing(manager, dataset):
    """Workers writing progress, handing a job to the CPU pool and finishing it all wait for the lock."""
    m = manager()
    done = wait_for(m, m.submit(dataset.id, "pca", params={"n_comps": 6}, score=False).id, {"done"})
    emb_nd, umap_n2, record = finished_files(done)
    jobs = [m.submit(dataset.id, "pca", params={"n_comps": n}, score=False) for n in (7, 8)]
    wait_for(m, jobs[0].id, {"running"})
    locker = hold_exclusive_lock(m.workspace.db_path, 5)
    try:
        assert locker.wait(30) == 0
    finally:
        locker.kill()
    finished = [wait_for(m, job.id, {"done", "failed", "cancelled", "interrupted"}) for job in jobs]
    assert [j.status for j in finished] == ["done", "done"], [j.error for j in finished]
    store = JobStore(m.workspace.db_path)
    assert {j.id for j in store.list()} == {done.id, *(j.id for j in jobs)}
    kept = store.get(done.id)
    assert kept.status == "done"
    emb_after, umap_after, record_after = finished_files(kept)
    np.testing.assert_array_equal(emb_after, emb_nd)
    np.testing.assert_array_equal(umap_after, umap_n2)
    assert record_after == record
