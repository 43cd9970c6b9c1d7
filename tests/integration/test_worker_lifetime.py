"""A worker process never outlives the server that started it, even one that dies while it starts."""

from __future__ import annotations

import multiprocessing
import os
import time

import psutil
import pytest

pytestmark = pytest.mark.integration


def server_that_dies_at_once(root: str, pid_file: str) -> None:
    """A stand-in server: starts a CPU pool worker, then exits before the worker has even imported."""
    from pathlib import Path

    from czb_core.service.jobs.workers import WorkerProcess, cpu_worker_main
    from czb_core.service.workspace import Workspace

    worker = WorkerProcess(Workspace(Path(root)), "cpu-pool-0", cpu_worker_main, ("cpu-pool-0", False), None)
    worker.start()
    Path(pid_file).write_text(str(worker.pid))
    os._exit(0)  # no clean-up: as a server killed by the OS


def test_a_worker_started_as_its_server_dies_stops_on_its_own(tmp_path):
    context = multiprocessing.get_context("spawn")
    pid_file = tmp_path / "worker.pid"
    server = context.Process(target=server_that_dies_at_once, args=(str(tmp_path / "workspace"), str(pid_file)))
    server.start()
    server.join(60)
    worker_pid = int(pid_file.read_text())
    worker = psutil.Process(worker_pid)
    deadline = time.monotonic() + 60
    while worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.2)
    gone = not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
    if not gone:
        worker.kill()
    log = (tmp_path / "workspace" / "logs" / "worker-cpu-pool-0.log").read_text()
    assert gone, f"the worker outlived its server by a minute; its log:\n{log}"
    assert "worker cpu-pool-0 started" in log  # it did start, after its server was gone, and then stopped
