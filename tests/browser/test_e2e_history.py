"""In a real browser: datasets outlive the browser session; a failed job is never shown complete."""

import re
from urllib.parse import parse_qs, urlparse

import pytest

from tests.helpers.browser import app_url, browser, page, wait_idle  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e
RUN_TIMEOUT_MS = 300_000  # a first UMAP may compile numba code


def upload(page, app_url, path) -> str:
    page.goto(app_url)
    page.get_by_text("Source").first.wait_for()
    page.locator('input[type="file"]').set_input_files(str(path))
    page.get_by_role("button", name="Use this file").click()
    page.get_by_text("Suggested label column").wait_for()
    return parse_qs(urlparse(page.url).query)["dataset"][0]


def test_dataset_history_survives_a_browser_restart(browser, app_url, tmp_path, small_adata):
    path = tmp_path / "remembered.h5ad"
    small_adata.write_h5ad(path)
    first = browser.new_context()
    first.set_default_timeout(60_000)
    sha = upload(first.new_page(), app_url, path)
    first.close()  # the browser session, and its Streamlit session, are gone

    second = browser.new_context(viewport={"width": 1400, "height": 1000})
    second.set_default_timeout(60_000)
    try:
        page = second.new_page()
        page.goto(app_url)
        page.get_by_text("Your datasets (1)").wait_for()
        page.get_by_text("remembered.h5ad").first.wait_for()
        assert page.get_by_text(f"{small_adata.n_obs:,} cells × {small_adata.n_vars:,} genes").first.is_visible()
        page.get_by_role("button", name="Open", exact=True).first.click()
        page.get_by_text("Suggested label column").wait_for()
        assert parse_qs(urlparse(page.url).query)["dataset"][0] == sha
        page.get_by_role("link", name="3. Run").click()
        page.get_by_role("button", name="Run", exact=True).wait_for()
        assert not page.get_by_text("Choose a dataset first").count()
    finally:
        second.close()


def test_direct_dataset_url_is_a_page(page, app_url):
    page.goto(f"{app_url}/dataset")
    page.get_by_text("Source").first.wait_for()
    wait_idle(page)
    assert not page.get_by_text("Page not found").count()


def test_a_failed_job_is_never_shown_complete(page, app_url, tmp_path, small_adata):
    path = tmp_path / "two_cells.h5ad"
    small_adata[:2].copy().write_h5ad(path)  # the model runs; the UMAP of two cells fails
    upload(page, app_url, path)
    page.get_by_role("link", name="3. Run").click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_url(re.compile(r"job="))
    panel = page.locator('[data-testid="stMain"] p')
    panel.filter(has_text="failed during umap").first.wait_for(timeout=RUN_TIMEOUT_MS)
    page.get_by_text("a UMAP needs at least 3 cells").wait_for()
    wait_idle(page)  # polling stopped: nothing is active any more
    # the grid redraws its cells after the script has finished: on a loaded machine that can take a moment
    page.locator('[role="gridcell"]', has_text="failed during umap").first.wait_for(state="attached")
    table = page.locator('[role="gridcell"]').all_text_contents()  # the jobs table's cells
    assert "failed" in table and "failed during umap" in table
    shown = " ".join(table) + page.locator('[data-testid="stMain"]').inner_text()
    assert not re.search(r"\d+\s*%", shown)
    assert not page.locator('[data-testid="stProgress"]').count()
