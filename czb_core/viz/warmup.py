"""Compile umap-learn's numba code once, onto disk, so that no job pays for it.

umap-learn and pynndescent declare most of their functions with plain `numba.njit()`, without
`cache=True`, so every new process (each job worker, each CLI run) compiled them again: tens of seconds
before the first UMAP of a fresh server. `import_umap` (in `czb_core.viz.umap`) imports umap with numba's
`njit` defaulting to `cache=True`, so the compiled code lands next to umap's sources (or in
`NUMBA_CACHE_DIR`) and later processes load it in about a second. A function numba cannot cache
(pynndescent's `nn_descent` uses dynamic globals) still compiles per process; it only runs above 4,096
cells, where the UMAP itself takes longer.

`warm_up` runs a UMAP on a small random embedding through `compute_umap`, the path every job takes, so the
cache holds what the jobs use; `czb warmup` runs it at install, and the app starts it in the background.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from czb_core.viz.umap import compute_umap, import_umap

WARMUP_CELLS = 300  # below umap's exact-neighbour threshold, as the demo and most quick runs are
WARMUP_DIMS = 10


def warm_up(seed: int = 0) -> float:
    """Compile (or load from the disk cache) what a job's UMAP runs; returns the seconds it took."""
    started = time.perf_counter()
    import_umap()
    emb_nd = np.random.default_rng(seed).normal(size=(WARMUP_CELLS, WARMUP_DIMS)).astype(np.float32)
    compute_umap(emb_nd, seed=seed)
    return time.perf_counter() - started


_STARTED: list[threading.Thread] = []  # at most one background warm-up per process


def start_warm_up(log_path: Path) -> threading.Thread:
    """`czb warmup` in a child process (its compiling holds no lock of the caller), once per process, reaped
    by a daemon thread; the output goes to `log_path`. Seconds when the disk cache is warm already."""
    if _STARTED:
        return _STARTED[0]
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def run() -> None:
        with open(log_path, "ab") as log:
            subprocess.run([sys.executable, "-m", "czb_core", "warmup"], stdout=log, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, check=False)

    thread = threading.Thread(target=run, name="czb-warmup", daemon=True)
    thread.start()
    _STARTED.append(thread)
    return thread
