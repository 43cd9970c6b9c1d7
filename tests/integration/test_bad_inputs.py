"""A corpus of bad inputs: each is refused with a message naming the problem (and the fix), and loses nothing.

Every refusal is checked against a snapshot of the workspace taken before it: the records, the stored
files with their bytes, the jobs, and no partial file left under `datasets/`. The few inputs that look
bad but are not (a path with spaces and accents, CellRanger 2's layout, a file of anndata < 0.7, two
genes) must work.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from czb_core import cli
from czb_core.errors import ConfigError, InputError
from czb_core.io.header import read_header
from czb_core.service.jobs import JobManager
from czb_core.service.jobs import execution as execution_module
from czb_core.service.workspace import Workspace
from tests.helpers.bad_inputs import write_10x_v2, write_claimed_cells, write_gzip_bomb, write_old_anndata
from tests.integration.test_jobs import fake_result, wait_for

# -- the workspace before and after ------------------------------------------------------------------


@pytest.fixture
def workspace():
    return Workspace()


@pytest.fixture
def stored(workspace, small_h5ad):
    """A dataset stored before the bad input arrives: it must come through untouched."""
    return workspace.add_file(small_h5ad, name="kept.h5ad")


def snapshot(workspace: Workspace) -> dict:
    """Records, every file under datasets/ (with its hash) and the jobs, as comparable values."""
    files = {str(p.relative_to(workspace.datasets_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(workspace.datasets_dir.rglob("*")) if p.is_file()}
    jobs = [(j.id, j.status, j.error) for j in JobManager(workspace, start_workers=False).list()]
    records = [(r.sha256, r.name, r.owner, str(r.path), r.size_bytes) for r in workspace.list()]
    return {"records": records, "files": files, "jobs": jobs}


def assert_nothing_lost(workspace: Workspace, before: dict) -> None:
    assert snapshot(workspace) == before
    incoming = workspace.datasets_dir / ".incoming"
    assert not incoming.exists() or not any(incoming.iterdir()), "a partial upload was left behind"


# -- bad files -----------------------------------------------------------------------------------


def _anndata_file(tmp_path: Path, adata: ad.AnnData, name: str = "bad.h5ad") -> Path:
    path = tmp_path / name
    adata.write_h5ad(path)
    return path


def empty_file(tmp_path, adata):
    path = tmp_path / "empty.h5ad"
    path.write_bytes(b"")
    return path


def csv_named_h5ad(tmp_path, adata):
    path = tmp_path / "counts.h5ad"
    path.write_text("cell,GAPDH\nAAAC-1,3\n")
    return path


def truncated(tmp_path, adata):
    path = _anndata_file(tmp_path, adata)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def wrong_suffix(tmp_path, adata):
    return _anndata_file(tmp_path, adata, "counts.csv")


def no_x(tmp_path, adata):
    path = _anndata_file(tmp_path, adata)
    with h5py.File(path, "a") as f:
        del f["X"]
    return path


def one_cell(tmp_path, adata):
    return _anndata_file(tmp_path, adata[:1].copy())


def zero_genes(tmp_path, adata):
    return _anndata_file(tmp_path, adata[:, :0].copy())


def zero_cells(tmp_path, adata):
    return _anndata_file(tmp_path, adata[:0].copy())


def claims_a_trillion_cells(tmp_path, adata):
    return write_claimed_cells(tmp_path / "huge.h5ad", 10**12)


def shape_attr_lies(tmp_path, adata):
    path = _anndata_file(tmp_path, adata)
    with h5py.File(path, "a") as f:
        f["X"].attrs["shape"] = np.array([10**12, adata.n_vars])
    return path


def obs_shorter_than_x(tmp_path, adata):
    path = _anndata_file(tmp_path, adata)
    with h5py.File(path, "a") as f:
        index = f["obs"]["_index"][:40]
        del f["obs"]["_index"]
        f["obs"].create_dataset("_index", data=index)
        for column in list(f["obs"].attrs["column-order"]):
            del f["obs"][column]
        f["obs"].attrs["column-order"] = np.array([], dtype=object).astype(h5py.string_dtype())
    return path


def gzip_bomb(tmp_path, adata):
    return write_gzip_bomb(tmp_path / "bomb.h5ad", n_cells=20_000, n_genes=20_000)


def layer_of_other_shape(tmp_path, adata):
    path = _anndata_file(tmp_path, adata)
    with h5py.File(path, "a") as f:
        f.create_dataset("layers/counts", data=np.zeros((adata.n_obs, 7), dtype=np.float32))
    return path


def tenx_v2_two_genomes(tmp_path, adata):
    ids, names = list(adata.var_names), list(adata.var["feature_name"])
    return write_10x_v2(tmp_path / "barnyard.h5", adata.X, ids, names, genomes=("GRCh38", "mm10"))


def _tenx_v3(tmp_path: Path, adata: ad.AnnData, n_barcodes: int, gene_ids: bool) -> Path:
    m_cg = sp.csr_matrix(adata.X).astype(np.int32)
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["data"], g["indices"], g["indptr"] = m_cg.data, m_cg.indices, m_cg.indptr
        g["shape"] = np.array([adata.n_vars, adata.n_obs])
        g["barcodes"] = np.array([f"AAAC-{i}".encode() for i in range(n_barcodes)])
        features = g.create_group("features")
        features["name"] = np.array([s.encode() for s in adata.var["feature_name"]])
        if gene_ids:
            features["id"] = np.array([s.encode() for s in adata.var_names])
    return path


def tenx_v3_missing_barcodes(tmp_path, adata):
    return _tenx_v3(tmp_path, adata, adata.n_obs - 5, gene_ids=True)


def tenx_v3_without_gene_ids(tmp_path, adata):
    return _tenx_v3(tmp_path, adata, adata.n_obs, gene_ids=False)


@dataclass(frozen=True)
class BadFile:
    build: Callable[[Path, ad.AnnData], Path]
    message: str


BAD_FILES = {
    "empty file": BadFile(empty_file, r"empty\.h5ad: the file is empty \(0 bytes\)"),
    "csv named .h5ad": BadFile(csv_named_h5ad, r"counts\.h5ad: not an HDF5 file .* saved as CSV"),
    "truncated": BadFile(truncated, r"the file is truncated: it has [\d,]+ of the [\d,]+ bytes its header announces"),
    "wrong suffix": BadFile(wrong_suffix, r"unsupported file type '\.csv'; expected \.h5ad"),
    "no X": BadFile(no_x, r"holds no expression matrix X; store the counts in X"),
    "one cell": BadFile(one_cell, r"the dataset has 1 cell; .* needs at least 2"),
    "zero genes": BadFile(zero_genes, r"the dataset has zero genes"),
    "zero cells": BadFile(zero_cells, r"the dataset has zero cells"),
    "claims 10^12 cells": BadFile(claims_a_trillion_cells,
                                  r"declares 1,000,000,000,000 cells, more than this server takes \(20,000,000"),
    "shape attribute lies": BadFile(shape_attr_lies, r"X declares 1,000,000,000,000 x 300 but holds 400 rows"),
    "obs index shorter than X": BadFile(obs_shorter_than_x, r"X declares 400 x 300 but obs has 40 cells"),
    "gzip bomb": BadFile(gzip_bomb, r"the array X expands from .* KB on disk to 1\.5 GB .*decompression bomb"),
    "layer of another shape": BadFile(layer_of_other_shape, r"layers/counts declares 400 x 7 but obs has 400 cells"),
    "10x v2 with two genomes": BadFile(tenx_v2_two_genomes, r"CellRanger v2 file with 2 genomes \(GRCh38, mm10\)"),
    "10x v3 missing barcodes": BadFile(tenx_v3_missing_barcodes,
                                       r"declares 300 genes x 400 cells but has 395 barcodes for its cells"),
    "10x v3 without gene names": BadFile(tenx_v3_without_gene_ids, r"has no features/id for its genes"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_file_is_refused_by_add_file(kind, tmp_path, small_adata, workspace, stored):
    case = BAD_FILES[kind]
    path = case.build(tmp_path, small_adata)
    before = snapshot(workspace)
    with pytest.raises(InputError, match=case.message):
        workspace.add_file(path)
    assert_nothing_lost(workspace, before)
    assert workspace.dataset_path(stored.id) == stored.path


@pytest.mark.parametrize("kind", ["truncated", "claims 10^12 cells", "gzip bomb", "csv named .h5ad", "one cell"])
def test_bad_upload_stream_leaves_no_partial_file(kind, tmp_path, small_adata, workspace, stored):
    """The upload is named after the user's file, and nothing of it stays in the workspace."""
    case = BAD_FILES[kind]
    path = case.build(tmp_path, small_adata)
    before = snapshot(workspace)
    with pytest.raises(InputError, match=case.message) as caught:
        workspace.add_stream(io.BytesIO(path.read_bytes()), f"my {path.name}")
    assert str(caught.value).startswith(f"my {path.name}: ")
    assert_nothing_lost(workspace, before)


@pytest.mark.parametrize("name, message", [
    ("", r"the upload has no file name; name the file NAME\.h5ad"),
    ("..", r"\.\.: unsupported file type '\(none\)'"),
    ("C:\\Users\\ana\\counts.xlsx", r"counts\.xlsx: unsupported file type '\.xlsx'"),
])
def test_upload_names_that_cannot_name_a_dataset(name, message, small_h5ad, workspace, stored):
    before = snapshot(workspace)
    stream = io.BytesIO(small_h5ad.read_bytes())
    with pytest.raises(InputError, match=message):
        workspace.add_stream(stream, name)
    assert_nothing_lost(workspace, before)


def test_upload_over_the_cap_is_refused_while_streaming(small_h5ad, workspace, stored):
    before = snapshot(workspace)
    with open(small_h5ad, "rb") as stream, pytest.raises(InputError, match=r"big\.h5ad is larger than the 0\.25 MB"):
        workspace.add_stream(stream, "big.h5ad", max_bytes=256 << 10)
    assert_nothing_lost(workspace, before)


def test_cell_ceiling_is_configurable(monkeypatch, small_h5ad, workspace, stored):
    before = snapshot(workspace)
    monkeypatch.setenv("CZB_MAX_CELLS", "100")
    with pytest.raises(InputError, match=r"declares 400 cells, more than this server takes \(100, set by CZB_MAX"):
        workspace.add_file(small_h5ad, name="again.h5ad")
    monkeypatch.setenv("CZB_MAX_CELLS", "lots")
    with pytest.raises(ConfigError, match=r"CZB_MAX_CELLS='lots' is not a positive whole number"):
        workspace.add_file(small_h5ad, name="again.h5ad")
    monkeypatch.delenv("CZB_MAX_CELLS")  # a malformed setting stops every use of the settings, the check too
    assert_nothing_lost(workspace, before)


# -- server paths ----------------------------------------------------------------------------------


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "lab data"
    root.mkdir()
    monkeypatch.setenv("CZB_DATA_ROOTS", str(root))
    return root


def _outside(root: Path, small_h5ad: Path) -> str:
    return str(small_h5ad)


def _dot_dot(root: Path, small_h5ad: Path) -> str:
    return str(root / ".." / small_h5ad.name)


def _symlink_loop(root: Path, small_h5ad: Path) -> str:
    (root / "a.h5ad").symlink_to(root / "b.h5ad")
    (root / "b.h5ad").symlink_to(root / "a.h5ad")
    return str(root / "a.h5ad")


def _link_out_of_root(root: Path, small_h5ad: Path) -> str:
    (root / "link.h5ad").symlink_to(small_h5ad)
    return str(root / "link.h5ad")


def _directory(root: Path, small_h5ad: Path) -> str:
    (root / "run1.h5ad").mkdir()
    return str(root / "run1.h5ad")


def _missing(root: Path, small_h5ad: Path) -> str:
    return str(root / "not-there.h5ad")


@pytest.mark.parametrize("make_path, message", [
    (_outside, r"small\.h5ad is outside the allowed data folders: .*lab data"),
    (_dot_dot, r"is outside the allowed data folders"),
    (_symlink_loop, r"a\.h5ad: cannot be followed .*a symbolic link in it points back at itself"),
    (_link_out_of_root, r"link\.h5ad is outside the allowed data folders"),
    (_directory, r"run1\.h5ad: is a directory, expected an \.h5ad or 10x \.h5 file"),
    (_missing, r"not-there\.h5ad: no such file"),
], ids=["outside the roots", "dot-dot traversal", "symlink loop", "symlink out of the root", "directory",
        "missing"])
def test_bad_server_path_is_refused(make_path, message, data_root, small_h5ad, workspace, stored):
    path = make_path(data_root, small_h5ad)
    before = snapshot(workspace)
    with pytest.raises(InputError, match=message):
        workspace.add_server_path(path)
    assert_nothing_lost(workspace, before)


def test_server_paths_are_off_without_data_roots(small_h5ad, workspace, stored):
    before = snapshot(workspace)
    with pytest.raises(InputError, match="opening files by server path is disabled; .* CZB_DATA_ROOTS"):
        workspace.add_server_path(str(small_h5ad))
    assert_nothing_lost(workspace, before)


# -- inputs that look bad but must work --------------------------------------------------------------


def test_unicode_and_spaces_in_paths_work(tmp_path, monkeypatch, small_adata, workspace, stored, capsys):
    folder = tmp_path / "données brutes" / "échantillon 1 (rein)"
    folder.mkdir(parents=True)
    path = folder / "Zellen – Niere ü 單細胞.h5ad"
    small_adata[:300].copy().write_h5ad(path)  # not the stored dataset's content: a record of its own
    monkeypatch.setenv("CZB_DATA_ROOTS", str(tmp_path / "données brutes"))
    by_path = workspace.add_server_path(str(path))
    assert by_path.name == path.name and by_path.path == path
    copied = workspace.add_file(path, owner="ana")
    streamed = workspace.add_stream(io.BytesIO(path.read_bytes()), path.name, owner="bo")
    assert by_path.sha256 == copied.sha256 == streamed.sha256 and streamed.name == path.name
    assert read_header(path).n_obs == 300
    assert cli.main(["validate", str(path), "--model", "pca"]) == 0
    assert "nothing blocks a run" in capsys.readouterr().out


def test_cellranger_v2_layout_is_read(tmp_path, small_adata, workspace):
    """CellRanger 2 wrote one group per genome with `genes`/`gene_names`, not v3's `matrix/features`."""
    path = write_10x_v2(tmp_path / "filtered_gene_bc_matrices_h5.h5", small_adata.X, list(small_adata.var_names),
                        list(small_adata.var["feature_name"]))
    record = workspace.add_file(path)
    header = read_header(workspace.dataset_path(record.id))
    assert (header.n_obs, header.n_vars) == small_adata.shape and header.counts_location == "X"
    assert list(header.var_names[:3]) == list(small_adata.var_names[:3])
    assert list(header.var["feature_name"][:3]) == list(small_adata.var["feature_name"][:3])


def test_old_anndata_layout_is_decoded(tmp_path, small_adata, workspace):
    """No encoding attributes, categorical codes with `__categories`: read with labels, not bare codes."""
    path = write_old_anndata(tmp_path / "old.h5ad", small_adata, "cell_type")
    record = workspace.add_file(path)
    header = read_header(workspace.dataset_path(record.id))
    assert list(header.obs.columns) == ["cell_type"]
    assert isinstance(header.obs["cell_type"].dtype, pd.CategoricalDtype)
    assert list(header.obs["cell_type"]) == list(small_adata.obs["cell_type"].astype(str))
    assert list(header.obs.index) == list(small_adata.obs_names)
    assert header.counts_location == "X"


def test_two_genes_are_stored_and_the_report_says_how_little_it_has(tmp_path, small_adata, workspace, capsys):
    path = _anndata_file(tmp_path, small_adata[:, :2].copy(), "two.h5ad")
    workspace.add_file(path)
    assert cli.main(["validate", str(path), "--model", "pca"]) == 0
    assert "2 names" in capsys.readouterr().out


# -- files that store fine but a check refuses to run ------------------------------------------------


def _with_x(adata: ad.AnnData, change) -> ad.AnnData:
    out = adata.copy()
    x_ng = out.X.toarray().astype(np.float32)
    change(x_ng)
    out.X = sp.csr_matrix(x_ng)
    return out


def _renamed(adata: ad.AnnData, obs=None, var=None) -> ad.AnnData:
    out = adata.copy()
    if obs is not None:
        out.obs_names = obs
    if var is not None:
        out.var_names = var
    return out


def _nan(x_ng):
    x_ng[:3, :3] = np.nan


def _negative(x_ng):
    x_ng[:3, :3] = -2


def _all_zero(x_ng):
    x_ng[:] = 0


@pytest.mark.parametrize("make, code, message", [
    (lambda a: _renamed(a, obs=["AAAC-1"] * a.n_obs), 2,
     r"1 cell names \(obs_names\) occur more than once \(e\.g\. 'AAAC-1'\).*adata\.obs_names_make_unique\(\)"),
    (lambda a: _with_x(a, _all_zero), 2, r"all 400 cells have no counts in X"),
    (lambda a: _with_x(a, _negative), 1, r"X holds negative values"),
    (lambda a: _with_x(a, _nan), 1, r"X holds NaN or infinite values"),
    (lambda a: _renamed(a, var=[str(i) for i in range(a.n_vars)]), 0,
     r"names are row numbers \(0, 1, 2 \.\.\.\), not genes"),
    (lambda a: _renamed(a, var=["GAPDH"] * a.n_vars), 0, r"1 gene names in var_names occur more than once"),
], ids=["obs names not unique", "all-zero cells", "negative counts", "NaN counts", "numbers as var names",
        "duplicated var names"])
def test_stored_file_that_a_check_refuses(make, code, message, tmp_path, small_adata, workspace, stored, capsys):
    """Such a file is a valid dataset (it is stored, to be fixed or inspected); `czb validate` names the problem."""
    path = _anndata_file(tmp_path, make(small_adata))
    record = workspace.add_file(path)
    assert cli.main(["validate", str(workspace.dataset_path(record.id)), "--model", "pca"]) == code
    out, err = capsys.readouterr()
    assert matches(message, out + err)
    assert "Traceback" not in err and "unexpected error" not in err
    assert workspace.dataset_path(stored.id) == stored.path


def matches(pattern: str, text: str) -> bool:
    """`pattern` in `text` with its line breaks and runs of spaces read as one space (reports wrap lines)."""
    return re.search(pattern, " ".join(text.split())) is not None


# -- the command line -------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, code, message", [
    (["validate", "{data}", "--model", "pca", "--organism", "martian"], 2,
     r"--organism: unknown organism 'martian'; choose one of: human, mouse"),
    (["validate", "{data}", "--model", "pca", "--param", "n_comps"], 2, r"--param expects KEY=VALUE, got 'n_comps'"),
    (["validate", "{data}", "--model", "pca", "--param", "n_comps=many"], 2, r"parameter n_comps='many'"),
    (["validate", "{data}", "--model", "nope"], 2, r"unknown model 'nope'; available: pca"),
    (["validate", "{data}", "--model", "pca", "--variant", "huge"], 2, r"model 'pca' has no variant 'huge'"),
    (["validate", "{tmp}/missing.h5ad", "--model", "pca"], 2, r"missing\.h5ad: no such file"),
    (["validate", "{tmp}", "--model", "pca"], 2, r"is a directory, expected an \.h5ad"),
    (["run", "{data}", "--model", "pca", "--out", "{tmp}"], 2, r"--out .* is a directory; name the file to write"),
    (["run", "{data}", "--model", "pca", "--out", "{tmp}/emb.csv"], 2, r"give it the suffix \.h5ad"),
    (["run", "{data}", "--model", "pca", "--out", "{data}/emb.h5ad"], 2, r"small\.h5ad is a file, not a folder"),
], ids=["unknown organism", "param without value", "param of the wrong type", "unknown model", "unknown variant",
        "missing file", "directory as data", "out is a directory", "out not h5ad", "out under a file"])
def test_cli_refuses_bad_arguments(argv, code, message, small_h5ad, tmp_path, capsys):
    argv = [a.format(data=small_h5ad, tmp=tmp_path) for a in argv]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert matches(message, err), err
    assert "Traceback" not in err and "unexpected error" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "a partial output was left behind"


def test_cli_refuses_a_bad_file_with_exit_2(tmp_path, small_adata, capsys):
    path = claims_a_trillion_cells(tmp_path, small_adata)
    assert cli.main(["validate", str(path), "--model", "pca"]) == 2
    assert "declares 1,000,000,000,000 cells" in capsys.readouterr().err


# -- parameters and jobs ----------------------------------------------------------------------------


@pytest.fixture
def manager(workspace, monkeypatch):
    monkeypatch.setattr(execution_module, "compute_umap", lambda emb_nd, seed=0, labels_n=None: emb_nd[:, :2].copy())
    release = threading.Event()
    started = threading.Event()

    def run(path, model, variant, *, organism, params, weights, device, progress, cancel, input_sha256):
        if params.get("n_comps") == 1:
            started.set()
            assert release.wait(20)
        return fake_result(params)

    manager = JobManager(workspace, run_fn=run, processes=False, score=False)
    manager.release, manager.started = release, started
    yield manager
    release.set()
    for job in manager.list(statuses=("queued", "running")):
        manager.cancel(job.id)
    manager.shutdown(timeout=5)


@pytest.mark.parametrize("kwargs, message", [
    ({"params": {"n_comps": "many"}}, r"parameter n_comps='many'"),
    ({"params": {"n_comps": 2.5}}, r"parameter n_comps=2\.5: 2\.5 is not a whole number"),
    ({"params": {"n_comps": 0}}, r"parameter n_comps must be at least 1, got 0"),
    ({"params": {"n_components": 5}}, r"no parameter 'n_components' \(known: .*n_comps"),
    ({"organism": "martian"}, r"unknown organism 'martian'; choose one of"),
    ({"variant": "tiny"}, r"model 'pca' has no variant 'tiny'"),
], ids=["wrong type", "float for int", "below minimum", "unknown parameter", "unknown organism",
        "unknown variant"])
def test_bad_parameters_are_refused_before_queueing(kwargs, message, manager, workspace, stored):
    wait_for(manager, manager.submit(stored.id, "pca", params={"n_comps": 3}).id, {"done"})
    before = snapshot(workspace)
    with pytest.raises(ConfigError, match=message):
        manager.submit(stored.id, "pca", **{"params": None, **kwargs})
    assert_nothing_lost(workspace, before)


def test_another_users_job_is_not_found_and_stays(manager, workspace, small_h5ad):
    anas = workspace.add_file(small_h5ad, owner="ana")
    job = manager.submit(anas.id, "pca", params={"n_comps": 1}, owner="ana")
    assert manager.started.wait(10)
    with pytest.raises(KeyError, match=f"job {job.id} not found"):
        manager.cancel(job.id, scope="bo")
    with pytest.raises(KeyError, match="not found"):
        manager.retry(job.id, scope="bo")
    assert manager.get(job.id, scope="bo") is None
    assert manager.get(job.id, scope="ana").status == "running" and not manager.get(job.id).cancel_requested
    manager.release.set()
    assert wait_for(manager, job.id, {"done"}).status == "done"


def test_file_deleted_while_its_job_is_queued(tmp_path, monkeypatch, small_adata, manager, workspace, stored):
    root = tmp_path / "lab"
    root.mkdir()
    monkeypatch.setenv("CZB_DATA_ROOTS", str(root))
    other = _anndata_file(root, small_adata[:200].copy(), "soon gone.h5ad")
    gone = workspace.add_server_path(str(other))
    first = manager.submit(stored.id, "pca", params={"n_comps": 1})
    assert manager.started.wait(10)
    queued = manager.submit(gone.id, "pca", params={"n_comps": 2})
    other.unlink()
    manager.release.set()
    failed = wait_for(manager, queued.id, {"failed", "done"})
    assert failed.status == "failed"
    assert "soon gone.h5ad: its file is gone or can no longer be read; add the dataset again" in failed.error
    assert wait_for(manager, first.id, {"done"}).status == "done"
    assert workspace.get(stored.id).path.exists() and workspace.get(gone.id).name == "soon gone.h5ad"
