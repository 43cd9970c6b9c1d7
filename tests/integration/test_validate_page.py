"""The Validate page under AppTest: one line per model, each problem once, fixes that apply themselves."""

import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from czb_core.io.header import header_from_anndata
from czb_core.models.compatibility import compatibility_matrix
from czb_core.schema.gene_references import gene_table
from czb_core.service.workspace import Workspace
from czb_core.types import Organism
from tests.helpers.apptest import fresh_manager, page  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("fresh_manager")
RUN_TIMEOUT = 120  # a rerun re-validates every model variant; the shared test machine can be slow
FIX_WAIT_S = 90


@pytest.fixture(scope="module")
def mouse_symbols() -> ad.AnnData:
    """Mouse raw counts named by gene symbols, as many exports are: every Ensembl-keyed model is blocked."""
    table = gene_table(Organism.MOUSE)
    table = table[(table["biotype"] == "protein_coding") & (table["gene_name"] != "")]
    symbols = table["gene_name"].drop_duplicates().sample(800, random_state=1).to_numpy()
    rng = np.random.default_rng(1)
    x = sp.random(150, len(symbols), density=0.1, format="csr", random_state=1, dtype=np.float32)
    x.data = rng.integers(1, 20, size=x.nnz).astype(np.float32)
    obs = pd.DataFrame({"cell_type": rng.choice(["AT1", "AT2", "club"], 150)}, index=[f"c{i}" for i in range(150)])
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=symbols))


@pytest.fixture(scope="module", autouse=True)
def read_gene_tables_once(small_adata, mouse_symbols):
    """Validate both datasets once outside the app: the gene tables and model registry that every check
    reads are loaded once per process, so each page run below only validates (within AppTest's timeout)."""
    for adata in (small_adata, mouse_symbols):
        compatibility_matrix(header_from_anndata(adata))


READY, BLOCKED = ":material/check_circle:", ":material/block:"


def model_lines(at) -> dict[str, str]:
    """Each model's line and its status icon (the other expanders have none)."""
    return {e.label: e.icon for e in at.expander if e.icon}


def dataset_in_url(at) -> str:
    value = at.query_params["dataset"]
    return value if isinstance(value, str) else value[-1]


def button(at, label: str):
    (found,) = [b for b in at.button if b.label == label]
    return found


def test_one_line_per_model_collapsed_and_each_problem_once(small_h5ad):
    record = Workspace().add_file(small_h5ad)
    at = page("validate", dataset=record.id)
    assert not at.exception
    lines = model_lines(at)
    assert lines["scVI: 1 of 7 variants can run"] == READY and lines["PCA baseline: 3 of 3 variants can run"] == READY
    assert len(lines) == 7 and sum("scVI" in line for line in lines) == 1  # one line per model, not per variant
    assert lines["scGenePT: 0 of 14 variants can run"] == BLOCKED
    assert not any(e.proto.expanded for e in at.expander)  # blocked models start collapsed too
    dataset_id = [e.value for e in at.error if "lacks 'dataset_id'" in e.value]
    assert len(dataset_id) == 1 and "6 of 7 variants" in dataset_id[0]
    assert "lacks 'suspension_type'" in dataset_id[0]  # the other missing Census column: the same item
    weights = [e.value for e in at.error if "no weights to download" in e.value]
    assert len(weights) == 1 and "7 of 8 variants" in weights[0]  # seven scGPT variants: one item
    assert sum(b.label == "Use it for scVI runs" for b in at.button) == 1  # one batch choice for all of them


def test_a_batch_column_is_stored_for_the_run_page_and_revalidated(small_h5ad):
    record = Workspace().add_file(small_h5ad)
    at = page("validate", dataset=record.id)
    (choice,) = [s for s in at.selectbox if s.label == "Batch column for scVI runs"]
    assert choice.value == "batch"  # the detected batch column comes pre-filled
    button(at, "Use it for scVI runs").click().run(timeout=RUN_TIMEOUT)
    assert not at.exception
    assert at.session_state["run_params:scvi"] == {"batch_key": "batch"}
    assert model_lines(at)["scVI: 4 of 7 variants can run"] == READY  # the human Census variants now pass
    assert not any("lacks 'dataset_id'" in e.value for e in at.error)
    assert any("`batch_key` = batch" in i.value for i in at.info)
    button(at, "Clear").click().run(timeout=RUN_TIMEOUT)
    assert "run_params:scvi" not in at.session_state
    assert "scVI: 1 of 7 variants can run" in model_lines(at)


def test_a_fix_button_creates_a_version_and_the_page_revalidates_it(mouse_symbols, write_h5ad):
    original = Workspace().add_file(write_h5ad(mouse_symbols, "mouse_symbols.h5ad"))
    at = page("validate", dataset=original.id)
    ids = [e.value for e in at.error if "needs Ensembl gene ids" in e.value]
    assert len(ids) == 1 and "Applies to:" in ids[0]
    fix = [b for b in at.button if b.label == "Map symbols to mus_musculus Ensembl ids" and b.key.startswith("p")]
    assert len(fix) == 1  # in the problem's item (the "Other changes" expander has its own)
    fix[0].click().run(timeout=RUN_TIMEOUT)
    deadline = time.monotonic() + FIX_WAIT_S
    while dataset_in_url(at) == original.id and time.monotonic() < deadline:
        time.sleep(1)
        at.run(timeout=RUN_TIMEOUT)  # the fix panel polls the background fix on each run
    assert not at.exception
    version_id = dataset_in_url(at)
    assert version_id != original.id
    version = Workspace().get(version_id, original.owner)  # the user's own new record
    assert version.sha256 != original.sha256
    assert version.parent_sha256 == original.sha256 and "symbols mapped" in version.name
    assert not any("needs Ensembl gene ids" in e.value for e in at.error)  # re-validated: ids now
    assert any(m.value.startswith("**Genes:** Ensembl ids") for m in at.markdown)
    assert any(s.value.startswith("New version created") for s in at.success)
