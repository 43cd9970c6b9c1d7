"""The runner protocol and the one run flow: what `execute` calls, in which order, and what it keeps."""

from __future__ import annotations

import numpy as np
import pytest

from czb_core.errors import DatasetValidationError, DeviceOutOfMemory
from czb_core.io.header import header_from_anndata
from czb_core.models.base import BaseModelImplementation
from czb_core.models.params import Param
from czb_core.models.registry import ModelCard, ModelConfig, VariantConfig
from czb_core.models.runner import LOADED_MODELS, RunOutput
from czb_core.schema.datasets import SingleCellDataset
from czb_core.schema.validators import BaseSingleCellValidator
from czb_core.types import DataType, ModelType, Organism
from tests.helpers.data import log_normalised


class SumsValidator(BaseSingleCellValidator):
    model_type = ModelType.BASELINE
    available_organisms = (Organism.HUMAN,)
    required_obs_keys = ()
    required_var_keys = ()


class Sums(SumsValidator, BaseModelImplementation):
    """A model whose embedding is (total counts x scale, detected genes): easy to check by hand."""

    params = (Param("scale", "float", 1.0, "multiplies the totals"),)
    default_batch_size = 4
    calls: list = []
    oom_above: int | None = None

    def load(self, weights_dir, device):
        Sums.calls.append(("load", weights_dir.name if weights_dir else None))
        self.model = {"offset": 0.0}

    def prepare(self, rows, manager):
        Sums.calls.append(("prepare", len(rows)))
        return manager.counts(rows)

    def embed(self, x_ng, batch_size, progress, cancel):
        self.batch_size_used = batch_size
        if self.oom_above is not None and batch_size > self.oom_above:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB")
        totals = np.asarray(x_ng.sum(1)).ravel() * self.args.scale + self.model["offset"]
        emb_nd = np.stack([totals, np.diff(x_ng.indptr)], axis=1).astype(np.float32)
        return RunOutput(emb_nd=emb_nd, obs={"total": totals}, facts={"cells": len(totals)})


def config(weights=None) -> ModelConfig:
    variant = VariantConfig("v", weights=weights or {})
    return ModelConfig("sums", "Sums", ModelType.BASELINE, "Sums", "", ModelCard([], "", 2, "", ""), {"v": variant},
                       "v")


@pytest.fixture(autouse=True)
def fresh():
    Sums.calls.clear()
    LOADED_MODELS.clear()
    yield
    LOADED_MODELS.clear()


def test_execute_prepares_embeds_and_keeps_facts(small_adata):
    runner = Sums(config(), scale="2")
    manager = runner.data_manager(header_from_anndata(small_adata)).bind(small_adata)
    output = runner.execute(manager, device="cpu")
    totals = np.asarray(small_adata.X.sum(1)).ravel()
    np.testing.assert_allclose(output.emb_nd[:, 0], 2 * totals, rtol=1e-6)
    assert output.batch_size == 4 and runner.report.facts["cells"] == 400
    assert Sums.calls == [("load", None), ("prepare", 400)]


def test_a_blocking_check_stops_before_the_data_is_read(small_adata):
    runner = Sums(config())
    manager = runner.data_manager(header_from_anndata(log_normalised(small_adata)))
    with pytest.raises(DatasetValidationError, match="raw integer counts"):
        runner.execute(manager, device="cpu", read_data=lambda: pytest.fail("the matrix must not be read"))
    assert Sums.calls == []


def test_cuda_oom_reports_the_batch_size_the_runner_used(small_adata):
    runner = Sums(config(), batch_size=16)
    runner.oom_above = 8
    manager = runner.data_manager(header_from_anndata(small_adata)).bind(small_adata)
    with pytest.raises(DeviceOutOfMemory) as err:
        runner.execute(manager, device="cpu")
    assert err.value.batch_size == 16


def test_the_model_stays_loaded_while_its_files_are_unchanged(small_adata, tmp_path):
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "weights.bin").write_bytes(b"1234")
    first = Sums(config({"model": str(weights)}))
    manager = first.data_manager(header_from_anndata(small_adata)).bind(small_adata)
    first.execute(manager, device="cpu")
    second = Sums(config({"model": str(weights)}))
    second.execute(manager, device="cpu")
    assert [c for c in Sums.calls if c[0] == "load"] == [("load", "w")] and second.weights_warm
    assert not first.weights_warm
    (weights / "weights.bin").write_bytes(b"12345")  # new files: loaded again
    third = Sums(config({"model": str(weights)}))
    third.execute(manager, device="cpu")
    assert not third.weights_warm and len([c for c in Sums.calls if c[0] == "load"]) == 2


def test_the_reference_run_ends_in_set_output(small_h5ad):
    dataset = SingleCellDataset(small_h5ad)
    report = Sums(config()).run(dataset, device="cpu")
    assert report.ok and dataset.get_output(ModelType.BASELINE, DataType.EMBEDDING).shape == (400, 2)


def test_run_output_refuses_misaligned_or_ambiguous_results():
    with pytest.raises(ValueError, match="exactly one"):
        RunOutput()
    with pytest.raises(ValueError, match="2 values for 3 cells"):
        RunOutput(emb_nd=np.zeros((3, 2)), obs={"x": np.zeros(2)})
    with pytest.raises(ValueError, match="genes_g"):
        RunOutput(pred_ng=np.zeros((3, 2)))
