"""The TranscriptFormer network for inference, with the module names of the authors' state dict.

Per cell (embedding mode, the one the authors' inference uses):
- gene vectors: the frozen ESM-2 table row of each token through an MLP (Linear, ReLU, LayerNorm,
  Dropout, Linear); the input is right-shifted: `[START]` then the genes but the last, and one learned
  vector per aux column (the assay) is prepended;
- counts ride along the same way (1 for `[START]` and the aux tokens) and become an attention bias
  `log1p(count_key + eps)` on every allowed key, the query's own position included;
- layers: `x = norm1(x); x = attn(x) + x; x = norm2(x); x = W2 act(W1 x) + x` (the residual adds the
  normalised x); attention scores `q.k / sqrt(d)` plus the count bias, then soft-capped
  `cap * tanh(clamp(s, +-1e6) / cap)`, over keys that are not later (causal) and not padding (an aux
  token equal to an `unknown` id counts as padding);
- the cell embedding: the gene outputs at non-pad positions of the shifted input, summed and divided
  by `seq_len`, the padded length (not by the number of genes);
- the log-likelihood output: a count head on [gene output, vector of the position's own gene] gives a
  logit per gene; with the softmax link, mu = masked softmax over the cell's genes x the cell's total
  (clipped) count; the per-gene zero-truncated Poisson negative log-likelihood of the count, averaged
  over the cell's genes, is what the authors report as `llh` (lower = more likely).

A cell uses only its expressed genes and one more position, so batches are padded to their longest
cell (at most `seq_len`), not to `seq_len`: causal attention makes the earlier positions' outputs
independent of later padding, and the `seq_len` divisor is kept. The count target at position
`seq_len - 1` is 1, as the authors' code sets it.

Attention: `flex` (PyTorch FlexAttention with the bias and soft-cap as a score modifier and a block
mask; compiled on CUDA) or `eager` (the same arithmetic as explicit matrix products). SDPA cannot do
it: the soft-cap is applied after the bias, so no additive mask expresses it.

Imports torch and numpy only (the GPU suite runs it on a bare python).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

HARD_CAP = 1e6
ATTENTION_BACKENDS = ("flex", "eager")
AUX_PREFIX = "aux_embeddings."


@dataclass(frozen=True)
class NetSpec:
    """What the network needs to know besides its weights."""

    vocab_size: int
    table_dim: int  # width of the ESM-2 table
    embed_dim: int
    num_heads: int
    num_layers: int
    model_dim: int  # feed-forward width
    activation: str
    attn_bias: bool
    fw_bias: bool
    softcap: float
    seq_len: int
    log_counts_eps: float
    mu_link_fn: str
    softplus_approx: bool
    aux_sizes: tuple[tuple[str, int], ...]  # (column, vocabulary size) in token order
    aux_unknown_ids: tuple[int, ...]
    start_id: int
    pad_id: int
    block_len: int = 128


class Mlp(nn.Module):
    """Linear, ReLU, LayerNorm, Dropout, Linear: state-dict keys layers.0, layers.2, layers.4."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.LayerNorm(d_hidden), nn.Dropout(0.0),
                                    nn.Linear(d_hidden, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GeneEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, table_dim: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, table_dim)
        self.embedding.weight.requires_grad_(False)
        self.mlp = Mlp(table_dim, embed_dim, embed_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embedding(tokens))


class SelfAttention(nn.Module):
    """Q, K, V and output projections as `linears.0-3`."""

    def __init__(self, d_model: int, n_heads: int, bias: bool):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.linears = nn.ModuleList([nn.Linear(d_model, d_model, bias=bias) for _ in range(4)])

    def forward(self, x_bld: torch.Tensor, attend) -> torch.Tensor:
        b, s, d = x_bld.shape
        q, k, v = (lin(x_bld).view(b, s, self.n_heads, self.d_head).transpose(1, 2) for lin in self.linears[:3])
        o_bhld = attend(q, k, v)
        return self.linears[3](o_bhld.transpose(1, 2).reshape(b, s, d))


class Layer(nn.Module):
    def __init__(self, spec: NetSpec):
        super().__init__()
        self.linear1 = nn.Linear(spec.embed_dim, spec.model_dim, bias=spec.fw_bias)
        self.linear2 = nn.Linear(spec.model_dim, spec.embed_dim, bias=spec.fw_bias)
        self.self_attn = SelfAttention(spec.embed_dim, spec.num_heads, spec.attn_bias)
        self.norm1 = nn.LayerNorm(spec.embed_dim)
        self.norm2 = nn.LayerNorm(spec.embed_dim)
        self.activation = {"relu": nn.ReLU(), "gelu": nn.GELU(), "silu": nn.SiLU()}[spec.activation]

    def forward(self, x: torch.Tensor, attend) -> torch.Tensor:
        x = self.norm1(x)
        x = self.self_attn(x, attend) + x
        x = self.norm2(x)
        return self.linear2(self.activation(self.linear1(x))) + x


class Encoder(nn.Module):
    def __init__(self, spec: NetSpec):
        super().__init__()
        self.encoder_layers = nn.ModuleList([Layer(spec) for _ in range(spec.num_layers)])


class CountHead(nn.Module):
    """Per-gene bias `gene_embedding` plus an MLP of [gene output, own gene vector]."""

    def __init__(self, vocab_size: int, embed_dim: int):
        super().__init__()
        self.gene_embedding = nn.Embedding(vocab_size, 1)
        self.mlp = Mlp(2 * embed_dim, 2 * embed_dim // 4, 1)

    def forward(self, conditioned_bwc: torch.Tensor, tokens_bw: torch.Tensor) -> torch.Tensor:
        return (self.gene_embedding(tokens_bw) + self.mlp(conditioned_bwc)).squeeze(-1)


@dataclass
class NetOutput:
    emb_bd: torch.Tensor  # float32 cell embeddings
    nll_b: torch.Tensor  # float32 mean zero-truncated Poisson NLL per cell (the authors' `llh`)
    gene_out_bwd: Optional[torch.Tensor] = None  # the output whose target is the gene at each position


class TranscriptformerNet(nn.Module):
    """The inference part of the model; `load_state_dict` takes the authors' `model_weights.pt`
    (less the gene-id head, which no cell output needs)."""

    def __init__(self, spec: NetSpec):
        super().__init__()
        self.spec = spec
        self.gene_embeddings = GeneEmbeddings(spec.vocab_size, spec.table_dim, spec.embed_dim)
        self.aux_embeddings = nn.ModuleDict({c: nn.Embedding(n, spec.embed_dim) for c, n in spec.aux_sizes})
        self.transformer_encoder = Encoder(spec)
        self.mu = CountHead(spec.vocab_size, spec.embed_dim)

    def forward(self, tokens_bw: torch.Tensor, counts_bw: torch.Tensor, aux_ba: torch.Tensor, clip_counts: float,
                attention: str = "eager", keep_gene_outputs: bool = False) -> NetOutput:
        """Outputs of cells whose genes are `tokens_bw` (padded with `[PAD]`) and `counts_bw` (clipped to
        `clip_counts`)."""
        spec = self.spec
        b, w = tokens_bw.shape
        n_aux = aux_ba.shape[1]
        gene_vec_bwd = self.gene_embeddings(tokens_bw)
        start_vec_d = self.gene_embeddings(tokens_bw.new_full((1,), spec.start_id))[0]
        shifted_bw = torch.cat([tokens_bw.new_full((b, 1), spec.start_id), tokens_bw[:, :-1]], dim=1)
        x_bld = torch.cat([start_vec_d.expand(b, 1, -1), gene_vec_bwd[:, :-1]], dim=1)
        if n_aux:
            aux_bad = torch.stack([emb(aux_ba[:, i]) for i, emb in enumerate(self.aux_embeddings.values())], dim=1)
            x_bld = torch.cat([aux_bad.to(x_bld.dtype), x_bld], dim=1)
        counts_bl = torch.cat([counts_bw.new_ones(b, n_aux + 1), counts_bw[:, :-1]], dim=1)
        bias_bl = torch.log1p(counts_bl + spec.log_counts_eps)
        gene_key_bw = shifted_bw != spec.pad_id
        aux_key_ba = ~torch.isin(aux_ba, aux_ba.new_tensor(spec.aux_unknown_ids))
        key_valid_bl = torch.cat([aux_key_ba, gene_key_bw], dim=1)
        attend = make_attention(attention, key_valid_bl, bias_bl, spec.softcap, spec.block_len)
        for layer in self.transformer_encoder.encoder_layers:
            x_bld = layer(x_bld, attend)
        gene_out_bwd = x_bld[:, n_aux:]
        emb_bd = (gene_out_bwd.float() * gene_key_bw[..., None]).sum(1) / spec.seq_len
        logit_bw = self.mu(torch.cat([gene_out_bwd, gene_vec_bwd.to(gene_out_bwd.dtype)], dim=-1), tokens_bw)
        nll_b = count_nll(logit_bw.float(), tokens_bw, counts_bw, clip_counts, spec)
        return NetOutput(emb_bd, nll_b, gene_out_bwd.float() if keep_gene_outputs else None)


def count_nll(logit_bw: torch.Tensor, tokens_bw: torch.Tensor, counts_bw: torch.Tensor, clip_counts: float,
              spec: NetSpec) -> torch.Tensor:
    """Mean over each cell's genes of the zero-truncated Poisson NLL of its count under the count head."""
    eps = spec.log_counts_eps
    is_pad_bw = tokens_bw == spec.pad_id
    if spec.mu_link_fn == "softmax":
        mu_bw = torch.softmax(logit_bw.masked_fill(is_pad_bw, float("-inf")), dim=1) * counts_bw.sum(1, keepdim=True)
    else:
        mu_bw = LINKS[spec.mu_link_fn](logit_bw)
    target_bw = counts_bw.clone()
    if target_bw.shape[1] == spec.seq_len:
        target_bw[:, -1] = 1.0
    target_bw = target_bw.clamp(min=eps, max=clip_counts)
    rate_bw = mu_bw + eps
    if spec.softplus_approx:
        log_norm_bw = torch.clamp(rate_bw - F.softplus(-rate_bw), min=0.0)
    else:
        log_norm_bw = torch.clamp(torch.where(rate_bw <= 5, torch.log1p(torch.expm1(rate_bw)), rate_bw), min=0.0)
    nll_bw = -target_bw * torch.log(rate_bw) + log_norm_bw + torch.lgamma(target_bw + 1)
    nll_bw = nll_bw.masked_fill(is_pad_bw, 0.0)
    return nll_bw.sum(1) / (~is_pad_bw).sum(1)


LINKS = {"sigmoid": torch.sigmoid, "softplus": F.softplus, "relu": torch.relu, "linear": lambda x: x,
         "exp": torch.exp, "log": torch.log, "tanh": torch.tanh}


def softcap(score: torch.Tensor, cap: float) -> torch.Tensor:
    if not cap > 0:
        return score
    return cap * torch.tanh(score.clamp(-HARD_CAP, HARD_CAP) / cap)


def make_attention(backend: str, key_valid_bl: torch.Tensor, bias_bl: torch.Tensor, cap: float, block_len: int):
    """`attend(q, k, v)` for this batch: causal, padding keys excluded, count bias, soft-cap."""
    if backend == "eager":
        return _eager_attention(key_valid_bl, bias_bl, cap)
    if backend == "flex":
        return _flex_attention(key_valid_bl, bias_bl, cap, block_len)
    raise ValueError(f"attention must be one of {', '.join(ATTENTION_BACKENDS)}, got {backend!r}")


def _eager_attention(key_valid_bl: torch.Tensor, bias_bl: torch.Tensor, cap: float):
    length = key_valid_bl.shape[1]
    causal_ll = torch.ones(length, length, dtype=torch.bool, device=key_valid_bl.device).tril()
    allowed_b1ll = (causal_ll[None] & key_valid_bl[:, None, :])[:, None]
    any_key_b1l1 = allowed_b1ll.any(-1, keepdim=True)  # False only for an unknown aux token's own query

    def attend(q, k, v):
        score = torch.matmul(q, k.transpose(-2, -1)).float() / math.sqrt(q.shape[-1])
        score = softcap(score + bias_bl[:, None, None, :], cap)
        probs = torch.softmax(score.masked_fill(~allowed_b1ll, float("-inf")), dim=-1)
        probs = torch.where(any_key_b1l1, probs, 0.0)  # a query without keys outputs 0, as FlexAttention's does
        return torch.matmul(probs.to(v.dtype), v)

    return attend


@lru_cache(maxsize=None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex_attention(key_valid_bl: torch.Tensor, bias_bl: torch.Tensor, cap: float, block_len: int):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    b, length = key_valid_bl.shape

    def mask_mod(b_idx, h_idx, q_idx, kv_idx):
        return (q_idx >= kv_idx) & key_valid_bl[b_idx, kv_idx]

    def score_mod(score, b_idx, h_idx, q_idx, kv_idx):
        return softcap(score + bias_bl[b_idx, kv_idx], cap)

    block_mask = create_block_mask(mask_mod, b, None, length, length, device=key_valid_bl.device,
                                   BLOCK_SIZE=block_len)
    run = _compiled_flex() if key_valid_bl.device.type == "cuda" else flex_attention

    def attend(q, k, v):
        return run(q, k, v, score_mod=score_mod, block_mask=block_mask)

    return attend
