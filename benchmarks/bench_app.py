"""Issue 3 figures: Run -> UMAP time for the PCA baseline by step, and the Results page's load time and payload.

    python benchmarks/bench_app.py [--run-cells 200000] [--view-cells 100000]

1. Submits the PCA baseline on the generated 200,000 x 20,000 file through the JobManager (as the Run
   page does) and prints the queue wait, each named step's seconds and the total, from the run record.
2. Runs the PCA baseline on a 100,000-cell file, starts `streamlit run`, opens the Results page in
   headless Chromium, and prints the time until the UMAP is drawn on the first load and on a reload
   (the target: under 3 s after the first load), and the bytes the page received over its websocket
   (the target: under 20 MB).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks._common import generated_h5ad  # noqa: E402


def run_job(manager, path: Path):
    record = manager.workspace.add_file(path)
    job = manager.submit(record.id, "pca")
    while not (job := manager.get(job.id)).is_finished:
        time.sleep(0.5)
    if job.status != "done":
        raise RuntimeError(f"job {job.id} {job.status}: {job.error}")
    return record, job


def report_steps(job) -> None:
    from czb_core.service.jobs.artifacts import read_record

    record = read_record(job.artifact_dir)
    created, started, finished = (datetime.fromisoformat(t) for t in (job.created_at, job.started_at, job.finished_at))
    print(f"Run -> UMAP, PCA baseline, {record['input']['n_obs']:,} cells x {record['input']['n_vars']:,} genes:")
    print(f"  queue wait        {(started - created).total_seconds():7.1f} s")
    for step, seconds in record["job"]["step_seconds"].items():
        print(f"  {step:17s} {seconds:7.1f} s")
    print(f"  total             {(finished - created).total_seconds():7.1f} s (peak RSS of the run "
          f"{record['peak_rss_mb']:,.0f} MB)")


def measure_results_page(home: Path, dataset_id: str) -> None:
    from playwright.sync_api import sync_playwright

    from tests.helpers.browser import CHROMIUM_ARGS, free_port, wait_healthy

    port = free_port()
    env = {**os.environ, "CZB_HOME": str(home)}
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, server)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(300_000)
            received = []
            page.on("websocket", lambda ws: ws.on("framereceived", lambda frame: received.append(len(frame))))
            for label in ("first load", "reload"):
                received.clear()
                t0 = time.perf_counter()
                page.goto(f"{url}/results?dataset={dataset_id}")
                page.locator('[data-testid="stPlotlyChart"] .js-plotly-plot .scatterlayer, '
                             '[data-testid="stPlotlyChart"] .js-plotly-plot canvas').first.wait_for()
                drawn = time.perf_counter() - t0
                page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
                print(f"Results page, {label}: UMAP drawn after {drawn:.2f} s, page idle after "
                      f"{time.perf_counter() - t0:.2f} s, {sum(received) / 2**20:.1f} MB received over the websocket")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-cells", type=int, default=200_000)
    parser.add_argument("--run-genes", type=int, default=20_000)
    parser.add_argument("--view-cells", type=int, default=100_000)
    args = parser.parse_args()
    run_path = generated_h5ad(args.run_cells, args.run_genes)
    view_path = generated_h5ad(args.view_cells, 2000)
    with tempfile.TemporaryDirectory(prefix="czb_bench_app_") as tmp:
        os.environ["CZB_HOME"] = tmp
        from czb_core.service.jobs import JobManager

        manager = JobManager()
        _, job = run_job(manager, run_path)
        report_steps(job)
        view_record, view_job = run_job(manager, view_path)
        report_steps(view_job)
        manager.shutdown()
        measure_results_page(Path(tmp), view_record.id)


if __name__ == "__main__":
    main()
