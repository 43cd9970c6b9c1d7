"""The Validate page in a real browser: it fits a few screens, and a fix applies from its button.

The height is a layout check (how much a user must scroll to read the verdicts), measured at 1280x800 on
the demo dataset and on a mouse dataset named by gene symbols (every Ensembl-keyed model blocked); the
page was about 6,000 px tall when each variant had its own open section and repeated its problems.
"""

from urllib.parse import parse_qs, urlparse

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from czb_core.schema.gene_references import gene_table
from czb_core.types import Organism
from tests.helpers.browser import app_url, browser, wait_idle  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e
MAX_HEIGHT_PX = 2_500
SPINNER = '[data-testid="stSpinner"]'


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(120_000)
    yield page
    context.close()


@pytest.fixture
def mouse_symbols_h5ad(tmp_path):
    table = gene_table(Organism.MOUSE)
    table = table[(table["biotype"] == "protein_coding") & (table["gene_name"] != "")]
    symbols = table["gene_name"].drop_duplicates().sample(1500, random_state=2).to_numpy()
    rng = np.random.default_rng(2)
    x = sp.random(300, len(symbols), density=0.1, format="csr", random_state=2, dtype=np.float32)
    x.data = rng.integers(1, 20, size=x.nnz).astype(np.float32)
    obs = pd.DataFrame({"cell_type": rng.choice(["AT1", "AT2", "club"], 300),
                        "donor": rng.choice(["d1", "d2"], 300)}, index=[f"c{i}" for i in range(300)])
    path = tmp_path / "mouse_symbols.h5ad"
    ad.AnnData(x, obs=obs, var=pd.DataFrame(index=symbols)).write_h5ad(path)
    return path


def dataset_in_url(page) -> str:
    return parse_qs(urlparse(page.url).query)["dataset"][0]


def open_validate(page) -> None:
    page.get_by_role("link", name="2. Validate").click()
    page.get_by_text("PCA baseline: 3 of 3 variants can run").wait_for()
    wait_idle(page)


def page_height(page) -> float:
    """Height of the page's content: the main block, which scrolls inside Streamlit's fixed app frame."""
    return page.evaluate(
        "() => document.querySelector('[data-testid=\"stMainBlockContainer\"]').getBoundingClientRect().height")


def test_the_demo_dataset_validates_in_a_few_screens(page, app_url):
    page.goto(app_url)
    page.get_by_text("Demo dataset").click()
    page.get_by_role("button", name="Use the demo dataset").click()
    page.get_by_text("Suggested label column").wait_for()
    open_validate(page)
    for first in ("Genes: Ensembl ids, human", "PCA baseline: 3 of 3 variants can run",
                  "scVI: 1 of 7 variants can run"):  # species, id system and verdicts on the first screen
        box = page.get_by_text(first).first.bounding_box()
        assert box is not None and box["y"] + box["height"] < 800, first
    height = page_height(page)
    print(f"Validate page height, demo dataset at 1280x800: {height:.0f} px")
    assert height < MAX_HEIGHT_PX


def test_a_fix_applies_from_its_button_and_the_stale_report_is_not_shown(page, app_url, mouse_symbols_h5ad):
    page.goto(app_url)
    page.locator('input[type="file"]').set_input_files(str(mouse_symbols_h5ad))
    page.get_by_role("button", name="Use this file").click()
    page.get_by_text("Suggested label column").wait_for()
    original = dataset_in_url(page)
    open_validate(page)
    assert page.get_by_text("needs Ensembl gene ids").count() == 1  # one item for every model that needs ids
    height = page_height(page)
    print(f"Validate page height, mouse symbols at 1280x800: {height:.0f} px")
    assert height < MAX_HEIGHT_PX

    page.get_by_role("button", name="Map symbols to mus_musculus Ensembl ids").first.click()
    # The new version is being validated (its spinner) or already is: either way the old report is gone. The
    # spinner can come and go between two polls of the browser, so it is not waited for alone.
    checking = page.locator(SPINNER).filter(has_text="Checking every model")
    checking.or_(page.get_by_text("New version created")).first.wait_for()
    assert page.get_by_text("needs Ensembl gene ids").count() == 0
    assert page.get_by_text("Applies to").count() == 0
    page.get_by_text("New version created").wait_for()
    wait_idle(page)
    assert dataset_in_url(page) != original
    assert "symbols mapped" in page.get_by_text("Dataset:").first.inner_text()
    assert page.get_by_text("Genes: Ensembl ids").first.is_visible()
    assert page.get_by_text("needs Ensembl gene ids").count() == 0
