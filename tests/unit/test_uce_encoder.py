"""UCE's network read from a state dict in the authors' layout: the same output as nn.TransformerEncoder
run one cell at a time, with either attention path; batches of one sentence length, cut to it, so the
batch size does not change an embedding; clear errors for files that are not UCE's."""

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


def real_shaped_sentences(n_cells: int, seed: int, rows: int = 66):
    """Lengths as the sampler makes them, 1 + 160 genes + 2 x (8 to 11 chromosome groups), in no order."""
    rng = np.random.default_rng(seed)
    lengths_n = 1 + 160 + 2 * rng.integers(8, 12, n_cells)
    tokens_nl = np.zeros((n_cells, 256), dtype=np.int64)
    for i, n in enumerate(lengths_n):
        tokens_nl[i, :n] = rng.integers(0, rows, n)
    return tokens_nl, lengths_n


def used_mask(lengths_n) -> torch.Tensor:
    return (torch.arange(1536)[None] < torch.from_numpy(lengths_n)[:, None]).float()


def centred_cosines(a_nd: np.ndarray, b_nd: np.ndarray) -> np.ndarray:
    a_nd, b_nd = a_nd - a_nd.mean(axis=0), b_nd - b_nd.mean(axis=0)
    return (a_nd * b_nd).sum(axis=1) / (np.linalg.norm(a_nd, axis=1) * np.linalg.norm(b_nd, axis=1))


def test_batches_equal_the_one_cell_reference(checkpoint):
    path, reference = checkpoint
    encoder = load_encoder(path, n_heads=20, device="cpu")
    tokens_nl, lengths_n = sentences(5, seed=0)
    lengths_n[3] = lengths_n[1]  # two cells of one length share a batch
    emb_nd = encoder.embed(tokens_nl, lengths_n, batch_size=2).outputs[0]
    expected = np.stack([reference_embedding(reference, tokens_nl[i, :n].tolist()) for i, n in enumerate(lengths_n)])
    np.testing.assert_allclose(emb_nd, expected, atol=2e-5)
    assert encoder.table_dtype == "float32" and encoder.dims.table_rows == 60 + 6 + 3


def test_each_batch_holds_one_length_and_is_cut_to_it(checkpoint, monkeypatch):
    path, _ = checkpoint
    encoder = load_encoder(path, n_heads=20, device="cpu")
    tokens_nl, lengths_n = real_shaped_sentences(40, seed=5)
    seen, forward = [], encoder.network.forward

    def recording(tokens_bl, used_bl):
        seen.append((tokens_bl.clone(), used_bl.clone()))
        return forward(tokens_bl, used_bl)

    monkeypatch.setattr(encoder.network, "forward", recording)
    done = []
    batched = encoder.embed(tokens_nl, lengths_n, batch_size=3, progress=lambda step, n, total: done.append(n))
    emb_nd = batched.outputs[0]
    values, counts = np.unique(lengths_n, return_counts=True)
    assert len(seen) == sum(-(-c // 3) for c in counts)  # ceil(cells of a length / batch) batches per length
    assert done == [0, *np.cumsum([len(t) for t, _ in seen])] and done[-1] == 40 and batched.batch_size == 3
    placed = set()
    for tokens_bl, used_bl in seen:
        width = tokens_bl.shape[1]
        assert torch.all(used_bl == 1)  # no pads: the float mask adds nothing
        rows = [i for i in range(40) if lengths_n[i] == width and i not in placed
                and any(torch.equal(torch.from_numpy(tokens_nl[i, :width]), t) for t in tokens_bl)]
        assert len(rows) == len(tokens_bl)  # every row of the batch is a cell of exactly this length
        placed.update(rows)
    assert placed == set(range(40))
    alone = np.stack([forward(torch.from_numpy(tokens_nl[i : i + 1, :n]), torch.ones(1, n)).detach().numpy()[0]
                      for i, n in enumerate(lengths_n)])
    np.testing.assert_allclose(emb_nd, alone, atol=2e-6)  # and the outputs come back in input order


def test_the_batch_size_leaves_embeddings_within_the_documented_figure(checkpoint):
    """The encoder docstring's figure: batches of 1 against 25, worst centred cosine >= 0.99999."""
    path, _ = checkpoint
    encoder = load_encoder(path, n_heads=20, device="cpu")
    tokens_nl, lengths_n = real_shaped_sentences(60, seed=6)
    cos_n = centred_cosines(encoder.embed(tokens_nl, lengths_n, batch_size=1).outputs[0],
                            encoder.embed(tokens_nl, lengths_n, batch_size=25).outputs[0])
    assert cos_n.min() >= 0.99999


def test_padding_would_change_the_embedding(checkpoint):
    """The float-mask quirk is kept in the network: +1 on a padded key, so the same sentence padded is
    another embedding (which is why batches never mix lengths)."""
    path, _ = checkpoint
    network = load_encoder(path, n_heads=20, device="cpu").network
    tokens_nl, lengths_n = real_shaped_sentences(1, seed=7)
    n = int(lengths_n[0])
    with torch.inference_mode():
        cut = network(torch.from_numpy(tokens_nl[:, :n]), torch.ones(1, n))
        padded = network(torch.from_numpy(tokens_nl), (torch.arange(256)[None] < n).float())
    assert float((cut - padded).abs().max()) > 1e-4


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
