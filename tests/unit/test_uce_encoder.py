"""UCE's network read from a state dict in the authors' layout: the same output as nn.TransformerEncoder
run one cell at a time, with either attention path, and clear errors for files that are not UCE's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_runners.uce.encoder import UceFormatError, bf16_is_exact, build_network, load_encoder
from tests.helpers.uce_files import reference_embedding, write_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("uce_encoder") / "4layer_model.torch"
    return path, write_checkpoint(path, n_gene_rows=60, n_chrom=6, seed=4)


def sentences(n_cells: int, seed: int, rows: int = 66):
    rng = np.random.default_rng(seed)
    lengths_n = rng.integers(2, 1536, n_cells)
    lengths_n[0] = 1536  # a cell without padding
    tokens_nl = np.zeros((n_cells, 1536), dtype=np.int64)
    for i, n in enumerate(lengths_n):
        tokens_nl[i, :n] = rng.integers(0, rows, n)
    return tokens_nl, lengths_n


def used_mask(lengths_n) -> torch.Tensor:
    return (torch.arange(1536)[None] < torch.from_numpy(lengths_n)[:, None]).float()


def test_batches_equal_the_one_cell_reference(checkpoint):
    path, reference = checkpoint
    encoder = load_encoder(path, n_heads=20, device="cpu")
    tokens_nl, lengths_n = sentences(5, seed=0)
    emb_nd = encoder.embed(tokens_nl, lengths_n, batch_size=2)
    expected = np.stack([reference_embedding(reference, tokens_nl[i, :n].tolist()) for i, n in enumerate(lengths_n)])
    np.testing.assert_allclose(emb_nd, expected, atol=2e-5)
    assert encoder.table_dtype == "float32" and encoder.dims.table_rows == 60 + 6 + 3


def test_eager_attention_equals_sdpa(checkpoint):
    path, _ = checkpoint
    state = torch.load(path, weights_only=True)
    tokens_nl, lengths_n = sentences(3, seed=1)
    tokens, used = torch.from_numpy(tokens_nl), used_mask(lengths_n)
    with torch.inference_mode():
        sdpa = build_network(state, 20, "cpu")(tokens, used)
        eager = build_network(state, 20, "cpu")
        for layer in eager.transformer_encoder.layers:
            layer.self_attn.attention = "eager"
        torch.testing.assert_close(eager(tokens, used), sdpa, atol=2e-6, rtol=0)


def test_bf16_autocast_stays_within_1e3_cosine_of_fp32_on_the_tiny_model(checkpoint):
    path, _ = checkpoint
    network = load_encoder(path, n_heads=20, device="cpu").network
    tokens_nl, lengths_n = sentences(4, seed=2)
    tokens, used = torch.from_numpy(tokens_nl), used_mask(lengths_n)
    with torch.inference_mode():
        fp32 = network(tokens, used)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = network(tokens, used)
    cosine = torch.nn.functional.cosine_similarity(fp32, bf16.float(), dim=1)
    assert float(cosine.min()) > 1 - 1e-3


def test_bf16_table_only_when_exact():
    assert bf16_is_exact(torch.randn(100, 8).to(torch.bfloat16).float())
    assert not bf16_is_exact(torch.randn(100, 8))


def test_a_state_dict_that_is_not_uces_is_refused(tmp_path, checkpoint):
    path, _ = checkpoint
    state = torch.load(path, weights_only=True)
    del state["pe_embedding.weight"]
    with pytest.raises(UceFormatError, match="no 'pe_embedding.weight'"):
        build_network(state, 20, "cpu")
    with pytest.raises(UceFormatError, match="not a multiple of the 7 attention heads"):
        build_network(torch.load(path, weights_only=True), 7, "cpu")
    (tmp_path / "junk.torch").write_bytes(b"not a checkpoint")
    with pytest.raises(UceFormatError, match="cannot be read as a UCE state dict"):
        load_encoder(tmp_path / "junk.torch", 20, "cpu")
