"""Which GPUs the server sees and which queue a job goes to (torch's device count monkeypatched: no GPU here)."""

from __future__ import annotations

import pytest
import torch

from czb_core.errors import ConfigError
from czb_core.models.device import choose_device, cuda_devices, device_index, least_loaded


@pytest.fixture
def gpus(monkeypatch):
    def visible(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return visible


@pytest.mark.parametrize("count, expected", [(0, ()), (1, ("cuda:0",)), (3, ("cuda:0", "cuda:1", "cuda:2"))])
def test_each_visible_gpu_is_a_device(gpus, count, expected):
    gpus(count)
    assert cuda_devices() == expected


def test_a_job_goes_to_the_least_loaded_gpu_and_ties_to_the_lowest_index():
    assert least_loaded({"cuda:0": 2, "cuda:1": 0, "cuda:2": 1}) == "cuda:1"
    assert least_loaded({"cuda:1": 1, "cuda:0": 1, "cuda:10": 0, "cuda:2": 0}) == "cuda:2"
    assert least_loaded({"cuda:0": 0}) == "cuda:0"
    assert device_index("cuda:12") == 12 and device_index("cpu") == 0


@pytest.mark.parametrize("request_, loads, expected", [
    (None, {"cuda:0": 3, "cuda:1": 1}, "cuda:1"),
    ("auto", {"cuda:0": 0, "cuda:1": 1}, "cuda:0"),
    ("cuda", {"cuda:0": 2, "cuda:1": 2, "cuda:2": 1}, "cuda:2"),
    ("cuda:1", {"cuda:0": 0, "cuda:1": 9}, "cuda:1"),  # a named GPU is kept, however busy
    ("cpu", {"cuda:0": 0}, "cpu"),
    ("auto", {}, "cpu"),
])
def test_choose_device(request_, loads, expected):
    assert choose_device(request_, loads) == expected


@pytest.mark.parametrize("request_, loads, message", [
    ("cuda", {}, "no CUDA GPU is available; choose cpu"),
    ("cuda:2", {"cuda:0": 0, "cuda:1": 0}, r"no GPU cuda:2 here \(GPUs: cuda:0, cuda:1\)"),
    ("tpu", {"cuda:0": 0}, "unknown device 'tpu'"),
])
def test_a_device_that_is_not_there_is_refused(request_, loads, message):
    with pytest.raises(ConfigError, match=message):
        choose_device(request_, loads)
