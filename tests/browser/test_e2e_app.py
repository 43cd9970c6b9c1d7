"""The app in a real browser: upload, validate, run with progress, UMAP, download; refresh; bad upload."""

import json
import re
from urllib.parse import parse_qs, urlparse

import anndata as ad
import pytest

from czb_core.io.hashing import sha256_file
from tests.helpers.browser import app_url, browser, page, wait_idle  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e
RUN_TIMEOUT_MS = 300_000  # the first UMAP compiles numba code (about a minute on 2 cores)


def open_page(page, url: str, text: str) -> None:
    page.goto(url)
    page.get_by_text(text).first.wait_for()


def upload(page, app_url, path) -> str:
    open_page(page, app_url, "Source")
    page.locator('input[type="file"]').set_input_files(str(path))
    page.get_by_role("button", name="Use this file").click()
    page.get_by_text("Suggested label column").wait_for()
    return parse_qs(urlparse(page.url).query)["dataset"][0]


def test_upload_validate_run_view_and_download(page, app_url, tmp_path, small_adata):
    path = tmp_path / "cells.h5ad"
    small_adata.write_h5ad(path)
    dataset_id = upload(page, app_url, path)
    assert len(dataset_id) == 16 and dataset_id != sha256_file(path)  # the URL names a record, not content
    page.get_by_text("Ensembl ids").first.wait_for()

    page.get_by_role("link", name="2. Validate").click()
    page.get_by_text("PCA baseline: 3 of 3 variants can run").wait_for()
    page.get_by_text("Compatibility matrix: every variant × every check").wait_for(timeout=RUN_TIMEOUT_MS)

    page.get_by_role("link", name="3. Run").click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_url(re.compile(r"job="))
    job_id = parse_qs(urlparse(page.url).query)["job"][0]
    page.get_by_text(f"Job {job_id}").wait_for()
    page.get_by_text("Done.").wait_for(timeout=RUN_TIMEOUT_MS)

    page.get_by_role("link", name="See the results").click()
    page.locator('[data-testid="stPlotlyChart"] .js-plotly-plot').first.wait_for()
    wait_idle(page)
    page.get_by_text("label_key: cell_type").first.wait_for()  # metrics computed with the suggested label
    with page.expect_download() as metrics_download:
        page.get_by_role("button", name="Metrics (JSON)").click()
    metrics = json.loads(open(metrics_download.value.path()).read())
    assert {row["task"] for row in metrics["table"]} >= {"clustering", "embedding", "label_prediction"}
    with page.expect_download() as download:
        page.get_by_role("button", name="Download h5ad").click()
    result = ad.read_h5ad(download.value.path())
    assert result.n_obs == small_adata.n_obs
    assert result.obsm["X_pca"].shape == (small_adata.n_obs, 50)
    assert list(result.obs_names) == list(small_adata.obs_names)
    assert result.uns["czb_run"]["input"]["sha256"] == sha256_file(path)
    assert result.uns["czb_run"]["model"] == "pca"


def test_refresh_during_a_run_finds_the_same_job(page, app_url, tmp_path, small_adata):
    path = tmp_path / "cells2.h5ad"
    small_adata[:300].copy().write_h5ad(path)
    upload(page, app_url, path)
    page.get_by_role("link", name="3. Run").click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_url(re.compile(r"job="))
    job_id = parse_qs(urlparse(page.url).query)["job"][0]
    page.reload()
    page.get_by_text(f"Job {job_id}").wait_for()
    assert f"job={job_id}" in page.url
    page.get_by_text("Done.").wait_for(timeout=RUN_TIMEOUT_MS)


def test_a_file_that_is_not_h5ad_gets_a_clear_error(page, app_url, tmp_path):
    bad = tmp_path / "table.h5ad"
    bad.write_text("cell,TP53\nc1,3\n")
    open_page(page, app_url, "Source")
    page.locator('input[type="file"]').set_input_files(str(bad))
    page.get_by_role("button", name="Use this file").click()
    page.get_by_text("not an HDF5 file").wait_for()
    assert "dataset=" not in page.url
