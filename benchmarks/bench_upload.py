"""Issue 11 figures: memory of storing a 1 GB upload, and the time to refuse a file by its header.

    python benchmarks/bench_upload.py [--gb 1.0] [--repeats 5]

1. Writes a valid h5ad of about `--gb` GB (CSR counts, 20,000 genes, 1,000 per cell) in a temp folder.
2. Stores it with `Workspace.add_stream`, each time in a fresh interpreter, from
   - an in-memory buffer (`io.BytesIO`, what Streamlit's UploadedFile is), written from its buffer;
   - the same buffer behind `read()` only (a stream without `getbuffer`, e.g. a wrapped upload);
   - an open file.
   For each it prints the process's resident memory just before the call, the peak during it (VmHWM,
   reset before the call), and the peak over the before figure: the memory the store itself needs on top
   of what the caller already held.
3. Times `check_readable` (the header check every add and read starts with) on a file claiming 10^12
   cells, an 8 GB gzip bomb, and the generated file: the fastest of `--repeats`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks._common import best_of, measure  # noqa: E402

N_GENES = 20_000
PER_CELL = 1_000
BLOCK_CELLS = 10_000


def write_big_h5ad(path: Path, n_cells: int) -> Path:
    """A valid h5ad of `n_cells` x 20,000 genes, 1,000 counts per cell, written block by block (the
    matrix is never whole in memory); anndata reads it back like any other."""
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp

    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"ENSG{i:011d}" for i in range(N_GENES)])
    ad.AnnData(sp.csr_matrix((n_cells, N_GENES), dtype=np.float32), obs=obs, var=var).write_h5ad(path)
    rng = np.random.default_rng(0)
    step = N_GENES // PER_CELL
    with h5py.File(path, "a") as f:
        x = f["X"]
        for key in ("data", "indices", "indptr"):
            del x[key]
        nnz = n_cells * PER_CELL
        data = x.create_dataset("data", shape=(nnz,), dtype=np.float32)
        indices = x.create_dataset("indices", shape=(nnz,), dtype=np.int32)
        x["indptr"] = np.arange(n_cells + 1, dtype=np.int64) * PER_CELL
        for lo in range(0, n_cells, BLOCK_CELLS):
            hi = min(lo + BLOCK_CELLS, n_cells)
            offsets_c = (np.arange(lo, hi) % step)[:, None]
            indices[lo * PER_CELL:hi * PER_CELL] = (np.arange(0, N_GENES, step)[None, :] + offsets_c).ravel()
            data[lo * PER_CELL:hi * PER_CELL] = 1 + rng.poisson(2.0, (hi - lo) * PER_CELL).astype(np.float32)
    return path


STORE = """
import io, json, os, time
from pathlib import Path
os.environ["CZB_HOME"] = {home!r}
from czb_core.service.workspace import Workspace

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024

class ReadOnly:
    '''A stream offering read() and seek() only, as a wrapped upload would.'''
    def __init__(self, inner): self.inner = inner
    def read(self, n=-1): return self.inner.read(n)
    def seek(self, *a): return self.inner.seek(*a)
    def seekable(self): return True

workspace = Workspace()
source = Path({source!r})
if {mode!r} == "file":
    stream = open(source, "rb")
else:
    stream = io.BytesIO(source.read_bytes())
    if {mode!r} == "memory, read()":
        stream = ReadOnly(stream)
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current RSS
t0 = time.perf_counter()
record = workspace.add_stream(stream, "big.h5ad", max_bytes=64 << 30)
wall = time.perf_counter() - t0
peak = status("VmHWM")
print(json.dumps({{"before_mb": round(before), "peak_in_call_mb": round(peak), "over_before_mb": round(peak - before),
                  "store_s": round(wall, 1), "size_mb": round(record.size_bytes / 2**20)}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=1.0, help="size of the generated h5ad")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n_cells = int(args.gb * 2**30 / (PER_CELL * 8))  # float32 value + int32 column per count
    with tempfile.TemporaryDirectory(prefix="czb-bench-upload-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        big = write_big_h5ad(tmp / "big.h5ad", n_cells)
        print(f"generated {big.name}: {n_cells:,} cells x {N_GENES:,} genes, {big.stat().st_size / 2**30:.2f} GiB "
              f"in {time.perf_counter() - t0:.0f} s")
        print(f"{'source':16s} {'RSS before':>11s} {'peak in call':>13s} {'over before':>12s} {'time':>7s}")
        for mode in ("memory, buffer", "memory, read()", "file"):
            home = tmp / "home"
            figures = measure(STORE.format(home=str(home), source=str(big), mode=mode))
            shutil.rmtree(home)
            print(f"{mode:16s} {figures['before_mb']:>8,} MB {figures['peak_in_call_mb']:>10,} MB "
                  f"{figures['over_before_mb']:>9,} MB {figures['store_s']:>5.1f} s")

        from czb_core.errors import InputError
        from czb_core.io.reading import check_readable
        from tests.helpers.bad_inputs import write_claimed_cells, write_gzip_bomb

        def refused(path: Path):
            def check():
                try:
                    check_readable(path)
                except InputError as exc:
                    return str(exc)
                return "accepted"
            return check

        files = {"claims 10^12 cells": write_claimed_cells(tmp / "claims.h5ad", 10**12),
                 "8 GB gzip bomb": write_gzip_bomb(tmp / "bomb.h5ad"),
                 f"generated {args.gb:g} GB file": big}
        print(f"\nheader check (check_readable), fastest of {args.repeats}:")
        for label, path in files.items():
            seconds, outcome = best_of(args.repeats, refused(path))
            print(f"  {label:22s} {seconds * 1e3:7.1f} ms  {path.stat().st_size / 2**10:>12,.0f} KB on disk  "
                  f"{'refused' if outcome != 'accepted' else 'accepted'}")


if __name__ == "__main__":
    main()
