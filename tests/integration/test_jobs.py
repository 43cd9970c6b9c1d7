"""The job manager: per-device FIFO queue, cancel, OOM retry, crash isolation, restart recovery, cache.

Most tests drive the manager with a fake `run_fn` that returns a real `RunResult` (and a stand-in UMAP,
so numba is not compiled for each); one test runs the real PCA baseline and UMAP end to end.
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from czb_core.errors import ConfigError, DeviceOutOfMemory, InputError
from czb_core.models.pipeline import RunResult
from czb_core.schema.report import ValidationReport
from czb_core.service.jobs import JobManager, JobSpec, JobStore
from czb_core.service.jobs import execution as execution_module
from czb_core.service.jobs.artifacts import is_complete, read_embedding, read_record, read_umap
from czb_core.service.workspace import Workspace

N_CELLS = 6


def fake_result(params: dict) -> RunResult:
    emb_nd = np.random.default_rng(0).normal(size=(N_CELLS, 4)).astype(np.float32)
    obs = pd.DataFrame({"cell_type": list("aabbcc")}, index=[f"cell{i}" for i in range(N_CELLS)])
    record = {"model": "pca", "obsm_key": "X_pca", "params": dict(params), "seed": 0}
    return RunResult("pca", "default", emb_nd, obs, record, ValidationReport("pca"))


class FakeRun:
    """A `run_fn` that records its calls; `behaviour(params, cancel)` may block, raise or loop."""

    def __init__(self, behaviour=None):
        self.behaviour = behaviour
        self.calls: list[dict] = []

    def __call__(self, path, model, variant, *, organism, params, weights, device, progress, cancel, input_sha256):
        self.calls.append(dict(params))
        progress("embed", 0, 1)
        if self.behaviour is not None:
            self.behaviour(params, cancel)
        progress("embed", 1, 1)
        return fake_result(params)


def wait_for(manager, job_id, statuses, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = manager.get(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} stayed {manager.get(job_id).status}, expected {statuses}")


def wait_gone(path, timeout=10.0) -> bool:
    """Whether `path` is gone within `timeout`: a job's partial files are removed just after its end status is
    written (only the process whose compare-and-set ended the job removes them), so a reader may see the
    status a moment before the files go."""
    deadline = time.monotonic() + timeout
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return not path.exists()


def wait_for_scores(manager, job_id, timeout=300.0):
    """The job's scoring runs once none is queued or running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        scores = manager.scores(job_id)
        if scores and all(s.status not in ("queued", "running") for s in scores):
            return scores
        time.sleep(0.05)
    raise AssertionError(f"scoring of job {job_id} did not finish: {[s.status for s in manager.scores(job_id)]}")


@pytest.fixture
def fake_manager(monkeypatch):
    """A manager on worker threads with a stand-in model run and UMAP, without scoring: the job layer alone."""
    monkeypatch.setattr(execution_module, "compute_umap", lambda emb_nd, seed=0, labels_n=None: emb_nd[:, :2].copy())
    manager = JobManager(Workspace(), run_fn=FakeRun(), score=False, processes=False)
    yield manager
    manager.shutdown(timeout=5)


@pytest.fixture
def fast_umap(monkeypatch):
    monkeypatch.setattr(execution_module, "compute_umap", lambda emb_nd, seed=0, labels_n=None: emb_nd[:, :2].copy())


@pytest.fixture
def workspace():
    return Workspace()


@pytest.fixture
def dataset(workspace, small_h5ad):
    return workspace.add_file(small_h5ad)


@pytest.fixture
def start(workspace, fast_umap):
    """Start managers on the test workspace; every one is shut down after the test."""
    managers = []

    def _start(run_fn, **kwargs):
        kwargs.setdefault("score", False)  # fake runs: scoring is tested on real ones
        kwargs.setdefault("processes", False)  # fake runs share state with the test: threads of this process
        manager = JobManager(workspace, run_fn=run_fn, **kwargs)
        managers.append(manager)
        return manager

    yield _start
    for manager in managers:
        for job in manager.list(statuses=("queued", "running")):
            manager.cancel(job.id)
        manager.shutdown(timeout=5)


def blocking_first_job():
    """A behaviour whose first call waits for `release`; later calls return at once."""
    release, started = threading.Event(), threading.Event()

    def behaviour(params, cancel):
        if params.get("n_comps") == 1:
            started.set()
            assert release.wait(10)

    return behaviour, started, release


def test_queue_is_fifo_per_device_with_positions(start, dataset):
    behaviour, started, release = blocking_first_job()
    run = FakeRun(behaviour)
    manager = start(run)
    first = manager.submit(dataset.id, "pca", params={"n_comps": 1})
    assert started.wait(10)
    queued = [manager.submit(dataset.id, "pca", params={"n_comps": n}) for n in (2, 3, 4)]
    assert manager.get(first.id).status == "running" and manager.queue_position(first.id) is None
    assert [manager.queue_position(j.id) for j in queued] == [1, 2, 3]
    assert all(j.device == "cpu" and j.status == "queued" for j in queued)
    release.set()
    for job in queued:
        wait_for(manager, job.id, {"done"})
    assert [c["n_comps"] for c in run.calls] == [1, 2, 3, 4]


def test_cancel_queued_job_never_runs(start, dataset):
    behaviour, started, release = blocking_first_job()
    run = FakeRun(behaviour)
    manager = start(run)
    first = manager.submit(dataset.id, "pca", params={"n_comps": 1})
    assert started.wait(10)
    waiting = manager.submit(dataset.id, "pca", params={"n_comps": 2})
    cancelled = manager.cancel(waiting.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at
    assert manager.queue_position(waiting.id) is None
    release.set()
    wait_for(manager, first.id, {"done"})
    assert [c["n_comps"] for c in run.calls] == [1]


def test_cancel_running_job_stops_between_batches(start, dataset):
    def loop_until_cancelled(params, cancel):
        if params.get("n_comps") == 1:
            while True:
                cancel.check()
                time.sleep(0.01)

    manager = start(FakeRun(loop_until_cancelled))
    job = manager.submit(dataset.id, "pca", params={"n_comps": 1})
    wait_for(manager, job.id, {"running"})
    assert manager.cancel(job.id).cancel_requested
    job = wait_for(manager, job.id, {"cancelled"})
    assert job.artifact_dir is None and wait_gone(manager.workspace.root / "jobs" / job.id)
    again = wait_for(manager, manager.submit(dataset.id, "pca", params={"n_comps": 2}).id, {"done", "failed"})
    assert again.status == "done"


def test_cuda_oom_halves_batch_size_until_it_fits(start, dataset):
    def oom_above_8(params, cancel):
        used = params.get("batch_size", 64)  # a runner that chose 64 itself when none was asked for
        if used > 8:
            raise DeviceOutOfMemory(used)

    run = FakeRun(oom_above_8)
    manager = start(run)
    job = wait_for(manager, manager.submit(dataset.id, "pca").id, {"done", "failed"})
    assert job.status == "done", job.error
    expected = [
        "CUDA out of memory at batch size 64; retried at 32",
        "CUDA out of memory at batch size 32; retried at 16",
        "CUDA out of memory at batch size 16; retried at 8",
    ]
    assert job.notes == expected
    assert [c.get("batch_size") for c in run.calls] == [None, 32, 16, 8]
    assert read_record(job.artifact_dir)["job"]["notes"] == expected
    assert job.spec.params == {}  # the cache key is the request, not the retry


def test_cuda_oom_at_batch_size_1_fails_clearly(start, dataset):
    def always_oom(params, cancel):
        raise DeviceOutOfMemory(params["batch_size"])

    manager = start(FakeRun(always_oom))
    job = wait_for(manager, manager.submit(dataset.id, "pca", params={"batch_size": 16}).id, {"done", "failed"})
    assert job.status == "failed"
    assert job.error.startswith("CUDA out of memory even at batch size 1")
    assert [n.split("; ")[1] for n in job.notes] == ["retried at 8", "retried at 4", "retried at 2", "retried at 1"]


def test_a_crashing_job_fails_alone(start, dataset):
    def crash(params, cancel):
        if params["n_comps"] == 1:
            raise ValueError("matrix has NaN")
        if params["n_comps"] == 2:
            raise InputError("data.h5ad: the dataset has zero cells")

    manager = start(FakeRun(crash))
    jobs = [manager.submit(dataset.id, "pca", params={"n_comps": n}) for n in (1, 2, 3)]
    crashed, invalid, fine = (wait_for(manager, j.id, {"done", "failed"}) for j in jobs)
    assert (crashed.status, crashed.error) == ("failed", "ValueError: matrix has NaN")
    assert (invalid.status, invalid.error) == ("failed", "data.h5ad: the dataset has zero cells")
    assert fine.status == "done" and is_complete(fine.artifact_dir)
    assert all(t.is_alive() for t in manager._threads)


def test_restart_marks_running_jobs_interrupted_and_keeps_results(start, workspace, dataset):
    first = start(FakeRun())
    finished = wait_for(first, first.submit(dataset.id, "pca", params={"n_comps": 1}).id, {"done"})
    first.shutdown()
    # What a server killed mid-run leaves behind: one job running, one still queued.
    store = JobStore(workspace.db_path)
    spec = JobSpec(dataset.sha256, "pca", "default", {"n_comps": 2})
    running, _ = store.submit(spec, dataset.owner, "cpu", dataset.id)
    assert store.claim_next("cpu").id == running.id
    waiting, _ = store.submit(JobSpec(dataset.sha256, "pca", "default", {"n_comps": 3}), dataset.owner, "cpu",
                              dataset.id)

    second = start(FakeRun())
    interrupted = second.get(running.id)
    assert interrupted.status == "interrupted" and "restarted" in interrupted.message
    assert wait_for(second, waiting.id, {"done"}).status == "done"
    kept = second.get(finished.id)
    assert kept.status == "done" and is_complete(kept.artifact_dir)

    again = second.retry(running.id)
    assert again.id != running.id and again.spec == spec
    assert wait_for(second, again.id, {"done"}).status == "done"
    with pytest.raises(ConfigError, match="only failed, cancelled or interrupted"):
        second.retry(finished.id)


def test_same_spec_is_a_cache_hit(start, dataset):
    run = FakeRun()
    manager = start(run)
    job = wait_for(manager, manager.submit(dataset.id, "pca", params={"n_comps": 5}).id, {"done"})
    same = manager.submit(dataset.id, "pca", "default", params={"n_comps": 5}, device="cpu")
    assert same.id == job.id and same.status == "done" and len(run.calls) == 1

    other = manager.submit(dataset.id, "pca", params={"n_comps": 6})
    assert other.id != job.id
    wait_for(manager, other.id, {"done"})

    shutil.rmtree(job.artifact_dir)  # results gone from disk: recompute rather than serve nothing
    redo = manager.submit(dataset.id, "pca", params={"n_comps": 5})
    assert redo.id != job.id
    wait_for(manager, redo.id, {"done"})
    assert len(run.calls) == 3


def test_an_admin_streamed_run_is_its_own_result_and_reads_in_blocks(workspace, dataset, small_adata):
    manager = JobManager(workspace)
    try:
        with pytest.raises(ConfigError, match="uses all cells at once"):  # scVI fit trains on every cell
            manager.submit(dataset.id, "scvi", "fit", stream=True, score=False)
        memory = wait_for(manager, manager.submit(dataset.id, "pca", params={"n_comps": 8}, score=False).id,
                          {"done", "failed"}, timeout=300)
        streamed = wait_for(manager, manager.submit(dataset.id, "pca", params={"n_comps": 8}, score=False,
                                                    stream=True).id, {"done", "failed"}, timeout=300)
    finally:
        manager.shutdown()
    assert memory.status == streamed.status == "done", (memory.error, streamed.error)
    assert streamed.id != memory.id
    readings = [ad.read_h5ad(j.artifact_dir / "embedding.h5ad").uns["czb_run"]["reading"] for j in (memory, streamed)]
    assert readings == ["in memory", "streamed"]


def test_submit_refuses_what_cannot_run(start, dataset):
    manager = start(FakeRun(), start_workers=False)
    with pytest.raises(KeyError, match="not found"):
        manager.submit("0" * 16, "pca")  # no such dataset record
    with pytest.raises(ConfigError, match="unknown model"):
        manager.submit(dataset.id, "no-such-model")
    with pytest.raises(ConfigError, match="unknown organism"):
        manager.submit(dataset.id, "pca", organism="martian")
    assert manager.list() == []


def test_pca_baseline_through_the_manager(workspace, dataset, small_adata):
    manager = JobManager(workspace)
    try:
        job = wait_for(manager, manager.submit(dataset.id, "pca", params={"n_comps": 10}).id,
                       {"done", "failed", "cancelled"}, timeout=300)
        wait_for_scores(manager, job.id)
    finally:
        manager.shutdown()
    assert job.status == "done", job.error
    assert job.device == "cpu" and job.step == "umap" and job.progress_fraction == 1.0
    adata = ad.read_h5ad(job.artifact_dir / "embedding.h5ad")
    assert adata.obsm["X_pca"].shape == (small_adata.n_obs, 10)
    assert list(adata.obs_names) == list(small_adata.obs_names)
    assert adata.uns["czb_run"]["input"]["sha256"] == dataset.sha256
    umap_n2 = read_umap(job.artifact_dir)
    assert umap_n2.shape == (small_adata.n_obs, 2) and umap_n2.dtype == np.float32 and np.isfinite(umap_n2).all()
    emb_nd, obs, key = read_embedding(job.artifact_dir)
    assert key == "X_pca" and emb_nd.shape == (small_adata.n_obs, 10) and "cell_type" in obs
    record = json.loads((job.artifact_dir / "record.json").read_text())
    assert record["job"]["id"] == job.id and record["params"]["n_comps"] == 10
    (score,) = manager.scores(job.id)
    assert score.status == "done", score.error
    metrics = score.document()
    assert (metrics["options"]["label_key"], metrics["options"]["batch_key"]) == ("cell_type", "batch")  # suggested
    rows = {(r["task"], r["metric"]): r for r in metrics["table"]}
    ari = rows[("clustering", "adjusted_rand_index")]
    assert 0.5 < ari["model"] <= 1 and 0.5 < ari["baseline"] <= 1  # baseline: the default 50-PC PCA
    assert ari["delta"] == pytest.approx(ari["model"] - ari["baseline"])
    assert score.options.label_key is None  # not chosen: resolved when scored


def test_metrics_problems_leave_the_job_done(workspace, dataset):
    manager = JobManager(workspace)
    try:
        job = wait_for(manager, manager.submit(dataset.id, "pca", metrics={"label_key": "no_such_column"}).id,
                       {"done", "failed", "cancelled"}, timeout=300)
        (score,) = wait_for_scores(manager, job.id)
    finally:
        manager.shutdown()
    job = manager.get(job.id)
    assert job.status == "done" and score.status == "failed"
    assert any("metrics not computed" in n and "no_such_column" in n for n in job.notes)
    assert "no_such_column" in score.error


def test_step_seconds_add_up_time_between_step_changes(monkeypatch):
    clock = iter([0.0, 1.0, 3.0, 4.0, 10.0, 12.0])
    monkeypatch.setattr(execution_module.time, "monotonic", lambda: next(clock))

    class NullStore:
        def update_progress(self, *args):
            pass

    progress = execution_module.StoreProgress(NullStore(), "job")
    progress("a", 0, 1)  # t=0: a starts
    progress("b", 0, 1)  # t=1: a took 1 s
    progress("a", 0, 1)  # t=3: b took 2 s; a again (the baseline pass of the same step)
    progress("c", 0, 1)  # t=4: a took 1 s more
    assert progress.finish() == {"a": 2.0, "b": 2.0, "c": 6.0}  # t=10: c took 6 s


def test_a_default_pca_run_becomes_the_cached_baseline(workspace, dataset):
    from czb_core.tasks.baseline import baseline_path

    manager = JobManager(workspace)
    try:
        job = wait_for(manager, manager.submit(dataset.id, "pca").id, {"done", "failed", "cancelled"}, timeout=300)
        (score,) = wait_for_scores(manager, job.id)
    finally:
        manager.shutdown()
    assert job.status == "done", job.error
    emb_nd, _, _ = read_embedding(job.artifact_dir)
    np.testing.assert_array_equal(np.load(baseline_path(dataset.sha256)), emb_nd)
    table = score.document()["table"]
    assert all(row["delta"] == 0 for row in table)


def test_rescoring_with_another_label_reuses_the_embedding(workspace, dataset):
    manager = JobManager(workspace)
    clustering = {"batch_key": False, "tasks": ["clustering"]}
    try:
        job = wait_for(manager, manager.submit(dataset.id, "pca", params={"n_comps": 10},
                                               metrics={"label_key": "cell_type", **clustering}).id,
                       {"done", "failed"}, timeout=300)
        (first,) = wait_for_scores(manager, job.id)
        second = manager.rescore(job.id, {"label_key": "tissue", **clustering})
        assert second.id != first.id
        scores = wait_for_scores(manager, job.id)
        again = manager.rescore(job.id, {"label_key": "cell_type", **clustering})
    finally:
        manager.shutdown()
    assert len(manager.list()) == 1  # one embedding job: rescoring never re-embeds
    assert again.id == first.id  # the same options on the same embedding: the same scoring run
    documents = {s.options.label_key: s.document() for s in scores}
    assert documents["tissue"]["options"]["label_key"] == "tissue"
    ari = {label: next(r["model"] for r in d["table"] if r["metric"] == "adjusted_rand_index")
           for label, d in documents.items()}
    assert ari["cell_type"] != ari["tissue"]


def test_choosing_no_batch_column_is_kept(workspace, dataset):
    """An explicit "(none)" for the batch column stays none; it is never replaced by the suggested one."""
    manager = JobManager(workspace)
    try:
        job = wait_for(manager, manager.submit(dataset.id, "pca", params={"n_comps": 10},
                                               metrics={"label_key": "cell_type", "batch_key": False}).id,
                       {"done", "failed"}, timeout=300)
        (score,) = wait_for_scores(manager, job.id)
    finally:
        manager.shutdown()
    document = score.document()
    assert document["options"]["batch_key"] is False
    assert "batch_integration" not in {r["task"] for r in document["table"]}


@pytest.fixture
def two_gpus(monkeypatch):
    """Two visible GPUs as torch reports them, and their free memory (what `free` holds, in bytes)."""
    import torch

    from czb_core.service.jobs import manager as manager_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    free = {"cuda:0": 80 * 2**30, "cuda:1": 80 * 2**30}
    monkeypatch.setattr(manager_module, "gpu_free_bytes", lambda device: free[device])
    return free


def test_gpu_jobs_go_to_the_least_loaded_gpu(start, dataset, two_gpus):
    manager = start(FakeRun(), start_workers=False)  # jobs stay queued: the loads only grow
    assert manager.devices == ("cpu", "cuda:0", "cuda:1")
    placed = [manager.submit(dataset.id, "geneformer", params={"seed": n}, score=False).device for n in range(4)]
    assert placed == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    named = manager.submit(dataset.id, "geneformer", params={"seed": 9}, device="cuda:0", score=False)
    assert named.device == "cuda:0"
    assert manager.submit(dataset.id, "geneformer", params={"seed": 10}, score=False).device == "cuda:1"
    assert manager.submit(dataset.id, "pca", score=False).device == "cpu"  # baselines stay on the CPU
    with pytest.raises(ConfigError, match="no GPU cuda:2"):
        manager.submit(dataset.id, "geneformer", params={"seed": 11}, device="cuda:2")


def test_a_gpu_job_that_cannot_fit_is_refused_at_submit_with_the_fix(start, dataset, two_gpus):
    manager = start(FakeRun(), start_workers=False)
    two_gpus["cuda:0"] = 6 * 2**30
    # Geneformer-V2-316M declares 1,259 MB of fp32 weights, 4,096 tokens per cell and 1,152 dimensions.
    per_cell = 4096 * 4 * (4 * 1152 + 8 * 1152) + 4 * 1152
    fits = (6 * 2**30 - 1259 * 2**20 - 512 * 2**20) // per_cell
    with pytest.raises(ConfigError, match=rf"needs ~[\d.]+ GiB, GPU cuda:0 has 6.0 GiB free: lower batch_size to "
                                          rf"{fits} or choose another GPU"):
        manager.submit(dataset.id, "geneformer", params={"batch_size": 64}, device="cuda:0")
    assert manager.list() == []  # nothing queued
    job = manager.submit(dataset.id, "geneformer", params={"batch_size": fits}, device="cuda:0")
    assert job.status == "queued" and "GPU memory estimated at" in job.notes[0] and "on cuda:0" in job.notes[0]
    with pytest.raises(ConfigError, match="lower batch_size"):
        manager.submit(dataset.id, "geneformer", params={"batch_size": fits + 1}, device="cuda:0")
    two_gpus["cuda:1"] = 1 * 2**30  # not even the weights: no batch size helps
    with pytest.raises(ConfigError, match="GPU cuda:1 has 1.0 GiB free .even at one cell per batch.: choose another"):
        manager.submit(dataset.id, "geneformer", device="cuda:1")
