"""The Dataset page's history: versions beneath their dataset, shapes from file metadata, version names."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from czb_core.models.params import Param, ParamSchema
from czb_core.service.fixes import version_name
from czb_core.service.history import dataset_shape, version_tree
from czb_core.service.workspace import DatasetRecord

pytestmark = pytest.mark.unit


def record(sha, created, parent=None, owner="ana"):
    return DatasetRecord(id=f"{owner}-{sha}", sha256=sha, name=sha, path=Path(sha), owner=owner, created_at=created,
                         size_bytes=1, parent_sha256=parent)


def test_versions_follow_their_dataset_newest_first():
    records = [record("a", "2026-01-01"), record("b", "2026-01-03"), record("a1", "2026-01-02", "a"),
               record("a2", "2026-01-04", "a"), record("a1x", "2026-01-05", "a1"),
               record("orphan", "2026-01-06", "deleted")]
    tree = [(e.record.sha256, e.depth) for e in version_tree(records)]
    assert tree == [("orphan", 0), ("b", 0), ("a", 0), ("a2", 1), ("a1", 1), ("a1x", 2)]


def test_shape_from_metadata_of_h5ad_and_10x(small_adata, write_h5ad, tmp_path):
    assert dataset_shape(write_h5ad(small_adata)) == (small_adata.n_obs, small_adata.n_vars)
    dense = small_adata.copy()
    dense.X = dense.X.toarray()
    assert dataset_shape(write_h5ad(dense)) == (small_adata.n_obs, small_adata.n_vars)
    tenx = tmp_path / "filtered.h5"
    with h5py.File(tenx, "w") as f:
        f.create_group("matrix").create_dataset("shape", data=np.array([33538, 1200]))
    assert dataset_shape(tenx) == (1200, 33538)
    (tmp_path / "text.h5ad").write_text("not hdf5")
    assert dataset_shape(tmp_path / "text.h5ad") is None and dataset_shape(tmp_path / "gone.h5ad") is None


def test_fix_versions_are_named_after_the_dataset_not_its_file():
    assert version_name("pbmc.h5ad", "symbols_to_ids") == "pbmc · symbols mapped"
    assert version_name("pbmc · symbols mapped.h5ad", "batch_key") == "pbmc · symbols mapped · batch key built"
    assert version_name("filtered.H5", "orthologs") == "filtered · orthologs (cross-species)"


def test_suggested_columns_fill_only_empty_column_parameters():
    schema = ParamSchema([Param("batch_key", "str", "", "batch column", obs_column=True),
                          Param("label_key", "str", "cell_type", "labels", obs_column=True),
                          Param("n_latent", "int", 10, "size")])
    suggested = schema.suggested({"batch_key": "donor", "label_key": "type", "n_latent": "3", "absent": "x"})
    assert suggested == {"batch_key": "donor", "label_key": "cell_type", "n_latent": 10}
    assert schema.suggested({"batch_key": None})["batch_key"] == ""
