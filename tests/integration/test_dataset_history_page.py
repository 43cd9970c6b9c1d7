"""The Dataset page lists the user's datasets (versions beneath them) to reopen or delete, in a new session."""

import pytest

from czb_core.service.workspace import Workspace
from tests.helpers.apptest import fresh_manager, page  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("fresh_manager")


def listed(at) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_a_new_session_lists_the_users_datasets_and_reopens_one(small_adata, write_h5ad):
    ws = Workspace()
    first = ws.add_file(write_h5ad(small_adata, "first.h5ad"), owner="local")
    version = ws.add_anndata(small_adata[:100].copy(), "first · symbols mapped", owner="local",
                             parent_sha256=first.sha256, note="symbols mapped to Homo sapiens Ensembl ids")
    ws.add_file(write_h5ad(small_adata[:50].copy(), "theirs.h5ad"), owner="someone-else")
    at = page("dataset")  # a new session: nothing in the URL
    assert not at.exception
    assert [e.label for e in at.expander if e.label.startswith("Your datasets")] == ["Your datasets (2)"]
    text = listed(at)
    assert "**first.h5ad**" in text and f"{small_adata.n_obs:,} cells × {small_adata.n_vars:,} genes" in text
    assert "**↳ first · symbols mapped.h5ad**" in text and "100 cells" in text  # the version beneath it
    assert "theirs" not in text  # another user's dataset
    at.button(key=f"open_{version.id}").click().run()
    assert at.query_params["dataset"] == version.id
    assert {m.label: m.value for m in at.metric}["Cells"] == "100"


def test_delete_asks_once_then_removes_the_dataset(small_adata, write_h5ad):
    ws = Workspace()
    kept = ws.add_file(write_h5ad(small_adata, "kept.h5ad"), owner="local")
    gone = ws.add_file(write_h5ad(small_adata[:80].copy(), "gone.h5ad"), owner="local")
    at = page("dataset", dataset=gone.id)
    at.button(key=f"delete_{gone.id}").click().run()
    assert any("Delete **gone.h5ad**" in w.value for w in at.warning)
    assert {r.sha256 for r in ws.list("local")} == {kept.sha256, gone.sha256}  # nothing removed yet
    at.button(key=f"delete_yes_{gone.id}").click().run()
    assert not at.exception
    assert [r.sha256 for r in ws.list("local")] == [kept.sha256]
    assert "gone.h5ad" not in listed(at) and "dataset" not in at.query_params  # the open one was closed
    with pytest.raises(KeyError):
        ws.get(gone.id, "local")
