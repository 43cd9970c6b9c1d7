"""Issue 2 figures: `czb validate` and the PCA baseline on a generated 200,000 x 20,000 file.

    python benchmarks/bench_core.py [--cells 200000] [--genes 20000]

Targets: validate under 5 s and 1 GB peak RSS. PCA baseline: time and peak RSS beside scanpy's own
normalize_total/log1p/HVG/PCA on the same file, each in its own process, and their ratio.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import generated_h5ad, measure  # noqa: E402

VALIDATE_INPROCESS = """
import json, time
t0 = time.perf_counter()
from czb_core.cli import main
code = main(["validate", {path!r}, "--model", "pca"])
print(json.dumps({{"exit": code, "wall_s": round(time.perf_counter() - t0, 2)}}))
"""
OURS = """
import json, time
import anndata as ad
t0 = time.perf_counter()
x = ad.read_h5ad({path!r}).X
t_read = time.perf_counter() - t0
from model_runners.pca.model import pca_baseline
t1 = time.perf_counter()
emb = pca_baseline(x, 3000, 50, seed=0)
print(json.dumps({{"read_s": round(t_read, 2), "compute_s": round(time.perf_counter() - t1, 2),
                  "shape": list(emb.shape)}}))
"""
SCANPY = """
import json, time
import anndata as ad, scanpy as sc
t0 = time.perf_counter()
a = ad.read_h5ad({path!r})
t_read = time.perf_counter() - t0
t1 = time.perf_counter()
sc.pp.normalize_total(a); sc.pp.log1p(a)
sc.pp.highly_variable_genes(a, n_top_genes=3000, flavor="seurat")
sc.pp.pca(a, n_comps=50, svd_solver="arpack", random_state=0, mask_var="highly_variable")
print(json.dumps({{"read_s": round(t_read, 2), "compute_s": round(time.perf_counter() - t1, 2),
                  "shape": list(a.obsm["X_pca"].shape)}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--genes", type=int, default=20_000)
    args = parser.parse_args()
    path = str(generated_h5ad(args.cells, args.genes))

    v = measure(VALIDATE_INPROCESS.format(path=path))
    print(f"czb validate ({args.cells:,} x {args.genes:,}): {v['process_wall_s']:.2f} s wall incl. interpreter start "
          f"({v['wall_s']:.2f} s in main), peak RSS {v['peak_rss_mb']} MB, exit {v['exit']}")
    ours = measure(OURS.format(path=path))
    ref = measure(SCANPY.format(path=path))
    print(f"PCA baseline (ours):  read {ours['read_s']} s, compute {ours['compute_s']} s, "
          f"peak RSS {ours['peak_rss_mb']} MB")
    print(f"scanpy reference:     read {ref['read_s']} s, compute {ref['compute_s']} s, "
          f"peak RSS {ref['peak_rss_mb']} MB")
    print(f"compute time ratio scanpy/ours: {ref['compute_s'] / ours['compute_s']:.2f}x")
    print(f"peak RSS ratio scanpy/ours: {ref['peak_rss_mb'] / ours['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
