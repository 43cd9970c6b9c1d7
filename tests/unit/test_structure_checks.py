"""A file must prove its structure before it is stored or read: a 2-D numeric X, sparse arrays that point
inside their matrix, declared sizes that add up to something a file of its size can hold, and no loom.

Each reproduction of a malformed file that once got through (and then broke the Dataset page, exited 4 or
crashed a run) is refused with a message naming the problem, by every entry point that reads a file.
"""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from czb_core import cli
from czb_core.errors import InputError
from czb_core.io.header import read_header
from czb_core.io.reading import check_dataset_file, check_readable, read_anndata
from czb_core.service.history import dataset_shape
from czb_core.service.workspace import Workspace
from czb_core.viz.qc import per_cell_qc
from tests.helpers.bad_inputs import (
    REPRODUCTIONS,
    edit_array,
    replace_array,
    set_entry,
    write_10x_v2,
    write_10x_v3,
    write_loom,
    write_split_bomb,
)

READERS = (check_dataset_file, check_readable, read_header, read_anndata)


@pytest.mark.parametrize("kind", sorted(REPRODUCTIONS))
def test_malformed_x_is_refused_by_every_reader(kind, small_h5ad, capsys):
    make, message = REPRODUCTIONS[kind]
    path = make(small_h5ad)
    for reader in READERS:
        with pytest.raises(InputError, match=message):
            reader(path)
    with pytest.raises(InputError, match=message):
        Workspace().add_file(path)
    assert Workspace().list() == []
    assert cli.main(["validate", str(path), "--model", "pca"]) == 2
    err = capsys.readouterr().err
    assert "small.h5ad: " in err and "unexpected error" not in err


@pytest.mark.parametrize("kind", sorted(REPRODUCTIONS))
def test_history_and_qc_of_a_stored_file_that_no_longer_loads(kind, small_h5ad):
    """A file stored before these checks existed: the history lists it, QC says why it cannot be read."""
    make, message = REPRODUCTIONS[kind]
    path = make(small_h5ad)
    assert dataset_shape(path) == (None if kind == "1-D X" else (400, 300))
    with pytest.raises(InputError, match=message):
        per_cell_qc(path)


@pytest.mark.parametrize("shape_attr", [np.array([400]), np.array([400.0, 300.0]), np.array([b"a", b"b"]), None])
def test_history_shape_of_a_malformed_shape_attribute_is_none(small_h5ad, shape_attr):
    with h5py.File(small_h5ad, "a") as f:
        if shape_attr is None:
            del f["X"].attrs["shape"]
        else:
            f["X"].attrs["shape"] = shape_attr
    assert dataset_shape(small_h5ad) is None
    with pytest.raises(InputError, match=r"X has no shape of two whole numbers"):
        check_readable(small_h5ad)


def test_csc_x_is_read_by_columns(small_adata, write_h5ad):
    """A valid CSC matrix is stored, sampled and QC'd by columns, giving what its CSR gives."""
    by_columns = small_adata.copy()
    by_columns.X = small_adata.X.tocsc()
    path = write_h5ad(by_columns)
    assert check_dataset_file(path) == path
    sample = read_header(path).x_sample
    assert sample.encoding == "csc_matrix" and sample.n_rows_sampled == 400 and sample.is_integer
    assert sample.nnz_fraction == pytest.approx(small_adata.X.nnz / (400 * 300))
    qc = per_cell_qc(path)
    np.testing.assert_allclose(qc["total_counts"], np.asarray(small_adata.X.sum(axis=1)).ravel())
    np.testing.assert_array_equal(qc["n_genes"], np.diff(small_adata.X.indptr))
    assert dataset_shape(path) == (400, 300)


def test_csc_row_index_out_of_range_is_refused(small_adata, write_h5ad):
    by_columns = small_adata.copy()
    by_columns.X = small_adata.X.tocsc()
    path = edit_array(write_h5ad(by_columns), "X/indices", set_entry(7, 400))
    with pytest.raises(InputError, match=r"X/indices holds row 400 at position 7, outside the 400 rows"):
        check_dataset_file(path)


def test_counts_layer_and_raw_are_checked_like_x(small_adata, write_h5ad):
    with_counts = small_adata.copy()
    with_counts.layers["counts"] = small_adata.X.copy()
    path = edit_array(write_h5ad(with_counts), "layers/counts/indices", set_entry(0, -1))
    with pytest.raises(InputError, match=r"layers/counts/indices holds column -1 at position 0"):
        read_header(path)
    with_raw = small_adata.copy()
    with_raw.raw = small_adata
    path = write_h5ad(with_raw)
    with h5py.File(path, "a") as f:
        f["raw/X"].attrs["shape"] = np.array([400, 250])
    with pytest.raises(InputError, match=r"raw/X declares 400 x 250 but obs has 400 cells and raw/var 300 genes"):
        check_dataset_file(path)


def test_every_sparse_matrix_is_checked_not_only_the_counts(small_adata, write_h5ad, monkeypatch):
    """A full read builds obsp and uns matrices too, and a fix slicing cells indexes them."""
    with_graph = small_adata.copy()
    with_graph.obsp["connectivities"] = sp.random(400, 400, density=0.01, format="csr", random_state=0)
    path = edit_array(write_h5ad(with_graph), "obsp/connectivities/indices", set_entry(2, 400))
    with pytest.raises(InputError, match=r"obsp/connectivities/indices holds column 400 at position 2, outside the "
                                         r"400 columns"):
        check_dataset_file(path)
    with h5py.File(path, "a") as f:
        f["obsp/connectivities"].attrs["shape"] = np.array([400, 500])
    with pytest.raises(InputError, match=r"obsp/connectivities declares 400 x 500 but obs has 400 cells; the parts"):
        check_dataset_file(path)
    path = write_h5ad(small_adata)
    with h5py.File(path, "a") as f:  # 3 million rows: an indptr of 24 MB, under every size check
        huge = f["uns"].create_group("huge")
        huge.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (3_000_000, 3)})
        huge.create_dataset("indptr", shape=(3_000_001,), dtype=np.int64, chunks=(1 << 20,), compression="gzip")
        huge["indices"], huge["data"] = np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
    monkeypatch.setenv("CZB_MAX_CELLS", "1000")
    with pytest.raises(InputError, match=r"uns/huge declares 3,000,000 x 3, more rows than any matrix of a dataset "
                                         r"this server takes \(2,000,000\)"):
        check_dataset_file(path)


@pytest.mark.parametrize("values, message", [
    (np.array([["a"] * 300] * 400, dtype=object), r"X holds text, not numbers"),
    (np.zeros((400, 300), dtype=np.complex64), r"X holds complex64 values, not numbers"),
    (np.zeros((4, 100, 300), dtype=np.float32), r"X is a 3-D array of shape \(4, 100, 300\)"),
], ids=["text", "complex", "3-D"])
def test_dense_x_must_be_a_numeric_matrix(small_h5ad, values, message):
    replace_array(small_h5ad, "X", values, {"encoding-type": "array", "encoding-version": "0.2.0"})
    with pytest.raises(InputError, match=message):
        check_dataset_file(small_h5ad)


@pytest.mark.parametrize("part, values, message", [
    ("data", np.array([b"x"] * 3), r"X/data holds text, not numbers"),
    ("indices", np.zeros(3, dtype=np.float32), r"X/indices holds float32 values, not whole numbers"),
    ("indptr", np.zeros((2, 2), dtype=np.int64), r"the sparse matrix X has no 1-D indptr array"),
])
def test_sparse_arrays_of_the_wrong_kind(small_h5ad, part, values, message):
    replace_array(small_h5ad, f"X/{part}", values)
    with pytest.raises(InputError, match=message):
        check_dataset_file(small_h5ad)


@pytest.mark.parametrize("encoding", ["dataframe", "array", "awkward-array"])
def test_x_of_an_unknown_encoding_is_refused(small_h5ad, encoding):
    with h5py.File(small_h5ad, "a") as f:
        f["X"].attrs["encoding-type"] = encoding
    with pytest.raises(InputError, match=rf"X is stored as '{encoding}', neither a dense array nor a CSR/CSC"):
        check_dataset_file(small_h5ad)


def test_encodings_anndata_cannot_read_are_refused(small_adata, write_h5ad, small_h5ad):
    with h5py.File(small_h5ad, "a") as f:
        f["X"].attrs["encoding-version"] = "9.9.9"
    with pytest.raises(InputError, match=r"X is encoded as csr_matrix version 9\.9\.9, but anndata reads version "
                                         r"0\.1\.0"):
        check_dataset_file(small_h5ad)
    dense = small_adata.copy()
    dense.X = small_adata.X.toarray()
    path = write_h5ad(dense)
    with h5py.File(path, "a") as f:
        del f["X"].attrs["encoding-type"]
    with pytest.raises(InputError, match=r"X has an encoding-version but no encoding-type"):
        read_header(path)
    with h5py.File(path, "a") as f:
        f["X"].attrs["encoding-type"] = "csr_matrix"
    with pytest.raises(InputError, match=r"X is a dense array marked as 'csr_matrix' \(its encoding-type\)"):
        read_anndata(path)


def test_history_reads_the_shape_of_a_cellranger_2_file(tmp_path, small_adata):
    ids, names = list(small_adata.var_names), list(small_adata.var["feature_name"])
    assert dataset_shape(write_10x_v2(tmp_path / "v2.h5", small_adata.X, ids, names)) == (400, 300)


def test_10x_arrays_that_point_outside_the_matrix(tmp_path, small_adata):
    ids, names = list(small_adata.var_names), list(small_adata.var["feature_name"])
    path = edit_array(write_10x_v3(tmp_path / "raw.h5", small_adata.X, ids, names), "matrix/indices", set_entry(3, 300))
    with pytest.raises(InputError, match=r"raw\.h5: matrix/indices holds gene 300 at position 3, outside the 300 "
                                         r"genes the matrix declares; the file is corrupt: export it from CellRanger"):
        read_header(path)
    path = edit_array(write_10x_v3(tmp_path / "ptr.h5", small_adata.X, ids, names), "matrix/indptr",
                      lambda p: p.__setitem__(20, p[20] + 10**6))
    with pytest.raises(InputError, match=r"matrix/indptr decreases from [\d,]+ to [\d,]+ at entry 21, so cell 20"):
        check_dataset_file(path)
    path = replace_array(write_10x_v3(tmp_path / "shape.h5", small_adata.X, ids, names), "matrix/shape",
                         np.array([300.0, 400.0]))
    with pytest.raises(InputError, match=r"the 10x matrix has no shape of two whole numbers"):
        per_cell_qc(path)
    assert dataset_shape(path) is None


# -- the size a file declares, over all its arrays --------------------------------------------------


def test_bomb_split_over_many_uns_arrays_is_refused_before_uns_is_read(tmp_path, small_adata, monkeypatch):
    """20 arrays of 0.99 GB each (under the one-array floor) in a file of a few hundred KB: the sum gives it away,
    before anndata (which would read uns whole) is asked for anything."""
    path = write_split_bomb(tmp_path / "split.h5ad", small_adata)
    assert path.stat().st_size < 2 << 20

    def never(*args, **kwargs):
        raise AssertionError("anndata read the file")

    monkeypatch.setattr(ad, "read_h5ad", never)
    for reader in READERS:
        with pytest.raises(InputError, match=r"split\.h5ad: its arrays declare 18\.4 GB in all from a file of [\d.]+ "
                                             r"KB .* uns alone declares 18\.4 GB in 2[0-9] arrays: this is a "
                                             r"decompression bomb"):
            reader(path)


def test_one_array_under_the_floor_is_no_bomb(tmp_path, small_adata):
    path = write_split_bomb(tmp_path / "one.h5ad", small_adata, n_arrays=1)
    assert check_dataset_file(path) == path


def test_uns_over_its_ceiling_is_refused_though_it_compresses_plausibly(tmp_path, small_adata):
    """2.7 GB of uns from a 5 MB file expands 'only' ~500 times, yet uns is read whole with every full read."""
    path = tmp_path / "big_uns.h5ad"
    small_adata.write_h5ad(path)
    with h5py.File(path, "a") as f:
        f["uns"]["noise"] = np.random.default_rng(0).random(600_000)
        for i in range(3):
            f["uns"].create_dataset(f"zeros{i}", shape=(900_000_000 // 8,), dtype=np.float64, chunks=(1 << 18,),
                                    compression="gzip")
    with pytest.raises(InputError, match=r"uns declares 2\.5 GB in [\d,]+ arrays; .* more than 1\.0 GB there is not "
                                         r"annotations: drop the big entries \(del adata\.uns\[key\]\)"):
        check_dataset_file(path)


def test_a_link_to_another_file_is_refused(tmp_path, small_h5ad, small_adata):
    other = tmp_path / "someone_elses.h5ad"
    small_adata.write_h5ad(other)
    with h5py.File(small_h5ad, "a") as f:
        f["uns"]["borrowed"] = h5py.ExternalLink(str(other), "/X")
    with pytest.raises(InputError, match=r"uns/borrowed links to /X in another file .*a dataset must be one file"):
        check_dataset_file(small_h5ad)
    with h5py.File(small_h5ad, "a") as f:
        del f["uns"]["borrowed"]
        layout = h5py.VirtualLayout(shape=(400,), dtype=np.int64)
        layout[:] = h5py.VirtualSource(str(other), "X/indptr", shape=(401,))[:400]
        f["uns"].create_virtual_dataset("mirrored", layout)
    with pytest.raises(InputError, match=r"uns/mirrored is a virtual dataset, read from other files"):
        check_dataset_file(small_h5ad)


# -- files that are HDF5 but not a dataset ----------------------------------------------------------


def test_loom_is_told_how_to_convert(tmp_path, small_adata, capsys):
    loom = write_loom(tmp_path / "cortex.loom", small_adata.X)
    fix = r"loom is not supported; convert it to \.h5ad with scanpy \(scanpy\.read_loom\('cortex\.(loom|h5ad)'\)"
    with pytest.raises(InputError, match=rf"cortex\.loom: {fix}"):
        check_dataset_file(loom)
    renamed = tmp_path / "cortex.h5ad"
    renamed.write_bytes(loom.read_bytes())
    for reader in READERS:
        with pytest.raises(InputError, match=rf"cortex\.h5ad: this is a loom file; {fix}"):
            reader(renamed)
    assert cli.main(["validate", str(renamed), "--model", "pca"]) == 2
    assert "this is a loom file" in capsys.readouterr().err


def test_other_hdf5_is_told_what_it_holds(tmp_path):
    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as f:
        f["layer1/kernel"] = np.zeros((3, 3))
        f["optimizer"] = np.zeros(2)
    with pytest.raises(InputError, match=r"weights\.h5: an HDF5 file, but neither AnnData .* it holds layer1, "
                                         r"optimizer: save the data with anndata"):
        read_header(path)


def test_well_formed_files_pass_untouched(small_adata, write_h5ad, tmp_path):
    """The checks refuse nothing anndata writes: CSR, CSC, dense, with counts layer and raw."""
    full = small_adata.copy()
    full.layers["counts"] = small_adata.X.copy()
    full.raw = small_adata
    full.obsm["X_pca"] = np.zeros((400, 5), dtype=np.float32)
    full.uns["colors"] = np.array(["red", "blue"], dtype=object)
    dense = small_adata.copy()
    dense.X = small_adata.X.toarray()
    for adata in (full, dense, ad.AnnData(sp.csr_matrix(np.eye(3, dtype=np.float32)))):
        path = write_h5ad(adata)
        assert check_dataset_file(path) == path
        assert read_header(path).n_obs == adata.n_obs
    ids, names = list(small_adata.var_names), list(small_adata.var["feature_name"])
    tenx = write_10x_v3(tmp_path / "ok.h5", small_adata.X, ids, names)
    assert check_dataset_file(tenx) == tenx and read_anndata(tenx).shape == (400, 300)
