import numpy as np
import pytest

from czb_core.schema.datasets import SingleCellDataset
from czb_core.types import DataType, ModelType, Organism


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
    assert list(ds.inputs[DataType.METADATA].columns) == list(small_adata.obs.columns)
    ds.unload_data()
    assert DataType.ANNDATA not in ds.inputs and ds.organism is Organism.HUMAN
