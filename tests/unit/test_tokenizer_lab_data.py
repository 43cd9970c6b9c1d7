"""The tokenizer lab reads a dataset through the data manager, as model runners do: a CELLxGENE-shaped file
(log-normalised X, integer counts in raw.X with raw's own genes) trains on its counts, not on X normalised
a second time; gene ids, symbols and the organism come from the same place as for every model."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from czb_core.errors import InputError
from czb_core.io.reading import read_anndata
from czb_core.io.synthetic import pick_human_genes
from czb_core.tokenizer_lab.lab import SPLITS, LabSplit, TokenizerSetup, prepare_lab_data
from czb_core.tokenizer_lab.presets import parse_tokenizer
from czb_core.types import Organism
from tests.helpers.data import log_normalised

SPLIT = LabSplit("cell_type", "split", ("train",), ("val",), ("test",))


@pytest.fixture
def counts(small_adata):
    """Integer counts in X, every cell type in every part of the split."""
    adata = small_adata.copy()
    adata.obs["split"] = np.array(["train", "train", "val", "test"])[np.arange(adata.n_obs) % 4]
    return adata


def symbols_as_var_names(adata):
    """The other common layout: symbols in var_names, Ensembl ids in a var column."""
    adata = adata.copy()
    adata.var = pd.DataFrame({"gene_ids": adata.var_names.to_numpy()},
                             index=adata.var["feature_name"].astype(str).to_numpy())
    return adata


def counts_elsewhere(counts, location: str):
    """X log-normalised, the counts in `location`: raw.X over more genes than X (X was filtered after raw was
    kept, as in CELLxGENE files), or layers['counts'] over the same genes."""
    if location == "raw":
        shaped = log_normalised(counts)[:, 10:].copy()
        shaped.raw = counts
    else:
        shaped = log_normalised(counts)
        shaped.layers["counts"] = counts.X.copy()
    return shaped


@pytest.mark.parametrize("location", ["raw", "layers"])
@pytest.mark.parametrize("layout", ["ids in var_names", "symbols in var_names"])
def test_counts_outside_x_give_the_inputs_of_the_same_counts_in_x(counts, write_h5ad, location, layout):
    if layout == "symbols in var_names":
        counts = symbols_as_var_names(counts)
    expected = prepare_lab_data(counts, SPLIT)
    data = prepare_lab_data(read_anndata(write_h5ad(counts_elsewhere(counts, location))), SPLIT)
    assert data.x_ng.shape == expected.x_ng.shape == (counts.n_obs, counts.n_vars)
    np.testing.assert_array_equal(data.x_ng.toarray(), expected.x_ng.toarray())
    assert data.x_ng.dtype == np.float32
    np.testing.assert_array_equal(data.labels_n, expected.labels_n)
    assert all(np.array_equal(data.splits[p], expected.splits[p]) for p in SPLITS)
    ids = counts.var_names if layout == "ids in var_names" else counts.var["gene_ids"]
    symbols = counts.var["feature_name"] if layout == "ids in var_names" else counts.var_names
    np.testing.assert_array_equal(data.gene_ids, np.asarray(ids, dtype=str))
    np.testing.assert_array_equal(data.symbols, np.asarray(symbols, dtype=str))
    assert data.organism is expected.organism is Organism.HUMAN


def test_the_counts_are_normalised_once_to_1e4():
    """The lab's normalisation of hand-written cells; an empty cell stays empty."""
    genes = pick_human_genes(3, 0)
    x = np.array([[1, 3, 0], [0, 0, 0], [2, 0, 2], [0, 4, 0]], dtype=np.float32)
    obs = pd.DataFrame({"cell_type": ["a", "b", "a", "b"], "split": ["train", "train", "val", "test"]},
                       index=[f"c{i}" for i in range(4)])
    adata = ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=genes["gene_id"].to_numpy()))
    data = prepare_lab_data(adata, SPLIT)
    np.testing.assert_allclose(data.x_ng.toarray(), np.log1p([[2500, 7500, 0], [0, 0, 0], [5000, 0, 5000],
                                                              [0, 1e4, 0]]), rtol=1e-6)


def test_a_dataset_without_counts_is_refused(counts):
    with pytest.raises(InputError, match="needs raw integer counts"):
        prepare_lab_data(log_normalised(counts), SPLIT)


def test_the_organism_is_the_data_managers(counts):
    declared = prepare_lab_data(counts, SPLIT, Organism.MOUSE)
    assert declared.organism is Organism.MOUSE  # the user decides, and is told what the gene names say
    assert any("but the gene names say" in w for w in declared.warnings)
    anonymous = counts.copy()
    anonymous.var = pd.DataFrame(index=[f"feature-{i:04d}" for i in range(counts.n_vars)])
    data = prepare_lab_data(anonymous, SPLIT)
    assert data.organism is None
    with pytest.raises(InputError, match="cannot tell the organism from the gene names"):
        TokenizerSetup(parse_tokenizer("fg=identity,fe=zero,fc=chromosome"), data, 32)
