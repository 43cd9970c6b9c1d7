"""The compute device: which one a run gets, and what its out-of-memory errors look like.

torch is never imported here unless a GPU question needs it, so validating a dataset stays fast.
"""

from __future__ import annotations

import sys
from typing import Optional

from czb_core.errors import ConfigError


def resolve_device(requested: Optional[str]) -> str:
    """`cuda` when a GPU is present and nothing else was asked for, else `cpu`; asking for a missing GPU fails."""
    if requested == "cpu":
        return "cpu"
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if requested and requested.startswith("cuda"):
        if not has_cuda:
            raise ConfigError("device cuda was requested but no CUDA GPU is available; choose cpu")
        return requested
    if requested not in (None, "", "auto"):
        raise ConfigError(f"unknown device {requested!r}; use cpu, cuda or auto")
    return "cuda" if has_cuda else "cpu"


def is_cuda_oom(exc: BaseException) -> bool:
    """torch's OutOfMemoryError, or the RuntimeError older code paths raise with the same text."""
    if isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc):
        return True
    torch = sys.modules.get("torch")  # a torch OOM implies torch is imported; never import it here
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


def free_cuda_cache() -> None:
    """Return cached GPU memory to the driver (after a job, or before retrying after an OOM)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def cuda_devices() -> tuple[str, ...]:
    """The GPUs this process may use, as `cuda:0`, `cuda:1`, ...: torch counts only those that
    CUDA_VISIBLE_DEVICES shows, numbered from 0 in its order, so `CUDA_VISIBLE_DEVICES=2,3` gives
    `cuda:0` (physical GPU 2) and `cuda:1` (physical GPU 3), and an empty value gives none."""
    try:
        import torch
    except ImportError:
        return ()
    if not torch.cuda.is_available():
        return ()
    return tuple(f"cuda:{i}" for i in range(torch.cuda.device_count()))


def gpu_free_bytes(device: str) -> int:
    """Free memory of one GPU (`cuda:N`) as the driver reports it, other processes' use included.

    The first call creates a CUDA context on that GPU in the calling process (a few hundred MB, once):
    the price of knowing the figure at submit time rather than after the job failed."""
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def least_loaded(loads: dict[str, int]) -> str:
    """The device with the fewest queued plus running jobs; ties go to the lowest index (`cuda:0` first)."""
    if not loads:
        raise ConfigError("no GPU to choose from")
    return min(loads, key=lambda device: (loads[device], device_index(device)))


def device_index(device: str) -> int:
    """`cuda:3` -> 3; `cuda` and `cpu` -> 0."""
    _, _, index = device.partition(":")
    return int(index) if index else 0


def bind_process_to(device: str) -> None:
    """Make `device` the current GPU of this process (a worker serves one GPU), so that calls without a
    device (peak-memory statistics, the cache release, the device name) are about that GPU."""
    if device.startswith("cuda:"):
        import torch

        torch.cuda.set_device(device_index(device))


def choose_device(request: Optional[str], gpu_loads: dict[str, int]) -> str:
    """The queue of a job: `cpu` when asked (or when there is no GPU and none was demanded), a named GPU
    (`cuda:1`) when it exists, else the least loaded GPU (`gpu_loads`: queued plus running jobs per GPU)."""
    if request == "cpu":
        return "cpu"
    if request in (None, "", "auto", "cuda"):
        if gpu_loads:
            return least_loaded(gpu_loads)
        if request == "cuda":
            raise ConfigError("device cuda was requested but no CUDA GPU is available; choose cpu")
        return "cpu"
    if request in gpu_loads:
        return request
    if request.startswith("cuda:"):
        there = ", ".join(gpu_loads) or "none"
        raise ConfigError(f"there is no GPU {request} here (GPUs: {there}); choose cuda, auto or cpu")
    raise ConfigError(f"unknown device {request!r}; use cpu, cuda, cuda:N or auto")
