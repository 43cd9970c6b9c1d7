"""On real processes: a killed server leaves no worker that goes on with a job, and a worker that is alive
but silent has its job failed and is replaced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from czb_core.service.jobs import JobManager
from czb_core.service.jobs import workers as workers_module
from czb_core.service.workspace import Workspace
from tests.helpers.fault_runs import STUCK, fault_run

pytestmark = pytest.mark.slow

SERVER = """
import sys, time
from czb_core.service.jobs import JobManager
from czb_core.service.workspace import Workspace
from tests.helpers.fault_runs import fault_run
manager = JobManager(Workspace(), run_fn=fault_run, score=False)
job = manager.submit(sys.argv[1], "pca", params={"n_comps": 4}, score=False)
while manager.get(job.id).status != "running":
    time.sleep(0.1)
print(job.id, manager.get(job.id).worker_pid, flush=True)
time.sleep(600)
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_killed_servers_worker_stops_and_its_job_stays_interrupted(small_h5ad):
    record = Workspace().add_file(small_h5ad)
    server = subprocess.Popen([sys.executable, "-c", SERVER, record.id], stdout=subprocess.PIPE, text=True,
                              cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        job_id, worker_pid = server.stdout.readline().split()
    finally:
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
    deadline = time.monotonic() + 10
    while not gone(int(worker_pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(int(worker_pid)), "the worker outlived its killed server by 10 s"
    manager = JobManager(Workspace(), run_fn=fault_run, score=False, processes=False)
    try:
        job = manager.get(job_id)
        assert job.status == "interrupted"
        time.sleep(1)
        assert manager.get(job_id) == job  # nothing goes on writing to it
    finally:
        manager.shutdown()


def test_a_worker_alive_but_silent_past_the_limit_is_replaced_and_its_job_failed(small_h5ad, monkeypatch):
    monkeypatch.setattr(workers_module, "SILENT_S", 3.0)  # the worker beats every 10 s: silent past 3 s
    record = Workspace().add_file(small_h5ad)
    manager = JobManager(Workspace(), run_fn=fault_run, score=False)
    try:
        job = manager.submit(record.id, "pca", params={"n_comps": STUCK}, score=False)
        deadline = time.monotonic() + 120
        while manager.get(job.id).status in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.2)
        failed = manager.get(job.id)
        assert failed.status == "failed" and "stopped answering" in failed.error
        assert manager.supervisor.state()["cpu"]["restarts"] == 1
    finally:
        manager.shutdown(timeout=10)
