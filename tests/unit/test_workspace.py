"""The workspace: content-addressed datasets, capped streaming uploads, server paths under allowed roots."""

from __future__ import annotations

import io
import os
import shutil
import sqlite3

import pytest

from czb_core.errors import InputError
from czb_core.io.hashing import sha256_file
from czb_core.service.workspace import Workspace


def stored_files(ws: Workspace) -> list:
    return sorted(p for p in ws.datasets_dir.rglob("*") if p.is_file())


def test_same_bytes_are_one_file_and_one_record_per_owner(small_h5ad, tmp_path):
    ws = Workspace()
    copy = tmp_path / "renamed.h5ad"
    shutil.copyfile(small_h5ad, copy)
    first = ws.add_file(small_h5ad, owner="ana")
    again = ws.add_file(copy, owner="ana")
    second = ws.add_file(copy, owner="ben")
    assert first == again and first.name == "small.h5ad" and first.owner == "ana"
    assert second.sha256 == first.sha256 and second.path == first.path and second.owner == "ben"
    assert first.sha256 == sha256_file(small_h5ad) and first.size_bytes == small_h5ad.stat().st_size
    assert stored_files(ws) == [ws.datasets_dir / f"{first.sha256}.h5ad"]
    assert [r.owner for r in ws.list()] == ["ben", "ana"]
    assert [r.name for r in ws.list(owner="ben")] == ["renamed.h5ad"]


def test_upload_is_streamed_to_disk_and_hashed(small_h5ad):
    ws = Workspace()
    record = ws.add_stream(io.BytesIO(small_h5ad.read_bytes()), "upload.h5ad", owner="ana")
    assert record.sha256 == sha256_file(small_h5ad) and record.name == "upload.h5ad"
    assert record.path.read_bytes() == small_h5ad.read_bytes()
    assert ws.add_file(small_h5ad).sha256 == record.sha256 and len(stored_files(ws)) == 1


def test_upload_over_the_cap_is_refused_and_removed(small_h5ad):
    ws = Workspace()
    data = small_h5ad.read_bytes()
    with pytest.raises(InputError, match=r"big.h5ad is larger than the [\d.]+ MB upload cap"):
        ws.add_stream(io.BytesIO(data), "big.h5ad", max_bytes=len(data) - 1)
    assert stored_files(ws) == [] and ws.list() == []


@pytest.mark.parametrize("content", [b"cell,gene\n1,2\n" * 100, "truncated"])
def test_corrupt_upload_is_rejected_and_removed(small_h5ad, content):
    ws = Workspace()
    if content == "truncated":
        content = small_h5ad.read_bytes()[:4096]
    with pytest.raises(InputError, match="mine.h5ad"):
        ws.add_stream(io.BytesIO(content), "../mine.h5ad")
    assert stored_files(ws) == [] and ws.list() == []


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "lab_data"
    root.mkdir()
    monkeypatch.setenv("CZB_DATA_ROOTS", str(root))
    return root


def test_server_path_inside_root_is_registered_in_place(data_root, small_h5ad):
    ws = Workspace()
    src = data_root / "big.h5ad"
    shutil.copyfile(small_h5ad, src)
    record = ws.add_server_path(str(src), owner="ana")
    assert record.path == src.resolve() and record.sha256 == sha256_file(src)
    assert stored_files(ws) == []  # not copied
    assert ws.dataset_path(record.id) == src.resolve()
    with open(src, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(InputError, match="changed since it was added"):
        ws.dataset_path(record.id)


def test_server_paths_outside_the_roots_are_refused(data_root, tmp_path, small_h5ad):
    ws = Workspace()
    outside = tmp_path / "secret.h5ad"
    shutil.copyfile(small_h5ad, outside)
    link = data_root / "link.h5ad"
    os.symlink(outside, link)
    for path in (outside, data_root / ".." / "secret.h5ad", link):
        with pytest.raises(InputError, match="outside the allowed data folders"):
            ws.add_server_path(str(path))
    assert ws.resolve_server_path(str(outside), roots=[tmp_path]) == outside.resolve()
    assert ws.list() == []


def test_server_paths_are_off_without_roots(small_h5ad):
    with pytest.raises(InputError, match="CZB_DATA_ROOTS"):
        Workspace().add_server_path(str(small_h5ad))


def test_fixed_version_keeps_its_parent(small_adata, small_h5ad):
    ws = Workspace()
    original = ws.add_file(small_h5ad)
    fixed = small_adata.copy()
    fixed.var_names = [f"g{i}" for i in range(fixed.n_vars)]
    version = ws.add_anndata(fixed, "small (ensembl)", "ana", original.sha256, "symbols mapped to Ensembl ids")
    assert version.sha256 != original.sha256 and version.name == "small (ensembl).h5ad"
    got = ws.get(version.id)
    assert (got.parent_sha256, got.note) == (original.sha256, "symbols mapped to Ensembl ids")
    assert sha256_file(original.path) == original.sha256  # the original is untouched
    assert [r.sha256 for r in ws.list()] == [version.sha256, original.sha256]  # newest first


def test_unknown_dataset_is_a_clear_key_error():
    with pytest.raises(KeyError, match="dataset abc0000000000000 not found"):
        Workspace().get("abc" + "0" * 13)  # a record id: 16 hex digits


def test_workspace_and_job_store_share_one_sqlite_file(small_h5ad):
    from czb_core.service.jobs import JobStore

    ws = Workspace()
    ws.add_file(small_h5ad)
    store = JobStore(ws.db_path)
    assert store.list() == [] and len(ws.list()) == 1
    assert ws.db_path == ws.root / "czb.sqlite"
    with sqlite3.connect(ws.db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_deleting_a_record_removes_the_file_with_its_last_record(small_h5ad):
    ws = Workspace()
    ana = ws.add_file(small_h5ad, owner="ana")
    ben = ws.add_file(small_h5ad, owner="ben")
    with pytest.raises(KeyError, match="not found"):
        ws.delete_dataset(ana.id, "cleo")
    with pytest.raises(KeyError, match="not found"):
        ws.delete_dataset(ana.id, "ben")  # ben's scope does not reach ana's record of the same bytes
    assert ws.delete_dataset(ana.id, "ana") == ana
    assert stored_files(ws) == [ana.path] and [r.owner for r in ws.list()] == ["ben"]
    ws.delete_dataset(ben.id, "ben")
    assert stored_files(ws) == [] and ws.list() == []
    again = ws.add_file(small_h5ad, owner="ana")  # the same bytes can be added again afterwards
    assert again.path == ana.path and ws.dataset_path(again.id, "ana").is_file()
