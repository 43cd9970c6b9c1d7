import numpy as np
import pytest

from czb_core.datasets import SingleCellDataset
from czb_core.types import DataType, ModelType, Organism
from tests.conftest import log_normalised


def test_set_output_checks_direction_and_type(small_h5ad):
    ds = SingleCellDataset(small_h5ad, Organism.HUMAN)
    with pytest.raises(ValueError, match="input type"):
        ds.set_output(ModelType.SCVI, DataType.ANNDATA, None)
    with pytest.raises(ValueError, match="output type"):
        ds.set_input(DataType.EMBEDDING, np.zeros((2, 2)))
    with pytest.raises(TypeError, match="EMBEDDING expects ndarray"):
        ds.set_output(ModelType.SCVI, DataType.EMBEDDING, [[0.0]])
    emb = np.ones((3, 2))
    ds.set_output(ModelType.SCVI, DataType.EMBEDDING, emb)
    assert ds.get_output(ModelType.SCVI, DataType.EMBEDDING) is emb


def test_get_output_names_the_missing_model(small_h5ad):
    ds = SingleCellDataset(small_h5ad, Organism.HUMAN)
    with pytest.raises(KeyError, match="model GENEFORMER"):
        ds.get_output(ModelType.GENEFORMER, DataType.EMBEDDING)


def test_load_and_unload(small_h5ad, small_adata):
    ds = SingleCellDataset(small_h5ad, Organism.HUMAN)
    ds.load_data()
    ds.validate()
    assert ds.adata.shape == small_adata.shape
    assert list(ds.get_input(DataType.METADATA).columns) == list(small_adata.obs.columns)
    ds.unload_data()
    assert DataType.ANNDATA not in ds.inputs and ds.organism is Organism.HUMAN


def test_counts_come_from_layers_when_x_is_normalised(small_adata, write_h5ad):
    adata = log_normalised(small_adata)
    adata.layers["counts"] = small_adata.X.copy()
    ds = SingleCellDataset(write_h5ad(adata))
    ds.load_data()
    x_ng, names = ds.counts()
    assert (x_ng != small_adata.X).nnz == 0
    assert list(names) == list(small_adata.var_names)


def test_counts_come_from_raw(small_adata, write_h5ad):
    adata = small_adata.copy()
    adata.raw = adata
    adata = log_normalised(adata)
    adata.raw = small_adata.copy()  # raw keeps counts, X is normalised
    ds = SingleCellDataset(write_h5ad(adata))
    ds.load_data()
    x_ng, _ = ds.counts()
    np.testing.assert_array_equal(x_ng.toarray(), small_adata.X.toarray())
