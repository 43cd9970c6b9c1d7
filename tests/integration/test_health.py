"""The /health endpoint: worker state, the running job and the queue, fetched over HTTP."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from czb_core.errors import ConfigError
from czb_core.service import health
from czb_core.service.health import HealthServer, health_address
from czb_core.service.jobs import JobManager
from czb_core.service.workspace import Workspace
from tests.integration.test_jobs import FakeRun, wait_for


def fetch(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def blocking_manager(monkeypatch):
    """A thread-worker manager whose jobs wait for `release`, so one stays running while others queue."""
    monkeypatch.setattr("czb_core.service.jobs.execution.compute_umap",
                        lambda emb_nd, seed=0, labels_n=None: emb_nd[:, :2].copy())
    release = threading.Event()
    manager = JobManager(Workspace(), run_fn=FakeRun(lambda params, cancel: release.wait(20)), score=False,
                         processes=False)
    yield manager, release
    release.set()
    manager.shutdown(timeout=5)


def test_health_reports_the_running_job_and_the_queue(blocking_manager, small_h5ad):
    manager, release = blocking_manager
    server = HealthServer(manager, port=0)
    try:
        status, report = fetch(server.url)
        assert status == 200 and report["status"] == "ok" and report["queue"] == {"cpu": 0}
        assert report["workers"]["cpu"]["alive"] and report["workers"]["cpu"]["job"] is None
        assert report["uptime_s"] > 0

        dataset_id = manager.workspace.add_file(small_h5ad).id
        first = wait_for(manager, manager.submit(dataset_id, "pca", score=False).id, {"running"})
        queued = [manager.submit(dataset_id, "pca", params={"n_comps": n}, score=False) for n in (5, 6)]
        status, report = fetch(server.url)
        assert report["workers"]["cpu"]["job"] == first.id
        assert report["queue"] == {"cpu": 2}

        release.set()
        for job in queued:
            wait_for(manager, job.id, {"done"})
        assert fetch(server.url)[1]["queue"] == {"cpu": 0}
    finally:
        server.stop()


def test_a_dead_worker_makes_the_status_degraded_with_503(blocking_manager):
    manager, _ = blocking_manager
    server = HealthServer(manager, port=0)
    try:
        manager.shutdown(timeout=5)  # the worker threads end
        status, report = fetch(server.url)
        assert status == 503 and report["status"] == "degraded" and not report["workers"]["cpu"]["alive"]
        assert fetch(server.url.replace("/health", "/other"))[0] == 404
    finally:
        server.stop()


def test_the_process_server_starts_once_and_follows_the_newest_manager(monkeypatch):
    first = JobManager(Workspace(), start_workers=False)
    second = JobManager(Workspace(), start_workers=False)
    monkeypatch.setattr(health, "_process_server", None)
    monkeypatch.delenv("CZB_HEALTH_PORT", raising=False)
    assert health.serve_health(first) is None  # no port configured: no endpoint
    monkeypatch.setenv("CZB_HEALTH_PORT", "0")
    with pytest.raises(ConfigError, match="CZB_HEALTH_PORT must be a port number"):
        health_address()
    server = HealthServer(first, port=0)
    monkeypatch.setattr(health, "_process_server", server)
    try:
        assert health.serve_health(second) is server and server.manager is second
    finally:
        server.stop()
