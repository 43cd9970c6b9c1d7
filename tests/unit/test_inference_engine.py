"""The inference engine: one precision parameter, batches in the runner's order and groups, outputs back in
input order, progress and cancel between batches, and an out-of-memory batch retried at half its size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from czb_core.errors import Cancelled, ConfigError, DeviceOutOfMemory
from czb_core.models.inference import (
    autocast_dtype,
    longest_first,
    memory_batch_size,
    precision_name,
    run_batches,
    same_length_groups,
)
from czb_core.progress import CancelToken


def test_precision_means_the_same_for_every_model_on_the_cpu():
    assert autocast_dtype("auto", "cpu") is None  # fp32 on the CPU
    assert autocast_dtype("fp32", "cpu") is None
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16  # autocast on the CPU too: dtype bugs show here
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        autocast_dtype("fp16", "cpu")
    with pytest.raises(ConfigError, match="auto, fp32, bf16, fp16"):
        autocast_dtype("half", "cpu")
    assert [precision_name(autocast_dtype(p, "cpu")) for p in ("auto", "bf16")] == ["fp32", "bf16 autocast"]


def test_the_cpu_batch_size_is_the_runners_own():
    assert memory_batch_size("cpu", 1e9, cpu_batch=7, max_batch=64) == 7


def test_orders_and_groups():
    lengths_n = np.array([3, 5, 3, 9, 5, 3])
    np.testing.assert_array_equal(longest_first(lengths_n), [3, 1, 4, 0, 2, 5])
    assert [g.tolist() for g in same_length_groups(lengths_n)] == [[0, 2, 5], [1, 4], [3]]


def test_outputs_come_back_in_input_order_whatever_the_batches():
    x_nd = torch.arange(20, dtype=torch.float32).reshape(10, 2)
    seen = []

    def forward(rows_b):
        seen.append(rows_b.tolist())
        return x_nd[rows_b] * 2, x_nd[rows_b, 0]

    order = longest_first(np.array([1, 4, 2, 8, 5, 7, 1, 3, 6, 2]))
    batched = run_batches(forward, [order], 3, device="cpu")
    np.testing.assert_array_equal(batched.outputs[0], x_nd.numpy() * 2)
    np.testing.assert_array_equal(batched.outputs[1], x_nd[:, 0].numpy())
    assert [len(b) for b in seen] == [3, 3, 3, 1] and sum(seen, []) == order.tolist()
    assert batched.batch_size == 3 and batched.outputs[0].dtype == np.float32


def test_groups_are_never_mixed_in_a_batch():
    lengths_n = np.array([2, 3, 2, 3, 2])
    seen = []

    def forward(rows_b):
        seen.append(set(lengths_n[rows_b].tolist()))
        return torch.zeros(len(rows_b), 1)

    run_batches(forward, same_length_groups(lengths_n), 4, device="cpu")
    assert all(len(lengths) == 1 for lengths in seen) and len(seen) == 2


def test_an_out_of_memory_batch_is_retried_at_half_its_size_for_the_rest_of_the_run():
    sizes = []

    def forward(rows_b):
        sizes.append(len(rows_b))
        if len(rows_b) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.as_tensor(rows_b, dtype=torch.float32)[:, None]

    done = []
    batched = run_batches(forward, [np.arange(7)], 8, device="cpu", progress=lambda s, d, t: done.append((d, t)))
    assert sizes == [7, 4, 2, 2, 2, 1] and batched.batch_size == 2
    np.testing.assert_array_equal(batched.outputs[0][:, 0], np.arange(7))
    assert done == [(0, 7), (2, 7), (4, 7), (6, 7), (7, 7)]  # no cell counted twice


def test_out_of_memory_at_one_cell_is_the_jobs_error_and_other_errors_pass_through():
    def oom(rows_b):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(DeviceOutOfMemory):
        run_batches(oom, [np.arange(3)], 2, device="cpu")

    def broken(rows_b):
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError, match="not a memory problem"):
        run_batches(broken, [np.arange(3)], 2, device="cpu")


def test_cancel_is_checked_before_each_batch():
    token, calls = CancelToken(), []

    def forward(rows_b):
        calls.append(rows_b)
        token.cancel()
        return torch.zeros(len(rows_b), 1)

    with pytest.raises(Cancelled):
        run_batches(forward, [np.arange(6)], 2, device="cpu", cancel=token)
    assert len(calls) == 1


def test_bf16_runs_the_forward_under_autocast_and_returns_float32():
    linear = torch.nn.Linear(4, 3)

    def forward(rows_b):
        out = linear(torch.ones(len(rows_b), 4))
        assert out.dtype == torch.bfloat16
        return out

    batched = run_batches(forward, [np.arange(5)], 2, device="cpu", dtype=autocast_dtype("bf16", "cpu"))
    assert batched.outputs[0].dtype == np.float32 and batched.outputs[0].shape == (5, 3)


def test_a_run_without_cells_gives_empty_outputs_of_the_stated_width():
    batched = run_batches(lambda rows_b: None, [], 4, device="cpu", empty=[(6,)])
    assert batched.outputs[0].shape == (0, 6)
