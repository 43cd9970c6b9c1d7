import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from czb_core.errors import InputError
from czb_core.io.header import read_header
from czb_core.io.reading import check_readable, read_anndata
from tests.helpers.bad_inputs import write_10x_v2, write_claimed_cells, write_gzip_bomb, write_old_anndata
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
    (b"", "the file is empty"),
])
def test_non_hdf5_files_are_refused(tmp_path, content, message):
    path = tmp_path / "x.h5ad"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_header(path)


def test_truncated_h5ad_is_refused(small_h5ad):
    data = small_h5ad.read_bytes()
    small_h5ad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="the file is truncated: it has [0-9,]+ of the [0-9,]+ bytes"):
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


# -- the declared shape, checked before anything is loaded ---------------------------------------------


def test_header_claiming_a_trillion_cells_is_refused_unread(tmp_path):
    path = write_claimed_cells(tmp_path / "huge.h5ad", 10**12)
    for check in (check_readable, read_header, read_anndata):
        with pytest.raises(InputError, match=r"declares 1,000,000,000,000 cells, more than this server takes"):
            check(path)


def test_cell_ceiling_comes_from_the_environment(monkeypatch, small_h5ad):
    monkeypatch.setenv("CZB_MAX_CELLS", "399")
    with pytest.raises(InputError, match=r"declares 400 cells, more than this server takes \(399"):
        check_readable(small_h5ad)
    monkeypatch.setenv("CZB_MAX_CELLS", "400")
    assert check_readable(small_h5ad) == small_h5ad


def test_gzip_bomb_is_refused_but_ordinary_compression_is_not(tmp_path, small_adata):
    with pytest.raises(InputError, match=r"X expands from .* on disk to 1\.5 GB in memory .* decompression bomb"):
        check_readable(write_gzip_bomb(tmp_path / "bomb.h5ad", n_cells=20_000, n_genes=20_000))
    dense = small_adata.copy()
    dense.X = np.zeros(small_adata.shape, dtype=np.float32)  # compresses thousands of times, but is 0.5 MB
    path = tmp_path / "zeros.h5ad"
    dense.write_h5ad(path, compression="gzip")
    assert check_readable(path) == path


def test_parts_that_disagree_on_the_number_of_cells_are_refused(tmp_path, small_adata, small_h5ad):
    with h5py.File(small_h5ad, "a") as f:
        f["obsm"].create_dataset("X_pca", data=np.zeros((12, 2)))
    with pytest.raises(InputError, match=r"obsm/X_pca declares 12 x 2 but obs has 400 cells;"):
        read_header(small_h5ad)


def test_one_cell_is_too_few(small_adata, write_h5ad):
    with pytest.raises(InputError, match=r"has 1 cell; .* needs at least 2"):
        read_header(write_h5ad(small_adata[:1].copy()))


def test_cellranger_v2_matches_v3(tmp_path, small_adata):
    x = small_adata.X[:50].astype(np.int32)
    ids, names = list(small_adata.var_names), list(small_adata.var["feature_name"])
    _write_10x(tmp_path / "v3.h5", x, ids, names)
    v2, v3 = read_anndata(write_10x_v2(tmp_path / "v2.h5", x, ids, names)), read_anndata(tmp_path / "v3.h5")
    np.testing.assert_array_equal(v2.X.toarray(), v3.X.toarray())
    assert list(v2.var_names) == list(v3.var_names) and list(v2.var["feature_name"]) == names


def test_old_anndata_layers_obsm_and_raw_are_read(tmp_path, small_adata):
    path = write_old_anndata(tmp_path / "old.h5ad", small_adata, "cell_type")
    counts = sp.csr_matrix(small_adata.X)
    with h5py.File(path, "a") as f:
        layer = f["layers"].create_group("counts")
        layer.attrs["h5sparse_format"], layer.attrs["h5sparse_shape"] = "csr", counts.shape
        layer["data"], layer["indices"], layer["indptr"] = counts.data, counts.indices, counts.indptr
        f["obsm"]["X_pca"] = np.arange(small_adata.n_obs * 2, dtype=np.float32).reshape(-1, 2)
        f.copy(f["X"], "raw/X")
        f.copy(f["var"], "raw/var")
    adata = read_anndata(path)
    np.testing.assert_array_equal(adata.layers["counts"].toarray(), counts.toarray())
    np.testing.assert_array_equal(adata.raw.X.toarray(), counts.toarray())
    assert adata.obsm["X_pca"].shape == (small_adata.n_obs, 2) and adata.obsm["X_pca"][1, 0] == 2
    assert adata.obs["cell_type"].cat.categories.tolist() == sorted(small_adata.obs["cell_type"].astype(str).unique())
