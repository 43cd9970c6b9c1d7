"""Worker processes: one per device, supervised, so a crashing job never takes the server down.

A CUDA kernel that segfaults, an out-of-memory kill by the OS or a native library's abort ends a process,
and Python threads cannot be stopped: jobs therefore run in a worker process per device, started with
`spawn` (CUDA does not survive `fork`). A worker claims its device's queued jobs from the job store and
runs them with `JobRunner`, keeping loaded models between jobs (`czb_core.models.runner.LOADED_MODELS`
lives in the worker). Its stdout and stderr, native crashes included, go to `<workspace>/logs/`.

The supervisor (a thread of the server) watches each worker. When one dies, its running job is failed
with the cause (exit code or signal, "most often the OS out-of-memory killer" for SIGKILL, the last log
lines) and the worker is started again; the queue goes on. A cancel that the job does not honour within
`CANCEL_GRACE_S` (a long native call never reaches its next check) ends the worker process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Optional

from czb_core.service.jobs.execution import JobRunner
from czb_core.service.jobs.store import CANCELLED, FAILED, RUNNING, JobStore
from czb_core.service.workspace import Workspace

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.5
SUPERVISE_S = 0.5
CANCEL_GRACE_S = 5.0
LOG_TAIL_LINES = 8


def work_loop(runner: JobRunner, device: str, stop: Callable[[], bool], wait: Callable[[float], None]) -> None:
    """Claim the device's jobs oldest first and run them, until `stop()`; store errors never end the loop."""
    while not stop():
        try:
            job = runner.store.claim_next(device, os.getpid())
            if job is not None:
                runner.run(job)
                continue
        except Exception:  # the store itself failed (disk full, locked too long): keep working
            log.exception("%s worker: job store error", device)
        wait(IDLE_POLL_S)


def worker_main(workspace_root: str, device: str, run_fn: Callable, log_path: str,
                memory_limit_mb: Optional[int]) -> None:
    """The worker process: logs to `log_path`, optionally under a data-size limit, runs jobs until its
    parent (the server) is gone."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)  # native crashes write to the file descriptors, not to sys.stderr
    os.dup2(fd, 2)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker-{device}[%(process)d] %(message)s")
    if memory_limit_mb:
        import resource

        limit = memory_limit_mb << 20
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    workspace = Workspace(Path(workspace_root))
    runner = JobRunner(workspace, JobStore(workspace.db_path), run_fn)
    parent = os.getppid()
    log.info("worker started on %s", device)
    work_loop(runner, device, stop=lambda: os.getppid() != parent, wait=time.sleep)


def death_cause(exitcode: Optional[int]) -> str:
    """What a worker's exit code says, in words a lab admin can act on."""
    if exitcode is None:
        return "the worker process ended"
    if exitcode < 0:
        name = signal.Signals(-exitcode).name
        if -exitcode == signal.SIGKILL:
            return f"the worker process was killed ({name}): most often the OS out-of-memory killer"
        return f"the worker process crashed ({name})"
    return f"the worker process exited with code {exitcode}"


class WorkerProcess:
    """One supervised worker process for one device."""

    def __init__(self, workspace: Workspace, device: str, run_fn: Callable, memory_limit_mb: Optional[int]):
        self.workspace, self.device, self.run_fn, self.memory_limit_mb = workspace, device, run_fn, memory_limit_mb
        self.log_path = workspace.root / "logs" / f"worker-{device}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process: Optional[multiprocessing.Process] = None
        self.restarts = 0

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(
            target=worker_main, name=f"czb-worker-{self.device}", daemon=True,
            args=(str(self.workspace.root), self.device, self.run_fn, str(self.log_path), self.memory_limit_mb),
        )
        self.process.start()

    @property
    def pid(self) -> Optional[int]:
        return None if self.process is None else self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate, then kill if it does not go; a job it was running is the caller's to mark."""
        if self.process is None:
            return
        self.process.terminate()
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)

    def log_tail(self, n: int = LOG_TAIL_LINES) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return "".join(deque(fh, maxlen=n)).strip()
        except OSError:
            return ""


class Supervisor:
    """Starts a worker process per device, restarts dead ones and fails their jobs with the cause, and
    ends a worker whose job ignores a cancel for `CANCEL_GRACE_S`."""

    def __init__(self, workspace: Workspace, store: JobStore, devices: tuple[str, ...], run_fn: Callable,
                 memory_limit_mb: Optional[int] = None):
        self.store = store
        self.workers = {d: WorkerProcess(workspace, d, run_fn, memory_limit_mb) for d in devices}
        self._stop = threading.Event()
        self._cancel_seen: dict[str, float] = {}
        for worker in self.workers.values():
            worker.start()
        self.thread = threading.Thread(target=self._supervise, name="czb-supervisor", daemon=True)
        self.thread.start()

    def state(self) -> dict[str, dict]:
        """Per device: pid, alive, restarts (for a health endpoint or an admin page)."""
        return {d: {"pid": w.pid, "alive": w.alive(), "restarts": w.restarts} for d, w in self.workers.items()}

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.thread.join(timeout)
        for worker in self.workers.values():
            worker.stop()

    def _supervise(self) -> None:
        while not self._stop.wait(SUPERVISE_S):
            for worker in self.workers.values():
                try:
                    self._check(worker)
                except Exception:  # the supervisor must outlive any one problem
                    log.exception("supervising the %s worker failed", worker.device)

    def _running_jobs(self, worker: WorkerProcess):
        return [j for j in self.store.list(statuses=(RUNNING,)) if j.device == worker.device and j.worker_pid == worker.pid]

    def _check(self, worker: WorkerProcess) -> None:
        if not worker.alive():
            cause = death_cause(worker.process.exitcode if worker.process else None)
            tail = worker.log_tail()
            for job in self._running_jobs(worker):
                error = f"{cause}; the server and other jobs are unaffected." + (f" Last log lines:\n{tail}" if tail else "")
                self.store.set_status(job.id, FAILED, message="failed", error=error, only_from=(RUNNING,))
            log.warning("%s worker (pid %s) died: %s; starting a new one", worker.device, worker.pid, cause)
            worker.restarts += 1
            worker.start()
            return
        now = time.monotonic()
        for job in self._running_jobs(worker):
            if not job.cancel_requested:
                continue
            first = self._cancel_seen.setdefault(job.id, now)
            if now - first >= CANCEL_GRACE_S:  # stuck in a call that never checks: end the process
                log.warning("job %s ignored its cancel for %.0f s; ending the %s worker", job.id, now - first,
                            worker.device)
                worker.stop()
                self.store.set_status(job.id, CANCELLED, message="cancelled (the worker was stopped)",
                                      only_from=(RUNNING,))
                self._cancel_seen.pop(job.id, None)
                worker.restarts += 1
                worker.start()
                return
