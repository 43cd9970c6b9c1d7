"""The PCA baseline of a dataset: computed once, kept by content hash, and recognised in a run record."""

import numpy as np

from czb_core.io.hashing import sha256_file
from czb_core.models import pipeline
from czb_core.models.pipeline import embed_file
from czb_core.service.baseline import baseline_embedding, is_the_baseline
from czb_core.tasks.baseline import baseline_path


def test_the_baseline_is_computed_once_and_equals_a_default_pca_run(small_h5ad, monkeypatch):
    first = baseline_embedding(small_h5ad)
    assert baseline_path(sha256_file(small_h5ad)).is_file()
    def recompute(*args, **kwargs):
        raise AssertionError("the cached baseline must not be computed again")

    monkeypatch.setattr(pipeline, "embed_file", recompute)
    np.testing.assert_array_equal(baseline_embedding(small_h5ad), first)
    monkeypatch.undo()
    run = embed_file(small_h5ad, "pca")
    np.testing.assert_array_equal(run.emb_nd, first)
    assert is_the_baseline(run.record)
    assert not is_the_baseline({**run.record, "params": {**run.record["params"], "n_comps": 10}})
    assert not is_the_baseline({**run.record, "model": "scvi"})
