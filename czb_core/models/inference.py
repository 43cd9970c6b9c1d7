"""The inference engine under every pretrained runner: precision, batch size, batches, and the batch loop.

A runner brings its tokens and a `forward(rows_b)` that runs its network on those rows and pools them;
everything around that is decided here, once, for every model:

- **precision**: one parameter, `auto|fp32|bf16|fp16`. `auto` is bf16 autocast on a CUDA GPU that supports
  it and fp32 elsewhere; `bf16` is autocast on any device (on the CPU too, which lets the tests catch a
  dtype bug before any GPU sees it); `fp16` needs CUDA. Autocast keeps the weights in fp32 and runs the
  matrix products in the low precision, which is how the authors' packages run on a GPU.
- **batch size**: a fixed count on the CPU; on CUDA, what a share of the free memory holds at the runner's
  bytes-per-cell estimate, capped.
- **batches**: cells in a given order (`longest_first`: an out-of-memory error then shows on the first
  batch, and a batch is padded only to its own longest cell), optionally never mixing groups (UCE puts only
  sentences of one length in a batch).
- **the loop**: cancel checked before each batch, inference mode, autocast, outputs scattered back to input
  order as float32, progress in cells, and a CUDA out-of-memory error retried at half the batch (down to 1,
  then `DeviceOutOfMemory`), so a run that meets a busy GPU finishes instead of starting over.

torch is imported only inside the functions: the module is read by the bare GPU python of the benchmark
suite, and by the parameter declarations, which must stay importable without it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from czb_core.errors import ConfigError, DeviceOutOfMemory
from czb_core.models.device import free_cuda_cache, is_cuda_oom
from czb_core.progress import CancelToken, ProgressCallback, no_progress

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PRECISION_HELP = "auto: bf16 autocast on a GPU that supports it, fp32 elsewhere; bf16: autocast; fp16 needs a GPU"
GPU_MEMORY_SHARE = 0.5  # of the free memory, for activations; the rest covers allocator slack and other work


def autocast_dtype(precision: str, device: Any):
    """The autocast dtype of `precision` on `device` (a torch.device or its name); None means fp32."""
    import torch

    device_type = torch.device(device).type
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16":
        if device_type != "cuda":
            raise ConfigError("precision fp16 needs a CUDA GPU; use fp32 or bf16 on the CPU")
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device_type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def precision_name(dtype) -> str:
    """What a run record says of an autocast dtype: `fp32`, `bf16 autocast` or `fp16 autocast`."""
    if dtype is None:
        return "fp32"
    return {"torch.bfloat16": "bf16", "torch.float16": "fp16"}[str(dtype)] + " autocast"


def autocast(device: Any, dtype):
    """The autocast context of `dtype` on `device` (nothing for fp32)."""
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def memory_batch_size(device: Any, per_cell_bytes: float, *, cpu_batch: int, max_batch: int,
                      share: float = GPU_MEMORY_SHARE) -> int:
    """Cells per batch: `cpu_batch` off CUDA; on CUDA what `share` of the free memory holds at
    `per_cell_bytes` (the runner's estimate for its longest cell), between 1 and `max_batch`."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return cpu_batch
    free_bytes, _ = torch.cuda.mem_get_info(device)
    return int(min(max_batch, max(1, share * free_bytes // max(per_cell_bytes, 1))))


def longest_first(lengths_n: np.ndarray) -> np.ndarray:
    """Row order, longest cell first (ties in input order)."""
    return np.argsort(-np.asarray(lengths_n), kind="stable")


def same_length_groups(lengths_n: np.ndarray) -> list[np.ndarray]:
    """The rows of each length (shortest length first), each in input order: batches that never mix lengths."""
    lengths_n = np.asarray(lengths_n)
    return [np.flatnonzero(lengths_n == length) for length in np.unique(lengths_n)]


@dataclass
class Batched:
    outputs: tuple[np.ndarray, ...]  # float32, one row per cell, in input order
    batch_size: int  # the batch size the run ended with (smaller than asked after an out-of-memory retry)


def run_batches(
    forward: Callable[[np.ndarray], Any],
    groups: Sequence[np.ndarray],
    batch_size: int,
    *,
    device: Any,
    dtype=None,
    progress: ProgressCallback = no_progress,
    cancel: Optional[CancelToken] = None,
    step: str = "embed",
    empty: Sequence[tuple[int, ...]] = (),
) -> Batched:
    """Run `forward(rows_b)` over batches of at most `batch_size` rows taken in order from each group.

    `forward` returns a tensor, or a tuple of tensors, with one row per row of `rows_b`; each output comes
    back as a float32 array over all rows of all groups, in input order (row `i` of an output is the cell
    `i`). Before each batch `cancel` is checked; after it, progress is reported in cells. A CUDA
    out-of-memory error in a batch frees the cache and retries the same rows at half the batch size, for
    the rest of the run; at batch size 1 it raises `DeviceOutOfMemory`. `empty`: the row shapes of the
    outputs, for a run without rows (no batch tells them).
    """
    import torch

    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    n_cells = int(sum(len(rows) for rows in groups))
    outputs: Optional[list[np.ndarray]] = None
    done = 0
    progress(step, 0, n_cells)
    for rows in groups:
        start = 0
        while start < len(rows):
            if cancel is not None:
                cancel.check()
            rows_b = rows[start : start + batch_size]
            try:
                with torch.inference_mode(), autocast(device, dtype):
                    result = forward(rows_b)
                    parts = result if isinstance(result, tuple) else (result,)
                    arrays = [part.float().cpu().numpy() for part in parts]
            except Exception as exc:
                if not is_cuda_oom(exc):
                    raise
                oom = True
            else:
                oom = False
            if oom:  # out of the except block: the traceback that holds the batch's tensors is gone
                free_cuda_cache()
                if batch_size == 1:
                    raise DeviceOutOfMemory(1)
                batch_size //= 2
                continue
            if outputs is None:
                outputs = [np.zeros((n_cells, *a.shape[1:]), dtype=np.float32) for a in arrays]
            for out, a in zip(outputs, arrays):
                out[rows_b] = a
            start += len(rows_b)
            done += len(rows_b)
            progress(step, done, n_cells)
    if outputs is None:
        outputs = [np.zeros((0, *shape), dtype=np.float32) for shape in empty]
    return Batched(tuple(outputs), batch_size)
