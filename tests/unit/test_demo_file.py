"""The demo file is written under a temporary name and renamed into place: two first uses of the demo at once
both succeed, and nobody reads a half-written file under the demo's name."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anndata as ad
import pytest

from czb_core.io.synthetic import write_demo


def test_the_demo_appears_under_its_name_only_when_complete(tmp_path, monkeypatch):
    demo = tmp_path / "demo" / "demo.h5ad"
    written, real_write = [], ad.AnnData.write_h5ad

    def write(adata, filename, **kwargs):
        written.append((Path(filename), demo.exists()))
        real_write(adata, filename, **kwargs)

    monkeypatch.setattr(ad.AnnData, "write_h5ad", write)
    assert write_demo(demo, n_cells=60, n_genes=50) == demo
    ((target, demo_existed),) = written
    assert target.parent == demo.parent and target != demo and not demo_existed
    assert ad.read_h5ad(demo).shape == (60, 50)
    assert list(demo.parent.iterdir()) == [demo]  # the temporary name is gone


def test_two_first_uses_at_once_both_succeed(tmp_path, monkeypatch):
    demo = tmp_path / "demo" / "demo.h5ad"
    both_writing, real_write = threading.Barrier(2, timeout=30), ad.AnnData.write_h5ad

    def write(adata, filename, **kwargs):
        both_writing.wait()  # the two writes overlap
        real_write(adata, filename, **kwargs)

    monkeypatch.setattr(ad.AnnData, "write_h5ad", write)
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: write_demo(demo, n_cells=2000, n_genes=500), range(2)))
    assert paths == [demo, demo]
    assert ad.read_h5ad(demo).shape == (2000, 500)
    assert list(demo.parent.iterdir()) == [demo]


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    demo = tmp_path / "demo" / "demo.h5ad"

    def fail(adata, filename, **kwargs):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", fail)
    with pytest.raises(OSError, match="disk full"):
        write_demo(demo, n_cells=60, n_genes=50)
    assert list(demo.parent.iterdir()) == []
