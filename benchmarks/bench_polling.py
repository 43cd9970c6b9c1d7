"""Issue 12 figure: what open Run pages cost a running job.

    python benchmarks/bench_polling.py [--cells 10000] [--genes 2000] [--pages 5] [--gc config|on|off]

Starts `streamlit run app.py` on a fresh workspace, as the browser tests do, and times the PCA baseline (a
real CPU job: normalise, highly variable genes, PCA, UMAP) from submit to done in the server's worker, first
with no page open, then with `--pages` Run pages following the job in headless Chromium. Prints both wall
times and their ratio (the target: at most 1.2), and the CPU seconds the server process itself spent during
each run: what the pages' polling costs it. A warm-up job runs first, so neither measured run compiles
numba code.

On a lab server the browsers run on the users' machines, not beside the job. Here they cannot, so by
default the browsers get a CPU of their own: the server (and the worker processes it starts) is pinned to
all CPUs but the last, the browsers to the last, in both measured runs alike, so the ratio is what the
pages' requests cost the server and its job (`--no-pin` shares every CPU; the browsers then run at nice 19,
`--browsers-not-niced` lets them compete at full priority). `--gc on|off` sets Streamlit's
`runner.postScriptGC` (a full garbage collection after every script run, fragment reruns included);
`config` leaves it to `.streamlit/config.toml`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks._common import generated_h5ad  # noqa: E402
from tests.helpers.browser import CHROMIUM_ARGS, free_port, wait_healthy  # noqa: E402

IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def start_server(home: Path, gc: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true"]
    if gc != "config":
        command += ["--runner.postScriptGC", "true" if gc == "on" else "false"]
    env = {**os.environ, "CZB_HOME": str(home), "CZB_USER": "bench"}
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=open(home / "streamlit.log", "w"),
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, server)
    return server, url


def timed_job(manager, dataset_id: str, seed: int, browser, url: str, n_pages: int, server: psutil.Process) -> tuple:
    """(wall seconds from submit to done, server CPU seconds meanwhile); each seed is a new run, not a cache hit."""
    cpu_before = sum(server.cpu_times()[:2])
    t0 = time.perf_counter()
    job = manager.submit(dataset_id, "pca", params={"seed": seed}, owner="bench", score=False)
    contexts = []
    for _ in range(n_pages):
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(300_000)
        context.new_page().goto(f"{url}/run?dataset={dataset_id}&job={job.id}", wait_until="commit")
        contexts.append(context)
    while not (job := manager.get(job.id)).is_finished:
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    cpu = sum(server.cpu_times()[:2]) - cpu_before
    for context in contexts:
        context.close()
    if job.status != "done":
        raise RuntimeError(f"job {job.id} {job.status}: {job.error}")
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--pages", type=int, default=5)
    parser.add_argument("--gc", choices=("config", "on", "off"), default="config")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="let the browsers share the server's CPUs instead of having the last CPU to themselves")
    parser.add_argument("--browsers-not-niced", dest="browsers_niced", action="store_false",
                        help="run the browsers at the server's priority (they then compete with the job for CPU)")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    pin = args.pin and len(cpus) >= 2
    data = generated_h5ad(args.cells, args.genes)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="czb_bench_polling_") as tmp:
        home = Path(tmp)
        os.environ["CZB_HOME"] = tmp
        server, url = start_server(home, args.gc)
        if pin:  # the server's workers are started later, by the server: they inherit its CPUs
            psutil.Process(server.pid).cpu_affinity(cpus[:-1])
            os.sched_setaffinity(0, cpus[-1:])  # Chromium, started from here, inherits the last CPU
        if args.browsers_niced:
            # Chromium inherits this: on a lab server the browsers run on the users' machines, not beside the
            # job, so here they only get the CPU the server and its worker leave.
            os.nice(19)
        try:
            from czb_core.service.jobs import JobManager

            manager = JobManager(start_workers=False)  # submits only; the server's worker runs the jobs
            dataset_id = manager.workspace.add_file(data, owner="bench").id
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                first = browser.new_page()
                first.goto(f"{url}/run?dataset={dataset_id}")  # the server's job manager starts with its first page
                first.wait_for_selector(IDLE, timeout=300_000)
                first.close()
                proc = psutil.Process(server.pid)
                timed_job(manager, dataset_id, 0, browser, url, 0, proc)  # same size: compiles what the runs use
                results = {n: timed_job(manager, dataset_id, 1 + i, browser, url, n, proc)
                           for i, n in enumerate((0, args.pages))}
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    (base, base_cpu), (loaded, loaded_cpu) = results[0], results[args.pages]
    where = (f"server on CPU {','.join(map(str, cpus[:-1]))}, browsers on CPU {cpus[-1]}" if pin else
             f"{len(cpus)} CPUs shared, browsers {'at nice 19' if args.browsers_niced else 'at normal priority'}")
    print(f"PCA baseline job, {args.cells:,} cells x {args.genes:,} genes, runner.postScriptGC={args.gc}, {where}:")
    print(f"  0 Run pages open: {base:6.1f} s (server process CPU {base_cpu:5.1f} s)")
    print(f"  {args.pages} Run pages open: {loaded:6.1f} s (server process CPU {loaded_cpu:5.1f} s)")
    print(f"  ratio {loaded / base:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
