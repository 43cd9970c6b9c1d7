"""Worker processes: one per device plus a small CPU pool, supervised, so a crashing job never takes the
server down.

A CUDA kernel that segfaults, an out-of-memory kill by the OS or a native library's abort ends a process,
and Python threads cannot be stopped: jobs therefore run in a worker process per device (`cpu`, `cuda:0`,
`cuda:1`, ...), started with `spawn` (CUDA does not survive `fork`). A device worker claims its device's
queued jobs from the job store and embeds them with `JobRunner`, keeping loaded models between jobs
(`czb_core.models.runner.LOADED_MODELS` lives in the worker), then hands each to the CPU pool
(`cpu_pool.py`: `CZB_CPU_WORKERS` processes `cpu-pool-0`, ...) for its UMAP; the pool also runs the
scoring runs. Each worker's stdout and stderr, native crashes included, go to `<workspace>/logs/`.

The supervisor (a thread of the server) watches every worker. When one dies, what it held (a device
worker's running job; a pool worker's UMAP stage or scoring run) is failed with the cause (exit code or
signal, "most often the OS out-of-memory killer" for SIGKILL, the last log lines) and the worker is
started again; the queues go on. A cancel that the job does not honour within `CANCEL_GRACE_S` (a long
native call never reaches its next check) ends the worker process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from czb_core.models.device import bind_process_to
from czb_core.service.jobs.cpu_pool import CpuTasks
from czb_core.service.jobs.execution import JobRunner
from czb_core.service.jobs.job_log import job_log_tail
from czb_core.service.jobs.store import CANCELLED, FAILED, RUNNING, Job, JobStore
from czb_core.service.workspace import Workspace
from czb_core.service.writer_lock import hold_as_worker

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.5
SUPERVISE_S = 0.5
CANCEL_GRACE_S = 5.0
ORPHAN_POLL_S = 0.5
SILENT_S = 300.0  # a running job whose worker has written no heartbeat for this long is failed
POOL_PREFIX = "cpu-pool-"


def pool_names(n_workers: int) -> tuple[str, ...]:
    return tuple(f"{POOL_PREFIX}{i}" for i in range(n_workers))


def work_loop(take_one: Callable[[], bool], name: str, stop: Callable[[], bool],
              wait: Callable[[float], None]) -> None:
    """Run `take_one` (claim and run one task; False when there was none) until `stop()`, waiting between
    empty polls; store errors never end the loop."""
    while not stop():
        try:
            if take_one():
                continue
        except Exception:  # the store itself failed (disk full, locked too long): keep working
            log.exception("%s worker: job store error", name)
        wait(IDLE_POLL_S)


def start_worker_process(name: str, log_path: str, memory_limit_mb: Optional[int],
                         server_pid: int) -> Callable[[], bool]:
    """In a fresh worker process: log to `log_path`, optionally under a data-size limit. Returns its
    `stop`: true once the server (`server_pid`, the process that started it) is no longer its parent. The
    server's pid comes from the server, not from `getppid` here: a worker started while the server dies
    would otherwise take its new parent (init) for the server and never stop."""
    hold_as_worker(Path(log_path).parent.parent)  # the workspace root: a new server waits until it is released
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)  # native crashes write to the file descriptors, not to sys.stderr
    os.dup2(fd, 2)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker-{name}[%(process)d] %(message)s")
    if memory_limit_mb:
        import resource

        limit = memory_limit_mb << 20
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    log.info("worker %s started", name)
    orphaned = lambda: os.getppid() != server_pid  # noqa: E731
    threading.Thread(target=exit_when_orphaned, args=(orphaned, name), name="czb-orphan-watch", daemon=True).start()
    return orphaned


def exit_when_orphaned(orphaned: Callable[[], bool], name: str) -> None:
    """End this worker process within `ORPHAN_POLL_S` of its server's end, even in the middle of a job: the
    next server marks that job interrupted, and an orphan must not go on to finish or write to it."""
    while not orphaned():
        time.sleep(ORPHAN_POLL_S)
    log.warning("worker %s: its server has gone; exiting", name)
    os._exit(0)


def worker_main(workspace_root: str, device: str, run_fn: Callable, log_path: str,
                memory_limit_mb: Optional[int], server_pid: int) -> None:
    """A device worker process: embeds the device's jobs until the server is gone."""
    stop = start_worker_process(device, log_path, memory_limit_mb, server_pid)
    bind_process_to(device)
    workspace = Workspace(Path(workspace_root))
    runner = JobRunner(workspace, JobStore(workspace.db_path), run_fn)
    pid = os.getpid()
    work_loop(lambda: runner.run_next(device, pid), device, stop, time.sleep)


def cpu_worker_main(workspace_root: str, name: str, score: bool, log_path: str,
                    memory_limit_mb: Optional[int], server_pid: int) -> None:
    """A CPU pool worker process: UMAPs and scoring runs until the server is gone."""
    stop = start_worker_process(name, log_path, memory_limit_mb, server_pid)
    workspace = Workspace(Path(workspace_root))
    tasks = CpuTasks(workspace, JobStore(workspace.db_path), score)
    pid = os.getpid()
    work_loop(lambda: tasks.run_next(pid), name, stop, time.sleep)


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
    """One supervised worker process: a device's (`name` is the device) or a CPU pool's."""

    def __init__(self, workspace: Workspace, name: str, target: Callable, args: tuple,
                 memory_limit_mb: Optional[int]):
        self.workspace, self.name, self.target, self.args = workspace, name, target, args
        self.memory_limit_mb = memory_limit_mb
        self.log_path = workspace.root / "logs" / f"worker-{name.replace(':', '-')}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process: Optional[multiprocessing.process.BaseProcess] = None
        self.restarts = 0

    @property
    def in_pool(self) -> bool:
        return self.name.startswith(POOL_PREFIX)

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(
            target=self.target, name=f"czb-worker-{self.name}", daemon=True,
            args=(str(self.workspace.root), *self.args, str(self.log_path), self.memory_limit_mb, os.getpid()),
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


class Supervisor:
    """Starts a worker process per device and `cpu_workers` pool processes, restarts dead ones and fails
    what they held with the cause, and ends a worker whose job ignores a cancel for `CANCEL_GRACE_S`."""

    def __init__(self, workspace: Workspace, store: JobStore, devices: tuple[str, ...], run_fn: Callable,
                 memory_limit_mb: Optional[int] = None, cpu_workers: int = 1, score: bool = True):
        self.store = store
        self.workers = {d: WorkerProcess(workspace, d, worker_main, (d, run_fn), memory_limit_mb) for d in devices}
        for name in pool_names(cpu_workers):
            self.workers[name] = WorkerProcess(workspace, name, cpu_worker_main, (name, score), memory_limit_mb)
        self._stop = threading.Event()
        self._cancel_seen: dict[str, float] = {}
        for worker in self.workers.values():
            worker.start()
        self.thread = threading.Thread(target=self._supervise, name="czb-supervisor", daemon=True)
        self.thread.start()

    def state(self) -> dict[str, dict]:
        """Per worker (device or pool): pid, alive, restarts (for a health endpoint or an admin page)."""
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
                    log.exception("supervising the %s worker failed", worker.name)

    def _held_jobs(self, worker: WorkerProcess) -> list[Job]:
        """The running jobs this worker holds: a device worker's embedding, a pool worker's UMAP stage."""
        return [j for j in self.store.list(statuses=(RUNNING,)) if j.worker_pid == worker.pid and (
            j.cpu_stage == RUNNING if worker.in_pool else j.device == worker.name and j.cpu_stage is None)]

    def _check(self, worker: WorkerProcess) -> None:
        if not worker.alive():
            self._fail_held(worker, death_cause(worker.process.exitcode if worker.process else None))
            worker.restarts += 1
            worker.start()
            return
        now = time.monotonic()
        for job in self._held_jobs(worker):
            if job.heartbeat_at is not None and time.time() - job.heartbeat_at > SILENT_S:
                log.warning("job %s: its %s worker wrote nothing for %.0f s; ending the worker", job.id,
                            worker.name, time.time() - job.heartbeat_at)
                self._replace(worker, f"the worker stopped answering for {time.time() - job.heartbeat_at:.0f} s "
                                      "(stuck, or the job database could not be written)")
                return
            if not job.cancel_requested:
                continue
            first = self._cancel_seen.setdefault(job.id, now)
            if now - first >= CANCEL_GRACE_S:  # stuck in a call that never checks: end the process
                log.warning("job %s ignored its cancel for %.0f s; ending the %s worker", job.id, now - first,
                            worker.name)
                self._cancel_seen.pop(job.id, None)
                self._replace(worker, "cancelled (the worker was stopped)", cancelled=job)
                return

    def _replace(self, worker: WorkerProcess, cause: str, cancelled: Optional[Job] = None) -> None:
        """Stop a live worker, end what it held (`cancelled` as cancelled, the rest failed with `cause`) and
        start a new one."""
        held = self._held_jobs(worker)
        worker.stop()
        if cancelled is not None:
            self._end(cancelled, CANCELLED, message="cancelled (the worker was stopped)")
        self._fail_held(worker, cause, held)
        worker.restarts += 1
        worker.start()

    def _end(self, job: Job, status: str, **fields) -> None:
        """End a job the supervisor took from its worker; its partial files go only if it was still running
        (a compare-and-set: a job that finished meanwhile keeps its status and files)."""
        if self.store.set_status(job.id, status, only_from=(RUNNING,), **fields):
            shutil.rmtree(self.store.artifact_dir_of(job), ignore_errors=True)

    def _fail_held(self, worker: WorkerProcess, cause: str, held: Optional[list[Job]] = None) -> None:
        """Fail what a dead (or stopped) worker held, with the cause and that job's own last log lines."""
        stage = "UMAP failed: " if worker.in_pool else ""
        for job in self._held_jobs(worker) if held is None else held:
            tail = job_log_tail(self.store.db_path.parent, job.id)
            error = (f"{cause}; the server and other jobs are unaffected."
                     + (f" Last log lines:\n{tail}" if tail else ""))
            self._end(job, FAILED, message="failed", error=stage + error)
        if worker.in_pool:
            self.store.fail_scores_of(worker.pid, f"{cause}; the server and other jobs are unaffected.")
        log.warning("%s worker (pid %s) ended: %s; starting a new one", worker.name, worker.pid, cause)
