"""TranscriptFormer attention on a hand-worked 4-token example, both backends, and the NLL formula.

Positions: 0 the assay token (count 1), 1 `[START]` (count 1), 2 a gene (count 3), 3 padding (count 0).
With q = k = 0 every raw score is 0, so a score is the soft-capped count bias of its key,
`10 tanh(log1p(c + 1e-6) / 10)`: 0.692039 for c = 1 and 1.377482 for c = 3; with v the identity,
each output row is the attention distribution itself.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from model_runners.transcriptformer.network import NetSpec, count_nll, make_attention, softcap

W1 = math.exp(0.692039)  # weight of a key with count 1 (the assay token, [START])
W3 = math.exp(1.377482)  # weight of the gene with count 3


def attention_rows(backend: str, assay_known: bool) -> np.ndarray:
    key_valid = torch.tensor([[assay_known, True, True, False]])
    bias = torch.log1p(torch.tensor([[1.0, 1.0, 3.0, 0.0]]) + 1e-6)
    attend = make_attention(backend, key_valid, bias, cap=10.0, block_len=128)
    q = k = torch.zeros(1, 1, 4, 4)
    v = torch.eye(4)[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return attend(q, k, v)[0, 0].numpy()


@pytest.mark.parametrize("backend", ["eager", "flex"])
def test_causal_mask_count_bias_and_softcap_by_hand(backend):
    assert softcap(torch.tensor(math.log(2.0)), 10.0).item() == pytest.approx(0.692039, abs=1e-6)
    expected = np.array([
        [1, 0, 0, 0],  # the assay token sees only itself
        [W1, W1, 0, 0],  # [START] sees the assay token and itself, equal counts
        [W1, W1, W3, 0],  # the gene position also sees itself: the bias covers the diagonal
        [W1, W1, W3, 0],  # a padding query sees the earlier keys, never the padding key
    ])
    expected = expected / expected.sum(1, keepdims=True)
    np.testing.assert_allclose(attention_rows(backend, True), expected, atol=1e-6)


@pytest.mark.parametrize("backend", ["eager", "flex"])
def test_an_unknown_assay_token_is_a_padding_key(backend):
    rows = attention_rows(backend, False)
    np.testing.assert_allclose(rows[0], 0, atol=0)  # its own query has no key: output 0, never NaN
    np.testing.assert_allclose(rows[1], [0, 1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(rows[2], np.array([0, W1, W3, 0]) / (W1 + W3), atol=1e-6)


def test_softcap_clamps_before_tanh_and_zero_means_off():
    assert softcap(torch.tensor(1e9), 10.0).item() == pytest.approx(10.0)
    assert softcap(torch.tensor(35.0), 0.0).item() == 35.0


def spec(seq_len: int) -> NetSpec:
    return NetSpec(vocab_size=10, table_dim=4, embed_dim=4, num_heads=1, num_layers=1, model_dim=4, activation="gelu",
                   attn_bias=False, fw_bias=False, softcap=10.0, seq_len=seq_len, log_counts_eps=1e-6,
                   mu_link_fn="softmax", softplus_approx=True, aux_sizes=(), aux_unknown_ids=(), start_id=2, pad_id=1)


def test_nll_by_hand_and_the_last_full_position_counts_one():
    # two genes with counts 2 and 1, equal logits: mu = 0.5 * 3 = 1.5 each; the padding position is left out
    tokens = torch.tensor([[7, 8, 1]])
    counts = torch.tensor([[2.0, 1.0, 0.0]])
    rate = 1.5 + 1e-6
    log_norm = rate - math.log1p(math.exp(-rate))  # the authors' softplus approximation of log(e^mu - 1)
    nll = [-c * math.log(rate) + log_norm + math.lgamma(c + 1) for c in (2.0, 1.0)]
    got = count_nll(torch.zeros(1, 3), tokens, counts, 30.0, spec(seq_len=8)).item()
    assert got == pytest.approx(sum(nll) / 2, rel=1e-6)
    # at full length the last position's target count is 1, whatever the count was
    full = count_nll(torch.zeros(1, 2), torch.tensor([[7, 8]]), torch.tensor([[2.0, 5.0]]), 30.0, spec(seq_len=2))
    rate = 3.5 + 1e-6
    log_norm = rate - math.log1p(math.exp(-rate))
    expected = [-c * math.log(rate) + log_norm + math.lgamma(c + 1) for c in (2.0, 1.0)]
    assert full.item() == pytest.approx(sum(expected) / 2, rel=1e-6)


def test_contextual_gene_embeddings_are_the_outputs_whose_target_is_the_gene():
    from model_runners.transcriptformer.cells import TokenizedCells
    from model_runners.transcriptformer.inference import CellEncoder, contextual_gene_embeddings
    from model_runners.transcriptformer.network import TranscriptformerNet

    net_spec = NetSpec(vocab_size=12, table_dim=4, embed_dim=8, num_heads=2, num_layers=2, model_dim=8,
                       activation="gelu", attn_bias=False, fw_bias=False, softcap=10.0, seq_len=5,
                       log_counts_eps=1e-6, mu_link_fn="softmax", softplus_approx=True,
                       aux_sizes=(("assay", 3),), aux_unknown_ids=(0,), start_id=2, pad_id=1)
    torch.manual_seed(0)
    encoder = CellEncoder(TranscriptformerNet(net_spec).eval(), "cpu", "fp32", "eager")
    cells = TokenizedCells(np.array([7, 8, 9, 10, 9, 11, 8]), np.array([3, 1, 2, 5, 1, 4, 2], np.float32),
                           np.array([0, 3, 4, 7]), np.array([[1], [2], [1]]))
    cell_k, gene_k, emb_kd = contextual_gene_embeddings(encoder, cells, {8: "G8", 10: "G10"}, 30.0, batch_size=2)
    assert cell_k.tolist() == [0, 1, 2] and gene_k.tolist() == ["G8", "G10", "G8"]
    for k, (cell, position) in enumerate([(0, 1), (1, 0), (2, 2)]):  # where the gene sits in its cell
        tokens, counts = cells.padded(np.array([cell]), 5, 1)
        with torch.no_grad():
            out = encoder.net(torch.from_numpy(tokens), torch.from_numpy(counts),
                              torch.from_numpy(cells.aux_na[[cell]]), 30.0, keep_gene_outputs=True)
        np.testing.assert_allclose(emb_kd[k], out.gene_out_bwd[0, position].numpy(), atol=1e-6)
