"""Helpers shared by the benchmark scripts: a cached generated dataset and child-process measurement.

Each measured step runs in its own Python process and is reaped with `os.wait4`, whose resource usage
is that child's alone, so each peak RSS belongs to its step and not to what the script did before.
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
        from czb_core.synthetic import make_synthetic_counts

        DATA_DIR.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        adata = make_synthetic_counts(n_cells=n_cells, n_genes=n_genes, n_types=10, n_batches=4,
                                      mean_counts=mean_counts, seed=0)
        tmp = path.with_suffix(".tmp.h5ad")
        adata.write_h5ad(tmp)
        tmp.rename(path)
        print(f"generated {path.name} in {time.perf_counter() - t0:.0f} s "
              f"({adata.X.nnz / n_cells:.0f} non-zero genes per cell, {path.stat().st_size / 2**30:.2f} GiB)")
    return path


def measure(code: str) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON line. Adds wall time and peak RSS (MB)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode not in (0, 1):
        raise RuntimeError(stderr[-2000:])
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    result.update(process_wall_s=round(wall, 2), peak_rss_mb=round(usage.ru_maxrss / 1024, 1))
    return result
