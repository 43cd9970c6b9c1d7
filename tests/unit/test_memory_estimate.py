"""The GPU memory estimate of a run and the refusal it gives when the run cannot fit."""

from __future__ import annotations

import pytest

from czb_core.models.memory import (
    CUDA_CONTEXT_BYTES,
    GIB,
    MemoryEstimate,
    estimate_run_memory,
    estimate_variant_memory,
    fit_problem,
    gib,
)


def test_the_terms_add_up_as_documented():
    est = estimate_run_memory(n_params=1000, bytes_per_param=2, seq_len=10, batch_size=3, embedding_dim=8)
    per_token = 4 * (4 * 8 + 8 * 8)  # fp32 feed-forward (4 x width) plus 8 live copies of the width
    assert est.weights_bytes == 2000
    assert est.per_cell_bytes == 10 * per_token + 4 * 8  # plus the cell's output embedding
    assert est.total_bytes == 2000 + 3 * est.per_cell_bytes + CUDA_CONTEXT_BYTES


def test_attention_scores_grow_with_the_square_of_the_sequence():
    fused = estimate_run_memory(0, 4, 1000, 1, 16)
    eager = estimate_run_memory(0, 4, 1000, 1, 16, n_heads=4)
    assert eager.per_cell_bytes - fused.per_cell_bytes == 4 * 4 * 1000**2
    wide = estimate_run_memory(0, 4, 1000, 1, 16, ffn_dim=128)
    assert wide.per_cell_bytes - fused.per_cell_bytes == 1000 * 4 * (128 - 64)


def test_the_largest_batch_is_the_last_that_fits():
    est = MemoryEstimate(weights_bytes=10 * GIB, per_cell_bytes=GIB // 4, batch_size=64)
    free = 14 * GIB
    batch = est.largest_batch(free)
    assert batch == (14 * GIB - 10 * GIB - CUDA_CONTEXT_BYTES) // (GIB // 4) == 14
    assert MemoryEstimate(est.weights_bytes, est.per_cell_bytes, batch).total_bytes <= free
    assert MemoryEstimate(est.weights_bytes, est.per_cell_bytes, batch + 1).total_bytes > free
    assert est.largest_batch(10 * GIB) == 0


def test_the_refusal_gives_the_figures_and_the_fix():
    est = MemoryEstimate(weights_bytes=10 * GIB, per_cell_bytes=GIB // 4, batch_size=64)
    assert fit_problem(est, 40 * GIB, "cuda:0", batch_chosen=True) is None
    assert fit_problem(est, 14 * GIB, "cuda:1", batch_chosen=True) == (
        "needs ~26.5 GiB, GPU cuda:1 has 14.0 GiB free: lower batch_size to 14 or choose another GPU")
    assert "even at one cell per batch" in fit_problem(est, 10 * GIB, "cuda:0", batch_chosen=True)
    no_batch = fit_problem(MemoryEstimate(10 * GIB, GIB, 1), 9 * GIB, "cuda:0", batch_chosen=False)
    assert no_batch.startswith("needs ~11.5 GiB, GPU cuda:0 has 9.0 GiB free") and "batch_size" not in no_batch


def test_figures_never_flatter():
    assert gib(1.01 * GIB, up=True) == "1.1" and gib(1.09 * GIB, up=False) == "1.0"


def test_a_variant_estimate_reads_its_declared_sizes():
    est, chosen = estimate_variant_memory(400, {"model_input_size": 2048}, 512, batch_size=8)
    assert chosen and est.batch_size == 8 and est.weights_bytes == 400 * 2**20  # fp32 size = params x 4 bytes
    assert est.per_cell_bytes == 2048 * 4 * 12 * 512 + 4 * 512
    est, chosen = estimate_variant_memory(400, {"pad_length": 100, "n_heads": 2, "gpu_batch_size": 50}, 64, None)
    assert chosen and est.batch_size == 50 and est.per_cell_bytes == 100 * 4 * 12 * 64 + 4 * 2 * 100**2 + 4 * 64
    est, chosen = estimate_variant_memory(None, {}, 64, None)  # the runner sizes its batch itself
    assert not chosen and est.batch_size == 1 and est.weights_bytes == 0
    assert estimate_variant_memory(100, {}, None, 8) is None


def test_impossible_terms_are_refused():
    with pytest.raises(ValueError, match="batch size"):
        estimate_run_memory(10, 4, 10, 0, 8)
    with pytest.raises(ValueError, match="non-negative"):
        estimate_run_memory(-1, 4, 10, 1, 8)
