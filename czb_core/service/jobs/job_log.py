"""A job's own log: the lines logged while it runs, kept apart from every other job's.

A worker's log file (`<workspace>/logs/worker-<device>.log`) holds every job it ran, with tracebacks and
native crash output: it is for admins. What a user is shown about their failed job (the last lines before
its worker died) comes from `<workspace>/logs/jobs/<job id>.log` only, written without tracebacks, so a
message never shows another user's file names or a stack of server paths.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

JOB_LOGS = Path("logs") / "jobs"
TAIL_LINES = 8

_job_threads: set[int] = set()  # threads running a job in this process (several in thread-mode tests)


def job_log_path(workspace_root: Path, job_id: str) -> Path:
    return Path(workspace_root) / JOB_LOGS / f"{job_id}.log"


class _Lines(logging.Formatter):
    """Time, level and message: never the traceback a record carries (that stays in the worker's log)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.formatTime(record)} {record.levelname} {record.getMessage()}"


@contextmanager
def job_log(workspace_root: Path, job_id: str) -> Iterator[Path]:
    """Copy what is logged during the block to the job's log: lines of this thread, and of helper threads
    that run no job of their own (another job's thread in the same process is left out)."""
    path = job_log_path(workspace_root, job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    thread = threading.get_ident()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_Lines())
    handler.addFilter(lambda record: record.thread == thread or record.thread not in _job_threads)
    root = logging.getLogger()
    _job_threads.add(thread)
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        _job_threads.discard(thread)
        handler.close()


def job_log_tail(workspace_root: Path, job_id: str, n: int = TAIL_LINES) -> str:
    """The job's last `n` log lines ("" when it logged none)."""
    try:
        with open(job_log_path(workspace_root, job_id), errors="replace") as fh:
            return "".join(deque(fh, maxlen=n)).strip()
    except OSError:
        return ""
