"""Progress reporting and cooperative cancellation for in-process runs.

A run reports named steps (`load`, `download weights`, `embed`) as (step, done, total); the CLI prints
them, the job layer stores them. Python threads cannot be killed, so a run checks its `CancelToken`
between batches and raises `Cancelled`.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Optional, Protocol

from czb_core.errors import Cancelled


class ProgressCallback(Protocol):
    def __call__(self, step: str, done: float, total: Optional[float]) -> None: ...


def no_progress(step: str, done: float, total: Optional[float]) -> None:
    """A callback that ignores every report."""


class CancelToken:
    """A flag set by whoever owns the run; `check()` raises `Cancelled` once it is set."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("run cancelled")


class Throttle:
    """Lets a progress report through on a step change or a step's end, else at most every `interval`
    seconds, so a fast batch loop neither floods a terminal nor hammers a database."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self._step: Optional[str] = None
        self._last = 0.0

    def allow(self, step: str, done: float, total: Optional[float]) -> bool:
        now = self.clock()
        finished = total is not None and done >= total
        if step == self._step and not finished and now - self._last < self.interval:
            return False
        self._step, self._last = step, now
        return True


class StderrProgress:
    """Prints one line per step change and at most one update per `interval` seconds."""

    def __init__(self, stream=None, interval: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.stream = stream or sys.stderr
        self.throttle = Throttle(interval, clock)

    def __call__(self, step: str, done: float, total: Optional[float]) -> None:
        if not self.throttle.allow(step, done, total):
            return
        if total:
            line = f"[czb] {step}: {done:,.0f}/{total:,.0f} ({100 * done / total:.0f}%)"
        else:
            line = f"[czb] {step}"
        print(line, file=self.stream, flush=True)
