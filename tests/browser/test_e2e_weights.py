"""In a real browser: an admin imports a tiny scGPT checkpoint folder on the Weights page (`/weights`).

The app is served with its own data root and a dead S3 endpoint (an offline server). It is app.py once its
navigation lists the Weights page, else a one-page app around the same page file."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from czb_core.models.weights import WeightsCache
from tests.helpers.browser import ROOT, browser, free_port, page, wait_healthy  # noqa: F401  (fixtures)
from tests.helpers.scgpt_files import gene_symbols, write_checkpoint

pytestmark = pytest.mark.e2e
SCGPT_HUMAN = "s3://cz-benchmarks-data/models/v1/scgpt/human"
APP = "app.py" if "pages/weights.py" in (ROOT / "app.py").read_text() else "tests/helpers/weights_app.py"


@pytest.fixture(scope="module")
def offline_server(tmp_path_factory):
    """(url, home, data root) of the app under `streamlit run`, allowed to read only the data root."""
    home, data = tmp_path_factory.mktemp("weights_home"), tmp_path_factory.mktemp("weights_data")
    port = free_port()
    env = {**os.environ, "CZB_HOME": str(home), "CZB_USER": "e2e", "CZB_DATA_ROOTS": str(data),
           "CZB_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    env.pop("CZB_ADMINS", None)
    log = open(home / "streamlit.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", APP, "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url, home, data
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_import_a_checkpoint_folder_on_the_weights_page(page, offline_server):
    url, home, data = offline_server
    folder = write_checkpoint(data / "scgpt_human", gene_symbols(30))
    cache = WeightsCache(root=home / "weights")
    assert not cache.is_cached(SCGPT_HUMAN)

    page.goto(f"{url}/weights?model=scgpt&variant=human")
    page.get_by_text("Model weights").wait_for()
    page.get_by_role("tab", name="Import from a server folder").click()
    field = page.get_by_role("textbox", name="Folder (or .tar.gz) on this server")
    field.fill(str(folder))
    field.press("Enter")
    page.get_by_role("button", name="Import", exact=True).click()
    page.get_by_text("import complete, checksums recorded").wait_for(timeout=120_000)

    assert not page.get_by_text("failed").count()
    manifest = cache.manifest(SCGPT_HUMAN)
    assert manifest is not None and manifest["imported_from"] == str(folder) and manifest["imported_by"] == "e2e"
    assert cache.verify(SCGPT_HUMAN) == []
