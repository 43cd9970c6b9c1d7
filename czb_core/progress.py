"""Progress reporting and cooperative cancellation for in-process runs.

A run reports named steps (`load`, `download weights`, `embed`) as (step, done, total); the CLI prints
them, the job layer stores them. Python threads cannot be killed, so a run checks its `CancelToken`
between batches and raises `Cancelled`. The second half says in words what a stored job is doing: its
step in the step's own unit, the step's elapsed time and an ETA from the step's rate so far.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import datetime, timezone
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


# -- what a page shows of a job's progress -----------------------------------------------------------

STEP_UNITS = {  # the unit a step counts in, where it counts more than "started / finished"
    "embed": "cells", "predict": "cells", "contextual gene embeddings": "cells",
    "train epoch": "epochs", "download weights": "bytes", "shards": "shards",
}
ACTIVE = ("queued", "running")


def step_unit(step: str) -> str:
    """The unit of `step` ("" for one-shot steps); a variant of a step ("embed (perturbed)") counts alike."""
    return STEP_UNITS.get(step) or next((u for s, u in STEP_UNITS.items() if step.startswith(f"{s} ")), "")


def format_amount(value: float, unit: str) -> str:
    """`1,200 cells`, `3 epochs`, `1.2 GB`: bytes scaled to a readable size."""
    if unit == "bytes":
        for scale, name in ((2**30, "GB"), (2**20, "MB"), (2**10, "kB")):
            if value >= scale:
                return f"{value / scale:,.1f} {name}"
        return f"{value:,.0f} B"
    return f"{value:,.0f} {unit}".rstrip()


def format_duration(seconds: float) -> str:
    """`45 s`, `3 min 05 s`, `2 h 10 min`: precise enough for a human waiting, not more."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def step_eta_s(done: float, total: Optional[float], elapsed_s: Optional[float]) -> Optional[float]:
    """Seconds left in a step at its mean rate so far: None until it has a rate (nothing done yet, no total,
    or no start time), since a guess from nothing would be a number that lies."""
    if not total or elapsed_s is None or elapsed_s <= 0 or done <= 0:
        return None
    return max(0.0, (total - done) * elapsed_s / done)


def progress_fraction(status: str, done: float, total: Optional[float]) -> Optional[float]:
    """The bar's fill within the current step while a job is active; None once it is not (a failed job at
    its last step's end is not "100%"), and for a step that counts nothing."""
    if status not in ACTIVE or not total:
        return None
    return min(1.0, max(0.0, done / total))


def progress_line(status: str, step: str, done: float, total: Optional[float],
                  step_elapsed_s: Optional[float] = None) -> str:
    """What a job is doing, in the step's unit: `embed: 1,200 / 3,000 cells (40%) · 30 s in, about 45 s left`.
    A finished job says how far it got instead of a percentage."""
    step = step or "starting"
    if status == "queued":
        return "waiting for a worker"
    unit = step_unit(step)
    count = f": {format_amount(done, unit)} / {format_amount(total, unit)}" if unit and total else ""
    if status == "done":
        return "done"
    if status != "running":
        return f"{status} during {step}{count}"
    fraction = progress_fraction(status, done, total)
    line = f"{step}{count}" + (f" ({fraction:.0%})" if unit and fraction is not None else "")
    if step_elapsed_s is not None:
        eta = step_eta_s(done, total, step_elapsed_s)
        line += f" · {format_duration(step_elapsed_s)} in"
        if unit and total:
            line += f", about {format_duration(eta)} left" if eta is not None else ", estimating time left"
    return line


def queue_line(visible_position: int, others_ahead: int, device: str) -> str:
    """A queued job's place among the jobs its owner can see, and how many other users' jobs are ahead."""
    line = f"Waiting in the {device} queue: position {visible_position} among your jobs"
    if others_ahead:
        line += f"; {others_ahead} job{'s' if others_ahead != 1 else ''} ahead (other users)"
    return line + "."


def seconds_since(iso_time: Optional[str], now: Optional[datetime] = None) -> Optional[float]:
    """Seconds from an ISO-8601 time stamp (as the job store writes them) to `now`; None without a stamp."""
    if not iso_time:
        return None
    now = now or datetime.now(timezone.utc)
    return max(0.0, (now - datetime.fromisoformat(iso_time)).total_seconds())
