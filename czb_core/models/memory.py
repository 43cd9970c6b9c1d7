"""Peak memory of one run, for the run record and the benchmarks.

`ru_maxrss` is the peak of the whole process, useless inside a long-lived app server that runs many
jobs, so a background thread samples this process's RSS while the run lasts. GPU peak comes from
torch's allocator statistics when CUDA is in use.
"""

from __future__ import annotations

import sys
import threading
from typing import Optional

import psutil


class PeakMemory:
    """Context manager: `peak_rss_mb` (host) and `peak_gpu_mb` (CUDA, else None) over its body."""

    def __init__(self, interval_s: float = 0.05, device: str = "cpu"):
        self.interval_s = interval_s
        self.device = device
        self.peak_rss_mb = 0.0
        self.peak_gpu_mb: Optional[float] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._process = psutil.Process()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss_mb = max(self.peak_rss_mb, self._process.memory_info().rss / 2**20)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, name="czb-peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss_mb = max(self.peak_rss_mb, self._process.memory_info().rss / 2**20)
        if self.device.startswith("cuda") and "torch" in sys.modules:
            import torch

            self.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
