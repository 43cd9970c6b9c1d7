"""Issue 11 figures: the Results page under load, ten browsers at once while a CPU job runs.

    python benchmarks/bench_load.py [--cells 100000] [--sessions 10] [--timeout 300]

1. Runs the PCA baseline on a generated 100,000-cell file through the JobManager (a finished run with its
   UMAP in a fresh workspace).
2. Starts the app as `make serve` does (headless, no error details) on a loopback port, opens the Results
   page once (the server's first load: job manager, worker process, imports), then queues a second PCA
   run with other parameters and waits until the server's CPU worker runs it.
3. Opens the Results page of the finished run in `--sessions` headless Chromium sessions at once and
   prints the median and 95th-percentile time until the UMAP is drawn, the number of sessions that
   failed (timed out, or showed an error), and whether the CPU job was still running at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks._common import generated_h5ad  # noqa: E402
from tests.helpers.browser import CHROMIUM_ARGS, free_port, wait_healthy  # noqa: E402

UMAP_DRAWN = ('[data-testid="stPlotlyChart"] .js-plotly-plot .scatterlayer, '
              '[data-testid="stPlotlyChart"] .js-plotly-plot canvas')
ERROR_SHOWN = '[data-testid="stException"], [data-testid="stAlertContentError"]'
SERVE_FLAGS = ["--server.headless", "true", "--server.fileWatcherType", "none", "--browser.gatherUsageStats",
               "false", "--client.showErrorDetails", "none", "--server.enableXsrfProtection", "true"]


def finished_run(path: Path) -> str:
    """The dataset record id of a done PCA run on `path`, made in this process's workspace."""
    from czb_core.service.jobs import JobManager

    manager = JobManager()
    try:
        dataset_id = manager.workspace.add_file(path).id
        job = manager.submit(dataset_id, "pca", score=False)
        while not (job := manager.get(job.id)).is_finished:
            time.sleep(1)
        if job.status != "done":
            raise RuntimeError(f"the PCA run failed: {job.error}")
        return dataset_id
    finally:
        manager.shutdown()


def queue_cpu_job(dataset_id: str):
    """A second PCA run (other parameters: no cache hit) for the server's CPU worker; returns it once running."""
    from czb_core.service.jobs import JobManager

    submitter = JobManager(start_workers=False)  # only writes the job; the server's worker claims it
    job = submitter.submit(dataset_id, "pca", params={"n_comps": 30, "n_top_genes": 1500}, score=False)
    deadline = time.monotonic() + 300
    while (job := submitter.get(job.id)).status == "queued":
        if time.monotonic() > deadline:
            logs = sorted((submitter.workspace.root / "logs").glob("*.log"))
            tail = "".join(path.read_text()[-1500:] for path in logs)
            raise RuntimeError(f"the server's CPU worker did not take the job within 300 s; worker log:\n{tail}")
        time.sleep(0.5)
    return submitter, job


async def open_results(browser, url: str, timeout_s: float) -> tuple[float | None, str | None]:
    """(seconds until the UMAP is drawn, None) or (None, what went wrong) for one new browser session."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = await context.new_page()
        t0 = time.perf_counter()
        await page.goto(url, timeout=timeout_s * 1000)
        drawn = page.locator(UMAP_DRAWN).first.wait_for(timeout=timeout_s * 1000)
        error = page.locator(ERROR_SHOWN).first.wait_for(timeout=timeout_s * 1000)
        done, pending = await asyncio.wait([asyncio.ensure_future(drawn), asyncio.ensure_future(error)],
                                           return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        seconds = time.perf_counter() - t0
        if await page.locator(ERROR_SHOWN).count():
            return None, (await page.locator(ERROR_SHOWN).first.inner_text())[:200]
        exc = next(iter(done)).exception()
        return (None, f"{type(exc).__name__}: {str(exc)[:200]}") if exc else (seconds, None)
    except Exception as exc:  # a timeout or a crashed page is one failed session, not the benchmark's end
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        await context.close()


async def load(url: str, sessions: int, timeout_s: float) -> list[tuple[float | None, str | None]]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            return await asyncio.gather(*(open_results(browser, url, timeout_s) for _ in range(sessions)))
        finally:
            await browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one session may take")
    args = parser.parse_args()
    path = generated_h5ad(args.cells, 2000)
    with tempfile.TemporaryDirectory(prefix="czb_bench_load_") as tmp:
        os.environ["CZB_HOME"] = tmp
        t0 = time.perf_counter()
        dataset_id = finished_run(path)
        print(f"finished PCA run on {args.cells:,} cells in {time.perf_counter() - t0:.0f} s")
        port = free_port()
        with open(Path(tmp) / "streamlit.log", "w") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", "app.py", "--server.address", "127.0.0.1",
                 "--server.port", str(port), *SERVE_FLAGS],
                cwd=ROOT, env={**os.environ, "CZB_HOME": tmp}, stdout=log, stderr=subprocess.STDOUT)
            url = f"http://127.0.0.1:{port}/results?dataset={dataset_id}"
            try:
                wait_healthy(f"http://127.0.0.1:{port}", server)
                ((first, problem),) = asyncio.run(load(url, 1, args.timeout))
                print(f"first load of the Results page (server start-up): "
                      f"{f'{first:.1f} s' if problem is None else problem}")
                submitter, job = queue_cpu_job(dataset_id)
                print(f"CPU job {job.id} running on the server's worker")
                results = asyncio.run(load(url, args.sessions, args.timeout))
                still = submitter.get(job.id).status
            finally:
                server.terminate()
                server.wait(timeout=60)
    times = [s for s, _ in results if s is not None]
    errors = [e for _, e in results if e is not None]
    print(f"{args.sessions} simultaneous sessions, Results page of a {args.cells:,}-cell run, CPU job {still} "
          f"at the end:")
    if times:
        print(f"  time to the drawn UMAP: median {np.median(times):.1f} s, 95th percentile "
              f"{np.percentile(times, 95):.1f} s (fastest {min(times):.1f} s, slowest {max(times):.1f} s)")
    print(f"  session errors: {len(errors)}")
    for error in errors:
        print(f"    {error}")


if __name__ == "__main__":
    main()
