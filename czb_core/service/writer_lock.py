"""One server per workspace: the job store, the queues and the artifacts have exactly one writer process.

Two servers on one `CZB_HOME` each believe they own the jobs: the second marks the first's running jobs
interrupted and queues their UMAPs again, and both then write the same artifacts. So the server that
starts workers holds an exclusive `flock` on `<workspace>/server.lock` for its life (the kernel releases
it when the process ends, `kill -9` included); a second server refuses to start and names the pid that
holds it. Several managers within one process (tests, a page script run again) share the one lock.

Worker processes hold `<workspace>/workers.lock` shared for their life. A new server takes it exclusively
once before it starts its own workers: it waits there until every worker of a dead predecessor has gone
(each stops within a second of its server's end, `workers.py`), so no orphan finishes, or writes to, a job
the new server has marked interrupted.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from czb_core.errors import ConfigError

SERVER_LOCK = "server.lock"
WORKERS_LOCK = "workers.lock"
ORPHAN_WAIT_S = 30.0

_held: dict[Path, list] = {}  # resolved workspace root -> [file descriptor, holders in this process]
_guard = threading.Lock()


def acquire_writer(root: Path) -> bool:
    """Hold the workspace's writer lock for this process (again, when it already does); ConfigError naming
    the holder's pid when another process holds it. True when this process has just taken it: it is then
    the workspace's new server, whose start-up cleans what a predecessor left."""
    root = Path(root).resolve()
    with _guard:
        if root in _held:
            _held[root][1] += 1
            return False
        path = root / SERVER_LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"another CZB Studio server (pid {holder}) is using the workspace {root}; stop it first, or give "
                "this server a workspace of its own (CZB_HOME or CZB_WORKSPACE)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[root] = [fd, 1]
        return True


def release_writer(root: Path) -> None:
    """One holder of this process lets go; the lock is released with the last."""
    root = Path(root).resolve()
    with _guard:
        entry = _held.get(root)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            os.close(entry[0])  # closing the descriptor releases the flock
            del _held[root]


def wait_for_orphan_workers(root: Path, timeout: float = ORPHAN_WAIT_S) -> bool:
    """Wait until no worker process holds the workspace's workers lock (a dead server's workers finishing
    their last second); False when some still did after `timeout`."""
    fd = os.open(Path(root) / WORKERS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.1)
    finally:
        os.close(fd)


def hold_as_worker(root: Path) -> int:
    """In a worker process: hold the workers lock shared for the process's life (the descriptor is never
    closed; the kernel drops the lock when the process ends)."""
    fd = os.open(Path(root) / WORKERS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd
