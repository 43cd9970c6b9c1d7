"""Time every benchmark task on a generated embedding, with metric subsampling on and off.

    .venv/bin/python benchmarks/bench_tasks.py              # 100,000 cells x 50 dims (minutes)
    .venv/bin/python benchmarks/bench_tasks.py --cells 20000  # quick

The embedding has 10 labels of unequal size, 4 batches with a shift each, and a lung/liver split, so
no metric sits at 0 or 1. Each mode runs in its own spawned process so its peak RSS (ru_maxrss) is its
own. "on" caps metrics at `Settings.metrics_max_cells` (50,000 unless CZB_METRICS_MAX_CELLS says
otherwise); "off" scores every cell. The shared kNN search is timed inside the first task that needs
it (clustering).

When the `czbenchmarks` package is importable, its tasks run on the same full input too, and the
script prints both times, their ratio and the largest metric difference. cz-benchmarks 0.15.1 cannot
be installed beside this project's pins (it needs numcodecs<=0.16.3 and, through hydra-core,
omegaconf<2.4), so in the project's environment that comparison is skipped. It does run from a
separate environment, e.g. `/tmp/czbvenv/bin/python benchmarks/bench_tasks.py` with
`pip install cz-benchmarks psutil "pynndescent<0.7"` there and this repository on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from czb_core.config import get_settings  # noqa: E402
from czb_core.tasks import run_tasks  # noqa: E402
from czb_core.tasks.results import MetricResult  # noqa: E402


def make_data(n_cells: int, dims: int, n_labels: int, n_batches: int, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Gaussian label clouds of unequal size, a random shift per batch, a random tissue split."""
    rng = np.random.default_rng(seed)
    shares_l = rng.dirichlet(np.full(n_labels, 2.0))
    labels_n = rng.choice(n_labels, size=n_cells, p=shares_l)
    batches_n = rng.integers(0, n_batches, size=n_cells)
    centers_ld = rng.normal(scale=0.35, size=(n_labels, dims))
    shifts_bd = rng.normal(scale=0.25, size=(n_batches, dims))
    emb_nd = centers_ld[labels_n] + shifts_bd[batches_n] + rng.normal(size=(n_cells, dims))
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type_{i}" for i in labels_n]),
            "batch": pd.Categorical([f"batch_{b}" for b in batches_n]),
            "tissue": rng.choice(["lung", "liver"], size=n_cells),
        }
    )
    return emb_nd.astype(np.float32), obs


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(args: argparse.Namespace, max_cells) -> dict:
    emb_nd, obs = make_data(args.cells, args.dims, args.labels, args.batches, args.seed)
    start = time.perf_counter()
    results = run_tasks(
        emb_nd, obs, "cell_type", batch_key="batch", split_key="tissue", train_value="lung",
        test_value="liver", seed=42, max_cells=max_cells,
    )
    return {
        "total_s": time.perf_counter() - start,
        "task_s": {r.task_name: r.runtime_metrics["wall_s"] for r in results},
        "n_used": {r.task_name: r.n_used for r in results},
        "metrics": {(r.task_name, m.label): m.value for r in results for m in r.metrics},
        "peak_rss_mb": _peak_rss_mb(),
    }


def run_czbenchmarks(args: argparse.Namespace) -> dict:
    """cz-benchmarks' own tasks on the same (full) input; they have no subsampling."""
    import logging

    from czbenchmarks.tasks import (
        BatchIntegrationTask,
        BatchIntegrationTaskInput,
        ClusteringTask,
        ClusteringTaskInput,
        EmbeddingTask,
        EmbeddingTaskInput,
        MetadataLabelPredictionTask,
        MetadataLabelPredictionTaskInput,
    )

    logging.disable(logging.WARNING)
    emb_nd, obs = make_data(args.cells, args.dims, args.labels, args.batches, args.seed)
    obs.index = obs.index.astype(str)
    labels = obs["cell_type"]
    runs = {
        "clustering": (ClusteringTask(random_seed=42), ClusteringTaskInput(obs=obs, input_labels=labels)),
        "embedding": (EmbeddingTask(random_seed=42), EmbeddingTaskInput(input_labels=labels)),
        "label_prediction": (
            MetadataLabelPredictionTask(random_seed=42), MetadataLabelPredictionTaskInput(labels=labels)
        ),
        "batch_integration": (
            BatchIntegrationTask(random_seed=42), BatchIntegrationTaskInput(batch_labels=obs["batch"], labels=labels)
        ),
    }
    task_s, metrics = {}, {}
    for name, (task, task_input) in runs.items():
        start = time.perf_counter()
        for m in task.run(emb_nd, task_input):
            metrics[(name, MetricResult(m.metric_type.value, m.value, m.params or {}).label)] = m.value
        task_s[name] = time.perf_counter() - start
    return {"total_s": sum(task_s.values()), "task_s": task_s, "metrics": metrics, "peak_rss_mb": _peak_rss_mb()}


def _child_main(conn, fn, fn_args) -> None:
    conn.send(fn(*fn_args))
    conn.close()


def in_child(fn, *fn_args) -> dict:
    """Run in a fresh spawned process so each mode's peak RSS is its own. Not a Pool worker: those are
    daemonic, and joblib then refuses to run the random forest on more than one core."""
    ctx = mp.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_main, args=(child_conn, fn, fn_args))
    child.start()
    result = parent_conn.recv()
    child.join()
    return result


def print_mode(title: str, run: dict) -> None:
    print(f"\n{title}: total {run['total_s']:.1f} s, peak RSS {run['peak_rss_mb']:,.0f} MB")
    for task, seconds in run["task_s"].items():
        used = run.get("n_used", {}).get(task)
        cells = f"  ({used:,} cells)" if used is not None else ""
        print(f"  {task:<18} {seconds:8.1f} s{cells}")


def compare(ours: dict, theirs: dict) -> None:
    print("\nczb_core (subsampling off) vs cz-benchmarks on the same cells")
    print(f"  {'task':<18} {'czb_core':>10} {'cz-bench':>10} {'ratio':>7}")
    for task, their_s in theirs["task_s"].items():
        our_s = ours["task_s"][task]
        print(f"  {task:<18} {our_s:9.1f}s {their_s:9.1f}s {their_s / our_s:6.2f}x")
    print(f"  {'total':<18} {sum(ours['task_s'][t] for t in theirs['task_s']):9.1f}s {theirs['total_s']:9.1f}s")
    print(f"  peak RSS: czb_core {ours['peak_rss_mb']:,.0f} MB, cz-benchmarks {theirs['peak_rss_mb']:,.0f} MB")
    shared = [key for key in theirs["metrics"] if key in ours["metrics"]]
    diffs = {key: abs(ours["metrics"][key] - theirs["metrics"][key]) for key in shared}
    worst = max(diffs, key=diffs.get)
    print(f"  {len(shared)} shared metrics; largest difference {diffs[worst]:.4g} at {worst[0]} / {worst[1]}")
    for key in shared:
        print(f"    {key[0]:<18} {key[1]:<48} ours {ours['metrics'][key]:.4f}  cz-bench {theirs['metrics'][key]:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=50)
    parser.add_argument("--labels", type=int, default=10)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-czbenchmarks", action="store_true", help="do not run cz-benchmarks even if installed")
    args = parser.parse_args()

    cap = get_settings().metrics_max_cells
    print(f"{args.cells:,} cells x {args.dims} dims, {args.labels} labels, {args.batches} batches; "
          f"{os.cpu_count()} CPUs; subsampling cap {cap:,} cells")
    on = in_child(run_ours, args, None)
    print_mode(f"subsampling ON (cap {cap:,})", on)
    off = in_child(run_ours, args, args.cells)
    print_mode("subsampling OFF (every cell)", off)

    if args.skip_czbenchmarks:
        print("\ncz-benchmarks comparison: skipped (--skip-czbenchmarks)")
    elif importlib.util.find_spec("czbenchmarks") is None:
        print("\ncz-benchmarks comparison: skipped, the czbenchmarks package is not installed here. cz-benchmarks "
              "0.15.1 conflicts with this project's pins (numcodecs<=0.16.3 vs 0.16.6; hydra-core needs "
              "omegaconf<2.4 vs 2.4.0); run this script from a separate environment that has it.")
    else:
        compare(off, in_child(run_czbenchmarks, args))


if __name__ == "__main__":
    main()
