"""Time the whole metric suite against cz-benchmarks 0.15.1 on the same embedding, and compare the values.

    .venv/bin/python benchmarks/bench_scoring.py                  # 12,000 cells x 50 dims, 8 labels, 8 batches
    .venv/bin/python benchmarks/bench_scoring.py --rounds 2       # alternate the two sides twice (noisy machines)
    CZB_CZBENCH_PYTHON=/path/to/python benchmarks/bench_scoring.py

The suite is what cz-benchmarks scores for a model beside its baseline: clustering, embedding, label
prediction and batch integration, on every cell (no subsampling); the baseline's own metrics are left
out on both sides. Each side runs in a fresh interpreter with an empty numba cache directory (cold:
nothing compiled or cached by an earlier run) and reports the import time and the suite time apart.

cz-benchmarks 0.15.1 cannot live in this project's environment (its pins conflict with ours), so it
runs from its own virtual environment: `python3 -m venv /tmp/czbvenv && /tmp/czbvenv/bin/pip install
cz-benchmarks==0.15.1 pynndescent==0.6.0` (the PyPI name has a dash; `czbenchmarks` is not on PyPI;
pynndescent 0.7 returns a sparse array that scanpy 1.11's `sc.pp.neighbors` cannot read, so its
clustering task fails without the pin, the same pynndescent our environment has). Its task classes
are called as its Python API documents: `Task(random_seed=42).run(embedding, TaskInput(...))` with
obs columns as pandas Series. The embedding and obs travel as .npy files.

Printed: both suite times and their ratio, per-task times, and for every metric both sides report the
largest absolute difference. Values can differ where cz-benchmarks approximates: its neighbours come
from pynndescent (clustering) and hnswlib (entropy_per_cell), ours from the exact search, and its
silhouettes are computed in float32 by JAX, ours in float64 by sklearn.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CZBENCH_PYTHON = os.environ.get("CZB_CZBENCH_PYTHON", "/tmp/czbvenv/bin/python")
TASKS = ("clustering", "embedding", "label_prediction", "batch_integration")


def make_embedding(n_cells: int, dims: int, n_labels: int, n_batches: int, seed: int):
    """Label clouds of unequal size and spread, a per-batch shift, and batches whose label mix differs,
    so that no metric sits at 0 or 1. Returns (emb_nd float32, labels_n, batches_n) as numpy arrays."""
    rng = np.random.default_rng(seed)
    shares_l = rng.dirichlet(np.full(n_labels, 3.0))
    labels_n = rng.choice(n_labels, size=n_cells, p=shares_l)
    batch_pref_lb = rng.dirichlet(np.full(n_batches, 1.5), size=n_labels)
    batches_n = np.array([rng.choice(n_batches, p=batch_pref_lb[label]) for label in labels_n])
    centers_ld = rng.normal(scale=0.45, size=(n_labels, dims))
    spread_l = rng.uniform(0.8, 1.3, size=n_labels)
    shifts_bd = rng.normal(scale=0.3, size=(n_batches, dims))
    noise_nd = rng.normal(size=(n_cells, dims)) * spread_l[labels_n, None]
    emb_nd = centers_ld[labels_n] + shifts_bd[batches_n] + noise_nd
    labels = np.array([f"type_{i}" for i in labels_n], dtype=object)
    batches = np.array([f"batch_{b}" for b in batches_n], dtype=object)
    return emb_nd.astype(np.float32), labels, batches


OURS = """
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
import numpy as np, pandas as pd
from czb_core.tasks import run_tasks
t1 = time.perf_counter()
emb_nd = np.load({emb!r})
obs = pd.DataFrame({{"cell_type": np.load({labels!r}, allow_pickle=True),
                    "batch": np.load({batches!r}, allow_pickle=True)}})
t2 = time.perf_counter()
results = run_tasks(emb_nd, obs, "cell_type", batch_key="batch", tasks={tasks!r}, seed=42, max_cells=len(obs))
t3 = time.perf_counter()
print(json.dumps({{
    "import_s": t1 - t0, "suite_s": t3 - t2,
    "task_s": {{r.task_name: r.runtime_metrics["wall_s"] for r in results}},
    "metrics": [[r.task_name, m.metric_type, m.params, m.value] for r in results for m in r.metrics],
}}))
"""

THEIRS = """
import json, logging, time
t0 = time.perf_counter()
import numpy as np, pandas as pd
from czbenchmarks.tasks import (
    BatchIntegrationTask, BatchIntegrationTaskInput, ClusteringTask, ClusteringTaskInput, EmbeddingTask,
    EmbeddingTaskInput, MetadataLabelPredictionTask, MetadataLabelPredictionTaskInput,
)
from importlib.metadata import version
t1 = time.perf_counter()
logging.disable(logging.WARNING)
emb_nd = np.load({emb!r})
obs = pd.DataFrame({{"cell_type": np.load({labels!r}, allow_pickle=True),
                    "batch": np.load({batches!r}, allow_pickle=True)}})
obs.index = obs.index.astype(str)
labels = obs["cell_type"]
runs = {{
    "clustering": (ClusteringTask(random_seed=42), ClusteringTaskInput(obs=obs, input_labels=labels)),
    "embedding": (EmbeddingTask(random_seed=42), EmbeddingTaskInput(input_labels=labels)),
    "label_prediction": (MetadataLabelPredictionTask(random_seed=42), MetadataLabelPredictionTaskInput(labels=labels)),
    "batch_integration": (BatchIntegrationTask(random_seed=42),
                          BatchIntegrationTaskInput(batch_labels=obs["batch"], labels=labels)),
}}
t2 = time.perf_counter()
task_s, metrics = {{}}, []
for name, (task, task_input) in runs.items():
    start = time.perf_counter()
    for m in task.run(emb_nd, task_input):
        metrics.append([name, m.metric_type.value, m.params or {{}}, float(m.value)])
    task_s[name] = time.perf_counter() - start
t3 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "suite_s": t3 - t2, "task_s": task_s, "metrics": metrics,
                  "version": version("cz-benchmarks")}}))
"""


def run_child(python: str, code: str, numba_cache: Path) -> dict:
    """Run `code` in a fresh interpreter with an empty numba cache; it prints one JSON line last."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(numba_cache), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{python} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def metric_table(run: dict) -> dict:
    return {(task, kind, json.dumps(params, sort_keys=True)): value for task, kind, params, value in run["metrics"]}


def report(ours: list[dict], theirs: list[dict]) -> None:
    our_s, their_s = min(r["suite_s"] for r in ours), min(r["suite_s"] for r in theirs)
    print(f"\nsuite time (best of {len(ours)}): czb_core {our_s:.1f} s, cz-benchmarks {their_s:.1f} s, "
          f"ratio {their_s / our_s:.2f}x")
    print(f"imports: czb_core {min(r['import_s'] for r in ours):.1f} s, "
          f"cz-benchmarks {min(r['import_s'] for r in theirs):.1f} s")
    print(f"  {'task':<18} {'czb_core':>9} {'cz-bench':>9}")
    for task in TASKS:
        print(f"  {task:<18} {min(r['task_s'][task] for r in ours):8.1f}s "
              f"{min(r['task_s'][task] for r in theirs):8.1f}s")
    mine, other = metric_table(ours[0]), metric_table(theirs[0])
    shared = [key for key in other if key in mine]
    print(f"\n{len(shared)} shared metrics (czb_core adds {len(mine) - len(shared)} of its own, e.g. MCC)")
    diffs = {key: abs(mine[key] - other[key]) for key in shared}
    for key in shared:
        task, kind, params = key
        label = f"{kind} {json.loads(params).get('classifier', '')}".strip()
        print(f"  {task:<18} {label:<40} ours {mine[key]:.12f}  cz-bench {other[key]:.12f}  |diff| {diffs[key]:.2e}")
    worst = max(diffs, key=diffs.get)
    print(f"largest |difference| {diffs[worst]:.3e} ({worst[0]} / {worst[1]}); "
          f"{sum(d <= 1e-9 for d in diffs.values())} of {len(diffs)} within 1e-9")
    unstable = [k for k in mine if any(metric_table(r)[k] != mine[k] for r in ours[1:])]
    if unstable:
        print(f"czb_core values that changed between rounds: {unstable}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=12_000)
    parser.add_argument("--dims", type=int, default=50)
    parser.add_argument("--labels", type=int, default=8)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1, help="run each side this many times, alternating")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="czb-bench-scoring-") as tmp:
        tmp = Path(tmp)
        emb_nd, labels, batches = make_embedding(args.cells, args.dims, args.labels, args.batches, args.seed)
        files = {"emb": tmp / "emb.npy", "labels": tmp / "labels.npy", "batches": tmp / "batches.npy"}
        for (name, path), array in zip(files.items(), (emb_nd, labels, batches)):
            np.save(path, array, allow_pickle=True)
        paths = {name: str(path) for name, path in files.items()}
        print(f"{args.cells:,} cells x {args.dims} dims, {args.labels} labels, {args.batches} batches; "
              f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
        have_theirs = Path(CZBENCH_PYTHON).exists()
        ours, theirs = [], []
        for round_ in range(args.rounds):
            ours.append(run_child(sys.executable, OURS.format(root=str(ROOT), tasks=TASKS, **paths),
                                  tmp / f"numba-ours-{round_}"))
            print(f"round {round_ + 1}: czb_core suite {ours[-1]['suite_s']:.1f} s", flush=True)
            if have_theirs:
                theirs.append(run_child(CZBENCH_PYTHON, THEIRS.format(**paths), tmp / f"numba-theirs-{round_}"))
                print(f"round {round_ + 1}: cz-benchmarks {theirs[-1]['version']} suite {theirs[-1]['suite_s']:.1f} s "
                      f"(load average {os.getloadavg()[0]:.1f})", flush=True)
        if not have_theirs:
            print(f"\nczb_core suite {min(r['suite_s'] for r in ours):.1f} s; no cz-benchmarks interpreter at "
                  f"{CZBENCH_PYTHON} (set CZB_CZBENCH_PYTHON), so no comparison")
            return
        report(ours, theirs)


if __name__ == "__main__":
    main()
