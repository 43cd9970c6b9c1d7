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
