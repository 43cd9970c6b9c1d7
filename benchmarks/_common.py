"""Helpers shared by the benchmark scripts: a cached generated dataset and child-process measurement.

Each measured step runs in its own Python process, which reports its own peak RSS (`VmHWM`; Linux
carries `ru_maxrss` over from the parent across exec, so the rusage of a child would include whatever the
benchmark script held when it started the child). Data are generated in a child process too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("CZB_BENCH_DIR", ROOT / "benchmarks" / ".data"))


def generated_h5ad(n_cells: int, n_genes: int, mean_counts: float = 1500.0) -> Path:
    """A synthetic counts file, generated once and reused (generation is not what is measured)."""
    path = DATA_DIR / f"synthetic_{n_cells}x{n_genes}.h5ad"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.h5ad")
        made = measure(GENERATE.format(n_cells=n_cells, n_genes=n_genes, mean_counts=mean_counts, tmp=str(tmp)))
        tmp.rename(path)
        print(f"generated {path.name} in {made['process_wall_s']:.0f} s ({made['nnz_per_cell']:.0f} non-zero "
              f"genes per cell, {path.stat().st_size / 2**30:.2f} GiB)")
    return path


GENERATE = """
import json
from czb_core.io.synthetic import make_synthetic_counts
a = make_synthetic_counts(n_cells={n_cells}, n_genes={n_genes}, n_types=10, n_batches=4, mean_counts={mean_counts},
                          seed=0)
a.write_h5ad({tmp!r})
print(json.dumps({{"nnz_per_cell": a.X.nnz / a.n_obs}}))
"""
PEAK = """
import json as _json
with open("/proc/self/status") as _f:
    _kb = next(int(line.split()[1]) for line in _f if line.startswith("VmHWM"))
print(_json.dumps({"vmhwm_mb": round(_kb / 1024, 1)}))
"""


def measure(code: str) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON line. Adds wall time and peak RSS (MB)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, "-c", code + PEAK], stdout=out, stderr=err, cwd=ROOT)
        child.wait()
        wall = time.perf_counter() - t0
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode not in (0, 1):
        raise RuntimeError(stderr[-2000:])
    result = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    result.update(process_wall_s=round(wall, 2), peak_rss_mb=result.pop("vmhwm_mb"))
    return result


def best_of(repeats: int, fn):
    """(the fastest of `repeats` wall times, the last result): the figure least disturbed by other load."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def generated_counts(n_cells: int, n_genes: int, detected: int, seed: int = 0):
    """A CSR count matrix with ~`detected` distinct genes per cell (half to 1.5 times that); counts are
    1 + negative binomial around lognormal gene means, so most are small and a few run into the
    thousands, as in real data. Generation is not what a benchmark measures."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    nnz_n = np.minimum(rng.integers(detected // 2, detected * 3 // 2 + 1, size=n_cells), n_genes)
    indptr = np.concatenate([[0], np.cumsum(nnz_n)])
    columns = np.empty(indptr[-1], dtype=np.int32)
    for lo, hi in zip(indptr[:-1], indptr[1:]):
        columns[lo:hi] = np.sort(rng.choice(n_genes, hi - lo, replace=False))
    mean_g = rng.lognormal(0.0, 1.5, n_genes)
    data = 1 + rng.negative_binomial(0.5, 0.5 / (0.5 + mean_g[columns]))
    return sp.csr_matrix((data.astype(np.float32), columns, indptr), shape=(n_cells, n_genes))
