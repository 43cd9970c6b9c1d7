"""The CPU pool: UMAPs and scoring runs in processes of their own, so a device queue never waits for them.

Thread-mode tests (stand-in runs, a UMAP that blocks on request) check the hand-off; the slow ones run real
spawned processes: which process did the work, identical results, a pool process that dies.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from czb_core.service.jobs import JobManager, JobStore
from czb_core.service.jobs import execution as execution_module
from czb_core.service.jobs.artifacts import is_complete, read_embedding, read_record, read_umap
from czb_core.service.jobs.execution import JobRunner
from czb_core.service.workspace import Workspace
from tests.integration.test_jobs import FakeRun, wait_for, wait_for_scores, wait_gone


@pytest.fixture
def workspace():
    return Workspace()


@pytest.fixture
def dataset(workspace, small_h5ad):
    return workspace.add_file(small_h5ad)


@pytest.fixture
def umap_gate(monkeypatch):
    """A stand-in UMAP that waits while the gate is closed; `inside` counts the UMAPs in progress."""
    gate = threading.Event()
    inside = []

    def gated_umap(emb_nd, seed=0, labels_n=None):
        inside.append(seed)
        assert gate.wait(20)
        return emb_nd[:, :2].copy()

    monkeypatch.setattr(execution_module, "compute_umap", gated_umap)
    return gate, inside


@pytest.fixture
def start(workspace):
    managers = []

    def _start(**kwargs):
        manager = JobManager(workspace, run_fn=kwargs.pop("run_fn", FakeRun()), score=False, processes=False, **kwargs)
        managers.append(manager)
        return manager

    yield _start
    for manager in managers:
        for job in manager.list(statuses=("queued", "running")):
            manager.cancel(job.id)
        manager.shutdown(timeout=5)


def wait_until(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def test_the_device_queue_goes_on_while_a_umap_runs(start, dataset, umap_gate):
    gate, inside = umap_gate
    manager = start()
    first = manager.submit(dataset.id, "pca", params={"n_comps": 1})
    wait_until(lambda: manager.get(first.id).cpu_stage == "running")
    second = manager.submit(dataset.id, "pca", params={"n_comps": 2})
    wait_until(lambda: manager.get(second.id).cpu_stage == "queued")  # embedded while the first UMAP runs
    assert manager.get(first.id).status == "running" and manager.get(first.id).step == "umap"
    assert manager.store.device_loads(["cpu"]) == {"cpu": 0}  # the device is free for the next job
    gate.set()
    for job in (first, second):
        done = wait_for(manager, job.id, {"done"})
        assert is_complete(done.artifact_dir) and not (done.artifact_dir / "record.pending.json").exists()
        assert set(read_record(done.artifact_dir)["job"]["step_seconds"]) >= {"embed", "umap"}


def test_the_pool_runs_as_many_umaps_at_once_as_it_has_workers(start, dataset, umap_gate, monkeypatch):
    monkeypatch.setenv("CZB_CPU_WORKERS", "2")
    gate, inside = umap_gate
    manager = start()
    jobs = [manager.submit(dataset.id, "pca", params={"n_comps": n}) for n in (1, 2, 3)]
    wait_until(lambda: len(inside) == 2)
    time.sleep(0.3)
    assert len(inside) == 2  # the third waits for a pool worker
    assert sorted(manager.get(j.id).cpu_stage for j in jobs) == ["queued", "running", "running"]
    gate.set()
    assert all(wait_for(manager, j.id, {"done"}).status == "done" for j in jobs)


def test_a_cancel_while_waiting_for_the_umap_removes_the_files(start, dataset, umap_gate):
    gate, _ = umap_gate
    manager = start()
    first = manager.submit(dataset.id, "pca", params={"n_comps": 1})
    wait_until(lambda: manager.get(first.id).cpu_stage == "running")
    waiting = manager.submit(dataset.id, "pca", params={"n_comps": 2})
    wait_until(lambda: manager.get(waiting.id).cpu_stage == "queued")
    assert manager.cancel(waiting.id).cancel_requested
    gate.set()
    cancelled = wait_for(manager, waiting.id, {"cancelled"})
    assert wait_gone(manager.workspace.root / "jobs" / cancelled.id)
    assert wait_for(manager, first.id, {"done"}).status == "done"


def test_a_restart_runs_again_the_umap_of_an_embedded_job(start, workspace, dataset, monkeypatch):
    monkeypatch.setattr(execution_module, "compute_umap", lambda emb_nd, seed=0, labels_n=None: emb_nd[:, :2].copy())
    store = JobStore(workspace.db_path)
    first = start(start_workers=False)
    job = first.submit(dataset.id, "pca", params={"n_comps": 3}, score=False)
    JobRunner(workspace, store, FakeRun()).run(store.claim_next("cpu", 1))  # the server died after this
    assert store.get(job.id).cpu_stage == "queued" and store.get(job.id).status == "running"
    second = start()
    done = wait_for(second, job.id, {"done", "interrupted", "failed"})
    assert done.status == "done" and is_complete(done.artifact_dir)


def test_a_umap_error_fails_the_job_alone(start, dataset, monkeypatch):
    def umap(emb_nd, seed=0, labels_n=None):
        if seed == 7:
            raise ValueError("umap: disconnected graph")
        return emb_nd[:, :2].copy()

    monkeypatch.setattr(execution_module, "compute_umap", umap)

    def seeded(path, model, variant, **kwargs):
        result = FakeRun()(path, model, variant, **kwargs)
        result.record["seed"] = kwargs["params"].get("seed", 0)
        return result

    manager = start(run_fn=seeded)
    bad = wait_for(manager, manager.submit(dataset.id, "pca", params={"seed": 7}).id, {"done", "failed"})
    assert bad.status == "failed" and bad.error == "ValueError: umap: disconnected graph"
    assert wait_gone(manager.workspace.root / "jobs" / bad.id)
    job = wait_for(manager, manager.submit(dataset.id, "pca", params={"seed": 8}).id, {"done", "failed"})
    assert job.status == "done"


# -- real processes ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_umap_and_metrics_run_in_the_pool_process_with_identical_results(workspace, dataset):
    from czb_core.viz.umap import compute_umap

    manager = JobManager(workspace)
    try:
        job = wait_for(manager, manager.submit(dataset.id, "pca", params={"n_comps": 10}).id,
                       {"done", "failed"}, timeout=300)
        (score,) = wait_for_scores(manager, job.id, timeout=300)
        pool_pid = manager.supervisor.workers["cpu-pool-0"].pid
        device_pid = manager.supervisor.workers["cpu"].pid
    finally:
        manager.shutdown()
    assert job.status == "done", job.error
    assert job.worker_pid == pool_pid != device_pid and score.worker_pid == pool_pid != os.getpid()
    assert score.status == "done", score.error
    assert sorted(p.name for p in job.artifact_dir.iterdir()) == [
        "embedding.h5ad", "metrics", "record.json", "umap.npy"]
    record = json.loads((job.artifact_dir / "record.json").read_text())
    emb_nd, _, _ = read_embedding(job.artifact_dir)
    np.testing.assert_array_equal(read_umap(job.artifact_dir), compute_umap(emb_nd, seed=record["seed"]))
    assert list(record["job"]) == ["id", "owner", "spec_key", "device", "notes", "step_seconds"]
    assert {"pca", "umap"} <= set(record["job"]["step_seconds"])


@pytest.mark.slow
def test_a_pool_process_that_dies_fails_its_umap_with_the_cause_and_is_replaced(workspace, dataset):
    manager = JobManager(workspace, score=False)
    try:
        pool = manager.supervisor.workers["cpu-pool-0"]
        first_pid = pool.pid
        job = manager.submit(dataset.id, "pca", params={"n_comps": 5})
        wait_until(lambda: manager.get(job.id).cpu_stage == "running", timeout=300)
        os.kill(first_pid, signal.SIGKILL)
        failed = wait_for(manager, job.id, {"failed", "done"}, timeout=60)
        assert failed.status == "failed", "the UMAP finished before the kill"
        assert failed.error.startswith("UMAP failed: the worker process was killed (SIGKILL)")
        assert wait_gone(workspace.root / "jobs" / job.id)
        wait_until(lambda: pool.alive() and pool.pid != first_pid, timeout=30)
        assert pool.restarts == 1 and manager.supervisor.workers["cpu"].restarts == 0
        again = wait_for(manager, manager.retry(job.id).id, {"done", "failed"}, timeout=300)
        assert again.status == "done", again.error
    finally:
        manager.shutdown()
