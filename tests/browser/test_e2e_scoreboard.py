"""The Results page's scoreboard in a real browser: two PCA runs (the default, which is the baseline, and
10 components), one row each with the delta to the baseline, and the reproduce script named by run."""

from urllib.parse import parse_qs, urlparse

import pytest

from tests.browser.test_e2e_app import RUN_TIMEOUT_MS, upload
from tests.helpers.browser import app_url, browser, page, wait_idle  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e


def run_and_wait(page) -> str:
    """Press Run on the Run page and wait until the job and its scoring are done; returns the job id."""
    before = parse_qs(urlparse(page.url).query).get("job", [None])[0]
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_url(lambda url: parse_qs(urlparse(url).query).get("job", [None])[0] not in (None, before))
    job_id = parse_qs(urlparse(page.url).query)["job"][0]
    page.get_by_text(f"Job {job_id}").wait_for()
    page.get_by_text("Done.").wait_for(timeout=RUN_TIMEOUT_MS)
    return job_id


def grid_rows(page, index: int) -> list[dict[str, str]]:
    """The rows of a dataframe as {column: cell text}. Streamlit draws the cells on a canvas, with an
    accessible table of the raw values behind it, which is what this reads."""
    grid = page.locator('[data-testid="stDataFrame"]').nth(index)
    grid.wait_for()
    rows = [[cell.inner_text() for cell in tr.locator("td, th").all()] for tr in grid.locator("table tr").all()]
    header = rows[0]
    return [dict(zip(header, row)) for row in rows[1:]]


def test_scoreboard_shows_one_row_per_run_with_the_baseline_delta(page, app_url, tmp_path, small_adata):
    path = tmp_path / "board.h5ad"
    small_adata.write_h5ad(path)
    upload(page, app_url, path)
    page.get_by_role("link", name="3. Run").click()
    default_job = run_and_wait(page)
    page.get_by_role("spinbutton", name="Components").fill("10")
    page.get_by_role("spinbutton", name="Components").press("Enter")
    wait_idle(page)
    ten_job = run_and_wait(page)
    assert ten_job != default_job

    page.get_by_role("link", name="See the results").click()
    page.get_by_text("Scoreboard", exact=True).wait_for()
    wait_idle(page)
    rows = grid_rows(page, 0)
    assert len(rows) == 2, rows  # one row per run; the default PCA run is the baseline, not a third row
    by_run = {next(iter(row.values())): row for row in rows}  # the first cell: the run label (index)
    default = next(row for run, row in by_run.items() if run.endswith(default_job[:6]))
    ten = next(row for run, row in by_run.items() if "n_comps=10" in run)
    assert (default["Embedding size"], ten["Embedding size"]) == ("50", "10")
    assert float(default["Δ Silhouette"]) == 0  # the baseline against itself
    assert float(ten["Δ Silhouette"]) == pytest.approx(float(ten["Silhouette"]) - float(default["Silhouette"]),
                                                       abs=1e-3)
    page.get_by_text("is the PCA baseline itself").wait_for()

    script = page.locator('[data-testid="stCode"]').filter(has_text="czb run").inner_text()
    assert "sha256sum --check" in script and "board__pca-default__" in script
