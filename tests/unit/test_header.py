import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from czb_core.errors import InputError
from czb_core.io.header import read_header
from czb_core.io.reading import read_anndata
from tests.helpers.data import log_normalised


def test_header_reads_shape_columns_and_counts_location(small_h5ad, small_adata):
    header = read_header(small_h5ad)
    assert (header.n_obs, header.n_vars) == small_adata.shape
    assert header.counts_location == "X"
    assert header.x_sample.is_integer and header.x_sample.encoding == "csr_matrix"
    summary = header.summary()
    assert summary["obs_columns"]["cell_type"] == 4
    assert "feature_name" in summary["var_columns"]


def test_header_finds_counts_in_layers_and_raw(small_adata, write_h5ad):
    norm = log_normalised(small_adata)
    norm.layers["counts"] = small_adata.X.copy()
    assert read_header(write_h5ad(norm)).counts_location == "layers/counts"
    norm2 = log_normalised(small_adata)
    norm2.raw = small_adata.copy()
    assert read_header(write_h5ad(norm2)).counts_location == "raw/X"
    assert read_header(write_h5ad(log_normalised(small_adata))).counts_location is None


def test_header_on_dense_x_and_exact_empty_cells(small_adata, write_h5ad):
    dense = small_adata.copy()
    dense.X = small_adata.X.toarray()
    assert read_header(write_h5ad(dense)).counts_location == "X"
    with_empty = small_adata.copy()
    x = with_empty.X.tolil()
    x[[0, 5, 9], :] = 0
    with_empty.X = sp.csr_matrix(x)
    header = read_header(write_h5ad(with_empty))
    assert header.n_empty_cells == 3 and header.empty_cells_exact


def _write_10x(path, x_ng, ids, names):
    x_gc = sp.csc_matrix(x_ng).T.tocsc()  # genes x cells, stored as CSR of cells = CSC of genes
    m_cg = sp.csr_matrix(x_ng)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["data"], g["indices"], g["indptr"] = m_cg.data.astype(np.int32), m_cg.indices, m_cg.indptr
        g["shape"] = np.array([x_gc.shape[0], x_gc.shape[1]])
        g["barcodes"] = np.array([f"AAAC-{i}".encode() for i in range(x_ng.shape[0])])
        feats = g.create_group("features")
        feats["id"] = np.array([s.encode() for s in ids])
        feats["name"] = np.array([s.encode() for s in names])
        feats["feature_type"] = np.array([b"Gene Expression"] * len(ids))


def test_10x_h5_is_read_with_ids_and_symbols(tmp_path, small_adata):
    x = small_adata.X[:50].astype(np.int32)
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    _write_10x(path, x, list(small_adata.var_names), list(small_adata.var["feature_name"]))
    adata = read_anndata(path)
    assert adata.shape == (50, small_adata.n_vars)
    np.testing.assert_array_equal(adata.X.toarray(), x.toarray())
    assert adata.var["feature_name"].iloc[0] == small_adata.var["feature_name"].iloc[0]
    assert read_header(path).counts_location == "X"


@pytest.mark.parametrize("content, message", [
    (b"cell,gene\n1,2\n", "not an HDF5 file"),
    (b"", "not an HDF5 file"),
])
def test_non_hdf5_files_are_refused(tmp_path, content, message):
    path = tmp_path / "x.h5ad"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_header(path)


def test_truncated_h5ad_is_refused(small_h5ad):
    data = small_h5ad.read_bytes()
    small_h5ad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt|cannot be read"):
        read_header(small_h5ad)


def test_wrong_suffix_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="unsupported file type '.csv'"):
        read_header(tmp_path / "x.csv").__class__ if (tmp_path / "x.csv").write_text("a") else None
    with pytest.raises(InputError, match="no such file"):
        read_header(tmp_path / "missing.h5ad")


@pytest.mark.parametrize("shape", [(0, 10), (10, 0)])
def test_empty_datasets_are_refused(write_h5ad, shape):
    adata = ad.AnnData(sp.csr_matrix(shape, dtype=np.float32))
    with pytest.raises(InputError, match="zero (cells|genes)"):
        read_header(write_h5ad(adata))
