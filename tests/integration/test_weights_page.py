"""The Weights page in-process (AppTest on the page file): import a tiny checkpoint folder, see it cached;
a wrong folder is refused on the page; users who are not admins see the table only."""

from __future__ import annotations

import socket
import time

import pytest
from streamlit.testing.v1 import AppTest

from czb_core.models.weights import WeightsCache, tree_sha256
from tests.helpers.apptest import ROOT, TIMEOUT, fresh_manager  # noqa: F401  (fixture)
from tests.helpers.scgpt_files import gene_symbols, write_checkpoint

SCGPT_HUMAN = "s3://cz-benchmarks-data/models/v1/scgpt/human"


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("CZB_DATA_ROOTS", str(root))
    with socket.socket() as sock:  # no S3 answers: the page must work offline
        sock.bind(("127.0.0.1", 0))
        monkeypatch.setenv("CZB_S3_ENDPOINT_URL", f"http://127.0.0.1:{sock.getsockname()[1]}")
    return root


def weights_page(**query) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "weights.py"), default_timeout=TIMEOUT)
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()


def row(at: AppTest, model: str, variant: str, part: str = "model") -> dict:
    table = at.dataframe[0].value
    match = table[(table.model == model) & (table.variant == variant) & (table.part == part)]
    assert len(match) == 1
    return match.iloc[0].to_dict()


def import_from_folder(at: AppTest, folder) -> AppTest:
    at.text_input[0].set_value(str(folder))
    at.run()
    next(b for b in at.button if b.label == "Import").click()
    at.run()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (at.success or at.error):  # the import runs in the background
        time.sleep(0.3)
        at.run()
    return at


def test_import_a_checkpoint_folder_then_the_variant_shows_cached(fresh_manager, data_root):
    folder = write_checkpoint(data_root / "scgpt_human", gene_symbols(30))
    at = weights_page(model="scgpt", variant="human")
    assert not at.exception
    assert row(at, "scgpt", "human")["state"] == "not cached"
    assert row(at, "scgpt", "blood")["state"] == "import only"

    import_from_folder(at, folder)

    assert not at.error and "import complete" in at.success[0].value
    cached = row(at, "scgpt", "human")
    manifest = WeightsCache().manifest(SCGPT_HUMAN)
    assert cached["state"] == "cached" and cached["origin"].startswith(f"imported from {folder} by local")
    assert cached["size"] != "unknown" and manifest["total_bytes"] == sum(
        p.stat().st_size for p in folder.iterdir())
    assert cached["sha256"] == tree_sha256(manifest)


def test_a_wrong_folder_is_refused_on_the_page(fresh_manager, data_root):
    wrong = data_root / "not_weights"
    wrong.mkdir()
    (wrong / "notes.txt").write_text("hello")
    at = weights_page(model="scgpt", variant="human")

    import_from_folder(at, wrong)

    assert at.error and "args.json" in at.error[0].value
    assert row(at, "scgpt", "human")["state"] == "not cached"
    assert not WeightsCache().is_cached(SCGPT_HUMAN)


def test_users_who_are_not_admins_see_the_table_only(fresh_manager, data_root, monkeypatch):
    monkeypatch.setenv("CZB_ADMINS", "boss@lab")
    at = weights_page()
    assert not at.exception and len(at.dataframe) == 1
    assert not [b for b in at.button if b.label in ("Import", "Download now")]
    assert "Only the server's admins" in at.info[0].value
