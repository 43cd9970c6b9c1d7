"""The data manager decides, once, where the counts are, the genes' names, the organism and the batches."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from czb_core.io.header import header_from_anndata, read_header
from czb_core.schema.data_manager import BatchSpec, DataManager, DataNeeds
from czb_core.schema.datasets import SingleCellDataset
from czb_core.schema.species import GeneIdSystem
from czb_core.types import Organism
from tests.helpers.data import log_normalised


def test_counts_from_layers_when_x_is_normalised(small_adata, write_h5ad):
    adata = log_normalised(small_adata)
    adata.layers["counts"] = small_adata.X.copy()
    manager = DataManager(read_header(write_h5ad(adata)), DataNeeds())
    assert manager.counts_location == "layers/counts"
    manager.bind(ad.read_h5ad(write_h5ad(adata)))
    rows = np.array([3, 0, 7])
    np.testing.assert_array_equal(manager.counts(rows).toarray(), small_adata.X[rows].toarray())


def test_raw_counts_bring_their_own_genes_and_names_in_the_models_naming(small_adata, write_h5ad):
    raw = small_adata.copy()
    raw.var_names = [f"{g}.3" for g in small_adata.var_names]  # versioned ids in raw only
    adata = log_normalised(small_adata)[:, :200].copy()
    adata.raw = raw
    manager = DataManager(read_header(write_h5ad(adata)), DataNeeds(gene_naming="ensembl"))
    assert manager.counts_location == "raw/X" and len(manager.genes_g) == 300
    assert manager.genes_g[0] == small_adata.var_names[0]  # the version suffix is gone
    assert manager.gene_source == "var_names" and manager.gene_system is GeneIdSystem.ENSEMBL


def test_symbols_in_var_names_with_ids_in_a_column(small_adata):
    adata = small_adata.copy()
    adata.var["gene_ids"] = adata.var_names.to_numpy()
    adata.var_names = adata.var["feature_name"].astype(str).to_numpy()
    header = header_from_anndata(adata)
    by_id = DataManager(header, DataNeeds(gene_naming="ensembl"))
    assert by_id.gene_source == "var['gene_ids']" and by_id.genes_g[0] == small_adata.var_names[0]
    by_symbol = DataManager(header, DataNeeds(gene_naming="symbol"))
    assert by_symbol.gene_source == "var_names" and by_symbol.genes_g[0] == adata.var_names[0]
    assert by_id.organism is Organism.HUMAN  # detected from the id column
    assert DataManager(header, organism=Organism.MOUSE).organism is Organism.MOUSE


def test_batch_labels_from_columns_a_constant_or_nothing(small_adata):
    header = header_from_anndata(small_adata)
    two = DataManager(header, DataNeeds(batch=BatchSpec.from_params("", ("batch", "donor_id")))).batch_labels()
    assert two.iloc[0] == f"{small_adata.obs['batch'].iloc[0]}{small_adata.obs['donor_id'].iloc[0]}"
    constant = DataManager(header, DataNeeds(batch=BatchSpec.from_params("unassigned"))).batch_labels()
    assert set(constant) == {"unassigned"}
    assert DataManager(header, DataNeeds()).batch_labels() is None


def test_reading_rows_needs_the_data(small_adata):
    manager = DataManager(header_from_anndata(small_adata))
    with pytest.raises(RuntimeError, match="bind"):
        manager.counts()
    with pytest.raises(ValueError, match="cells"):
        manager.bind(small_adata[:10].copy())
    dense = ad.AnnData(np.asarray(small_adata.X.toarray()), obs=pd.DataFrame(index=small_adata.obs_names))
    block = DataManager(header_from_anndata(dense)).bind(dense).counts(slice(0, 5))
    assert sp.isspmatrix_csr(block) and block.shape == (5, 300)


def test_counts_come_from_layers_when_x_is_normalised(small_adata, write_h5ad):
    adata = log_normalised(small_adata)
    adata.layers["counts"] = small_adata.X.copy()
    ds = SingleCellDataset(write_h5ad(adata))
    ds.load_data()
    manager = DataManager(header_from_anndata(ds.adata)).bind(ds.adata)
    x_ng, names = manager.counts(), manager.var_names
    assert (x_ng != small_adata.X).nnz == 0
    assert list(names) == list(small_adata.var_names)


def test_counts_come_from_raw(small_adata, write_h5ad):
    adata = small_adata.copy()
    adata.raw = adata
    adata = log_normalised(adata)
    adata.raw = small_adata.copy()  # raw keeps counts, X is normalised
    ds = SingleCellDataset(write_h5ad(adata))
    ds.load_data()
    x_ng = DataManager(header_from_anndata(ds.adata)).bind(ds.adata).counts()
    np.testing.assert_array_equal(x_ng.toarray(), small_adata.X.toarray())
