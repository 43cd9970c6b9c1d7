"""Issue 12 figure: the first job of a fresh server, before and after `czb warmup`.

    python benchmarks/bench_first_run.py [--score]

Each figure comes from a new Python process that does what the server does on its first job: make the
job manager (with its worker process), add the demo dataset (3,000 cells), submit the PCA baseline and
wait until it is done (with `--score`, until its metrics are too). "cold": numba's disk cache is empty (a
new `NUMBA_CACHE_DIR`), so the worker compiles the UMAP code; "warm": the same, after `czb warmup` filled
that cache. Prints seconds from submit to done, from process start to done, and the job's seconds per
step (the target: warm under 20 s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FIRST_JOB = """
import json, sys, time
started = time.perf_counter()
from czb_core.io.synthetic import write_demo
from czb_core.service.jobs import JobManager
from czb_core.service.jobs.artifacts import read_record

manager = JobManager()
record = manager.workspace.add_file(write_demo({demo!r}))
submitted = time.perf_counter()
job = manager.submit(record.id, "pca", score={score})
while not (job := manager.get(job.id)).is_finished or (
        {score} and any(s.status in ("queued", "running") for s in manager.scores(job.id))):
    time.sleep(0.2)
done = time.perf_counter()
manager.shutdown()
if job.status != "done":
    sys.exit(f"job {{job.status}}: {{job.error}}")
print(json.dumps({{"submit_to_done_s": done - submitted, "process_to_done_s": done - started,
                   "steps": read_record(job.artifact_dir)["job"]["step_seconds"]}}))
"""


def first_job(numba_cache: Path, score: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="czb_first_run_") as home:
        env = {**os.environ, "CZB_HOME": home, "NUMBA_CACHE_DIR": str(numba_cache)}
        code = FIRST_JOB.format(demo=str(Path(home) / "demo.h5ad"), score=score)
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def warm_up(numba_cache: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "czb_core", "warmup"], cwd=ROOT, check=True, capture_output=True,
                   env={**os.environ, "NUMBA_CACHE_DIR": str(numba_cache)})
    return time.perf_counter() - t0


def show(label: str, figures: dict) -> None:
    steps = ", ".join(f"{step} {seconds:.1f}" for step, seconds in figures["steps"].items())
    print(f"  {label}: {figures['submit_to_done_s']:5.1f} s from submit to done "
          f"({figures['process_to_done_s']:5.1f} s from process start); steps (s): {steps}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--score", action="store_true", help="wait for the metrics too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="czb_numba_cache_") as cache:
        cache = Path(cache)
        cold = first_job(cache / "cold", args.score)
        warmup_s = warm_up(cache / "warm")
        warm = first_job(cache / "warm", args.score)
    print(f"First job of a fresh server: PCA baseline on the demo (3,000 cells)"
          f"{' with scoring' if args.score else ''}, {os.cpu_count()} CPUs:")
    show("cold (empty numba cache)", cold)
    print(f"  `czb warmup` on an empty cache: {warmup_s:.1f} s")
    show("warm (after czb warmup) ", warm)
    print("  target: warm under 20 s from submit to done")


if __name__ == "__main__":
    main()
