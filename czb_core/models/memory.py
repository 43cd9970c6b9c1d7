"""Memory of one run: its peak, measured (for the run record and the benchmarks), and the GPU memory it
will need, estimated before it is queued (so a job that cannot fit is refused at submit, not failed later).

`ru_maxrss` is the peak of the whole process, useless inside a long-lived app server that runs many
jobs, so a background thread samples this process's RSS while the run lasts. GPU peak comes from
torch's allocator statistics when CUDA is in use.
"""

from __future__ import annotations

import math
import sys
import threading
from dataclasses import dataclass
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


GIB = 2**30
CUDA_CONTEXT_BYTES = 512 * 2**20  # the CUDA context and kernel images a worker holds before any tensor
ACTIVATION_BYTES = 4  # activations counted in fp32: an upper bound under bf16/fp16 autocast
FFN_PER_HIDDEN = 4  # a transformer's feed-forward width, in hidden widths, when the model does not say
LIVE_HIDDEN_COPIES = 8  # q, k, v, attention output, residual and norm copies live inside one layer


@dataclass(frozen=True)
class MemoryEstimate:
    """The GPU memory one run needs, in bytes, by term:

    - `weights_bytes`: parameter count x bytes per parameter (parameters stay fp32 under autocast);
    - `per_cell_bytes`: the activations one cell of the longest sequence keeps alive inside one layer
      (inference frees a layer's activations before the next): per token `4 * (ffn + 8 * hidden)` bytes
      (the feed-forward intermediate plus q/k/v, attention output, residual and norm copies, fp32), plus
      `4 * heads * L^2` bytes of attention scores when the model materialises them (heads declared), plus
      its output embedding;
    - `overhead_bytes`: the CUDA context of the worker.

    `total_bytes` = weights + batch_size x per cell + overhead. It is an estimate from the model's
    declared sizes, not a measurement: the run record's `peak_gpu_mb` is the measured peak to compare.
    """

    weights_bytes: int
    per_cell_bytes: int
    batch_size: int
    overhead_bytes: int = CUDA_CONTEXT_BYTES

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.batch_size * self.per_cell_bytes + self.overhead_bytes

    def largest_batch(self, free_bytes: int) -> int:
        """The largest batch size that fits in `free_bytes` (0 when not even one cell fits)."""
        return max(0, (free_bytes - self.weights_bytes - self.overhead_bytes) // self.per_cell_bytes)


def estimate_run_memory(n_params: int, bytes_per_param: int, seq_len: int, batch_size: int,
                        embedding_dim: int, n_heads: int = 0, ffn_dim: Optional[int] = None) -> MemoryEstimate:
    """GPU memory of embedding `batch_size` cells of at most `seq_len` tokens with a model of `n_params`
    parameters whose hidden and output width is `embedding_dim` (see `MemoryEstimate` for the terms).
    `ffn_dim` defaults to `4 * embedding_dim`; `n_heads` > 0 adds the materialised attention scores."""
    if min(n_params, bytes_per_param, seq_len, n_heads) < 0 or min(batch_size, embedding_dim) < 1:
        raise ValueError("memory estimate terms must be non-negative, the batch size and width at least 1")
    ffn = FFN_PER_HIDDEN * embedding_dim if ffn_dim is None else ffn_dim
    per_token = ACTIVATION_BYTES * (ffn + LIVE_HIDDEN_COPIES * embedding_dim)
    per_cell = seq_len * per_token + ACTIVATION_BYTES * n_heads * seq_len**2 + ACTIVATION_BYTES * embedding_dim
    return MemoryEstimate(weights_bytes=n_params * bytes_per_param, per_cell_bytes=per_cell, batch_size=batch_size)


def gib(n_bytes: float, up: bool) -> str:
    """Bytes as GiB with one decimal, rounded up (a need) or down (what is free), never flattering."""
    tenths = n_bytes / GIB * 10
    return f"{(math.ceil(tenths) if up else math.floor(tenths)) / 10:.1f}"


def fit_problem(estimate: MemoryEstimate, free_bytes: int, device: str, batch_chosen: bool) -> Optional[str]:
    """None when the run fits in `free_bytes` of `device`; else what it needs, what is free and the fix:
    a smaller batch size when one would fit (and the batch size was the user's to choose), another GPU."""
    if estimate.total_bytes <= free_bytes:
        return None
    figure = f"needs ~{gib(estimate.total_bytes, up=True)} GiB, GPU {device} has {gib(free_bytes, up=False)} GiB free"
    batch = estimate.largest_batch(free_bytes)
    if batch >= 1 and batch_chosen:
        return f"{figure}: lower batch_size to {batch} or choose another GPU"
    return f"{figure} (even at one cell per batch): choose another GPU or run on the CPU"


SEQ_LEN_KEYS = ("max_seq_len", "model_input_size", "pad_length")  # resources naming a cell's tokens at most
GPU_BATCH_KEY = "gpu_batch_size"  # resources: the batch a runner takes on a GPU when none is asked for


def estimate_variant_memory(weights_size_mb: Optional[float], resources: dict, embedding_dim: Optional[int],
                            batch_size: Optional[int]) -> Optional[tuple[MemoryEstimate, bool]]:
    """The estimate of one run from what a model variant declares, and whether its batch size is a
    number the user can lower (asked for, or the variant's GPU batch) rather than one the runner
    sizes to the free memory itself; None without an embedding width (nothing to estimate from).

    `weights_size_mb` is declared as the fp32 size, so parameters = size / 4 bytes. The sequence length
    is the first of `SEQ_LEN_KEYS` the variant's resources declare; a model that declares none is
    counted as one token per cell (its activations are then understated), `n_heads` adds the attention
    scores. A runner that sizes its own batch from the free memory is counted at one cell per batch.
    """
    if not embedding_dim:
        return None
    chosen = batch_size or resources.get(GPU_BATCH_KEY)
    seq_len = next((int(resources[k]) for k in SEQ_LEN_KEYS if resources.get(k)), 1)
    estimate = estimate_run_memory(n_params=int((weights_size_mb or 0) * 2**20 / 4), bytes_per_param=4,
                                   seq_len=seq_len, batch_size=int(chosen or 1), embedding_dim=int(embedding_dim),
                                   n_heads=int(resources.get("n_heads") or 0))
    return estimate, chosen is not None
