"""Sharded runs on Ray: throughput with 1 and with 2 workers on a generated file.

    .venv/bin/python benchmarks/bench_ray.py [--cells 20000] [--genes 2000] [--detected 300] [--workers 1,2]
        [--model pca] [--variant V] [--weights URI] [--param KEY=VALUE ...] [--device cpu|cuda]

Generates (once, into $CZB_BENCH_DIR; the same file as benchmarks/bench_streaming.py for the same sizes)
a backed .h5ad of `--cells` x `--genes` counts, then for each worker count starts a local Ray cluster of
that many CPUs (GPUs with `--device cuda`) in its own process and runs the model sharded on it. It prints
the cells per second of the whole run (validation, the PCA fit on the driver for the PCA baseline, worker
start-up, shards, reading the store back) and of the shards phase alone (workers loading and embedding).
No target: the figures say how far a second worker helps on this machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import DATA_DIR, measure  # noqa: E402
from benchmarks.bench_streaming import generated_atlas  # noqa: E402

SHARDED_RUN = """
import json, os, time
os.environ["CZB_HOME"] = {home!r}
import ray
from czb_core.models.pipeline import embed_file
ray.init(num_cpus={workers}, num_gpus={gpus}, include_dashboard=False, address="local", log_to_driver=False)
t0 = time.perf_counter()
result = embed_file({path!r}, {model!r}, {variant!r}, weights={weights!r}, params={params!r}, device={device!r},
                    ray_address="auto", input_sha256="not measured")
wall = time.perf_counter() - t0
sharding = result.record["sharding"]
ray.shutdown()
print(json.dumps({{"wall_s": wall, "shards_wall_s": sharding["shards_wall_s"], "workers": sharding["workers"],
                  "shards": len(sharding["shards"]), "n_cells": int(result.emb_nd.shape[0]),
                  "dims": int(result.emb_nd.shape[1])}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--detected", type=int, default=300)
    parser.add_argument("--workers", default="1,2", help="worker counts to compare, comma-separated")
    parser.add_argument("--model", default="pca")
    parser.add_argument("--variant")
    parser.add_argument("--weights")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    params = dict(pair.split("=", 1) for pair in args.param)
    path = generated_atlas(args.cells, args.genes, args.detected)
    home = DATA_DIR / "ray_home"
    print(f"{args.model} on {path.name} ({args.cells:,} cells), device {args.device}")
    print("| workers | shards | run wall | cells/s (run) | shards phase | cells/s (shards phase) |")
    print("|---|---|---|---|---|---|")
    for workers in (int(w) for w in args.workers.split(",")):
        gpus = workers if args.device == "cuda" else 0
        run = measure(SHARDED_RUN.format(home=str(home), workers=workers, gpus=gpus, path=str(path), model=args.model,
                                         variant=args.variant, weights=args.weights, params=params,
                                         device=args.device))
        if "wall_s" not in run:
            raise SystemExit(f"the sharded run with {workers} worker(s) failed: {run}")
        print(f"| {run['workers']} | {run['shards']} | {run['wall_s']:,.1f} s | "
              f"{run['n_cells'] / run['wall_s']:,.0f} | "
              f"{run['shards_wall_s']:,.1f} s | {run['n_cells'] / run['shards_wall_s']:,.0f} |")


if __name__ == "__main__":
    main()
