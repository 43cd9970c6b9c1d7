import numpy as np
import pytest
import scipy.sparse as sp

from czb_core.errors import InputError
from czb_core.service.fixes import make_batch_key, map_symbols_to_ids, sum_duplicate_genes, use_var_column_as_gene_ids
from czb_core.types import Organism
from czb_core.viz.qc import per_cell_qc


def test_sum_duplicate_genes_adds_columns(small_adata):
    names = list(small_adata.var_names)
    names[1] = names[0]
    merged = sum_duplicate_genes(small_adata, names)
    assert merged.n_vars == small_adata.n_vars - 1
    x = small_adata.X.toarray()
    np.testing.assert_array_equal(merged.X[:, 0].toarray().ravel(), x[:, 0] + x[:, 1])
    assert merged.X.sum() == pytest.approx(small_adata.X.sum())


def test_map_symbols_to_ids_round_trip(small_adata):
    symbols = small_adata.copy()
    symbols.var_names = symbols.var["feature_name"].astype(str).to_numpy()
    symbols.var_names_make_unique()
    names = symbols.var_names.to_numpy().copy()
    names[0] = "NOT_A_GENE_XYZ"
    symbols.var_names = names
    mapped, report = map_symbols_to_ids(symbols, Organism.HUMAN)
    assert "GENCODE" in report.source  # the reference release is recorded
    assert report.n_unresolved == 1 and "NOT_A_GENE_XYZ" in report.to_csv()
    assert mapped.n_vars == small_adata.n_vars - 1
    assert set(mapped.var_names) == set(small_adata.var_names[1:])
    expected = small_adata.var.loc[mapped.var_names, "feature_name"].to_numpy()
    assert (mapped.var["feature_name"].to_numpy() == expected).all()


def test_use_var_column_and_batch_key(small_adata):
    with_col = small_adata.copy()
    with_col.var["ids"] = with_col.var_names.to_numpy()
    with_col.var_names = [f"g{i}" for i in range(with_col.n_vars)]
    fixed = use_var_column_as_gene_ids(with_col, "ids")
    assert list(fixed.var_names) == list(small_adata.var_names)
    assert fixed.var["original_var_names"].iloc[0] == "g0"
    with pytest.raises(InputError, match="no column 'nope'"):
        use_var_column_as_gene_ids(with_col, "nope")
    keyed = make_batch_key(small_adata, ["batch", "donor_id"], key="scvi_batch")
    first = small_adata.obs.iloc[0]
    assert keyed.obs["scvi_batch"].iloc[0] == f"{first['batch']}_{first['donor_id']}"


def test_per_cell_qc_matches_memory(small_adata, write_h5ad, monkeypatch):
    import czb_core.viz.qc as qc

    adata = small_adata.copy()
    x = adata.X.tolil()
    x[[0, 399], :] = 0  # empty first and last rows
    adata.X = sp.csr_matrix(x)
    monkeypatch.setattr(qc, "CHUNK_NNZ", 5000)  # several chunks
    table = per_cell_qc(write_h5ad(adata))
    np.testing.assert_allclose(table["total_counts"], np.asarray(adata.X.sum(axis=1)).ravel())
    np.testing.assert_array_equal(table["n_genes"], np.diff(adata.X.indptr))
    dense = adata.copy()
    dense.X = adata.X.toarray()
    np.testing.assert_allclose(per_cell_qc(write_h5ad(dense))["total_counts"], table["total_counts"])


def test_fixes_run_off_the_page_and_name_the_version(small_adata, write_h5ad):
    import time

    from czb_core.errors import InputError
    from czb_core.service.fixes import FixRunner
    from czb_core.service.workspace import Workspace

    symbols = small_adata.copy()
    symbols.var_names = symbols.var["feature_name"].astype(str).to_numpy()
    workspace = Workspace()
    record = workspace.add_file(write_h5ad(symbols, "lung.h5ad"))
    runner = FixRunner(workspace)

    def wait(fix_id):
        deadline = time.monotonic() + 30
        while (result := runner.result(fix_id)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return result

    result = wait(runner.submit(record.id, "batch_key", columns=["batch", "donor_id"], key="lane"))
    assert result.record.name == "lung · batch key built.h5ad" and result.record.parent_sha256 == record.sha256
    assert result.mapping_csv is None
    bad = runner.submit(record.id, "var_column_as_genes", column="no_such_column")
    with pytest.raises(InputError, match="var has no column 'no_such_column'"):
        wait(bad)
    assert [r.sha256 for r in workspace.list()].count(record.sha256) == 1  # the original is untouched
