"""Atlas scale on one machine: the streamed PCA baseline of a generated file larger than memory allows.

    .venv/bin/python benchmarks/bench_streaming.py [--cells 2000000] [--genes 20000] [--detected 1000]

Generates (once, block by block, into $CZB_BENCH_DIR) a backed .h5ad of `--cells` x `--genes` raw counts
with about `--detected` non-zero genes per cell, then, each in its own process:
1. `czb run FILE --model pca --stream`: wall time and peak RSS (the target is under 4 GB at 2M cells);
2. the in-memory path on the same file: it must refuse before reading, with the figures, not be killed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import DATA_DIR, measure  # noqa: E402

GENERATE = """
import json, h5py, numpy as np, pandas as pd
from anndata.io import write_elem
n_cells, n_genes, detected, block = {n_cells}, {n_genes}, {detected}, 20_000
rng = np.random.default_rng(0)
mean_g = rng.lognormal(0.0, 1.5, n_genes)
cdf_g = np.cumsum(mean_g / mean_g.sum())
with h5py.File({tmp!r}, "w") as f:
    f.attrs.update({{"encoding-type": "anndata", "encoding-version": "0.1.0"}})
    types = rng.integers(0, 10, n_cells)
    obs = pd.DataFrame({{"cell_type": pd.Categorical([f"type_{{t}}" for t in types]),
                        "batch": pd.Categorical([f"b{{b}}" for b in rng.integers(0, 4, n_cells)])}},
                       index=[f"cell_{{i}}" for i in range(n_cells)])
    write_elem(f, "obs", obs)
    del obs
    write_elem(f, "var", pd.DataFrame(index=[f"gene_{{g}}" for g in range(n_genes)]))
    for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
        write_elem(f, key, {{}})
    X = f.create_group("X")
    X.attrs.update({{"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n_cells, n_genes)}})
    data = X.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 20,))
    indices = X.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 20,))
    indptr = [np.zeros(1, dtype=np.int64)]
    for lo in range(0, n_cells, block):
        n = min(block, n_cells - lo)
        drawn = np.minimum(np.searchsorted(cdf_g, rng.random(n * detected)), n_genes - 1)  # by expression
        keys = np.unique(np.arange(n, dtype=np.int64).repeat(detected) * n_genes + drawn)
        rows, cols = np.divmod(keys, n_genes)
        counts = (1 + rng.poisson(mean_g[cols])).astype(np.float32)
        start = data.shape[0]
        data.resize((start + len(keys),)); data[start:] = counts
        indices.resize((start + len(keys),)); indices[start:] = cols
        indptr.append(start + np.cumsum(np.bincount(rows, minlength=n)))
    X.create_dataset("indptr", data=np.concatenate(indptr))
    print(json.dumps({{"nnz_per_cell": float(data.shape[0] / n_cells)}}))
"""
STREAM = """
import json
from czb_core.cli import main
code = main(["run", {path!r}, "--model", "pca", "--stream", "--out", {out!r}])
print(json.dumps({{"exit_code": code}}))
"""
IN_MEMORY = """
import json, time
from czb_core.errors import InputError
from czb_core.models.pipeline import embed_file
t0 = time.perf_counter()
try:
    embed_file({path!r}, "pca", stream=False)
    print(json.dumps({{"refused": False}}))
except InputError as exc:
    print(json.dumps({{"refused": True, "seconds": round(time.perf_counter() - t0, 2), "message": str(exc)}}))
"""


def generated_atlas(n_cells: int, n_genes: int, detected: int) -> Path:
    path = DATA_DIR / f"atlas_{n_cells}x{n_genes}x{detected}.h5ad"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.h5ad")
        made = measure(GENERATE.format(n_cells=n_cells, n_genes=n_genes, detected=detected, tmp=str(tmp)))
        tmp.rename(path)
        print(f"generated {path.name} in {made['process_wall_s']:.0f} s: {made['nnz_per_cell']:.0f} non-zeros per "
              f"cell, {path.stat().st_size / 2**30:.1f} GiB on disk")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=2_000_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--detected", type=int, default=1_000)
    args = parser.parse_args()
    path = generated_atlas(args.cells, args.genes, args.detected)
    out = DATA_DIR / f"{path.stem}.pca.h5ad"
    streamed = measure(STREAM.format(path=str(path), out=str(out)))
    refused = measure(IN_MEMORY.format(path=str(path)))
    print(f"| {args.cells:,} x {args.genes:,} ({path.stat().st_size / 2**30:.1f} GiB) | wall | peak RSS |")
    print("|---|---|---|")
    print(f"| streamed PCA baseline (czb run --stream), exit {streamed['exit_code']} | "
          f"{streamed['process_wall_s']:,.0f} s | {streamed['peak_rss_mb'] / 1024:.2f} GB |")
    print(f"| in-memory path: refused={refused['refused']} after {refused.get('seconds', float('nan'))} s | "
          f"{refused['process_wall_s']:,.1f} s | {refused['peak_rss_mb'] / 1024:.2f} GB |")
    if refused.get("message"):
        print(f"message: {refused['message']}")


if __name__ == "__main__":
    main()
