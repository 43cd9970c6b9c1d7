"""scGPT's encoder as torch modules whose parameter names are the checkpoint's own state-dict keys.

Input per position: gene embedding (`Embedding`, then LayerNorm) plus value embedding (the value clamped
at 512, `Linear(1, d)`, ReLU, `Linear(d, d)`, LayerNorm). Then `nlayers` post-norm encoder layers:
`x = norm1(x + attention(x))`, `x = norm2(x + linear2(relu(linear1(x))))`, LayerNorm eps 1e-5, ReLU
feed-forward of `d_hid`, `nheads` heads; a padding key takes no part in any attention. Dropout is left
out: the model only ever runs in inference here. The heads the checkpoint also holds (expression,
MVC and classifier decoders) are not needed for cell embeddings and not built.

The attention's fused q;k;v projection is `self_attn.in_proj_{weight,bias}` ([3d, d], q rows first), the
layout of `torch.nn.MultiheadAttention`; the checkpoints store it as `self_attn.Wqkv.*` (the flash-attn
module the authors trained with), which `checkpoint_keys` renames. Attention runs through
`scaled_dot_product_attention` (`attention="sdpa"`) or as the explicit softmax of the scores
(`attention="eager"`, the reference speed the GPU suite compares against).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

VALUE_CLAMP = 512.0  # the value encoder's upper clamp
LAYER_NORM_EPS = 1e-5
ATTENTION_KINDS = ("sdpa", "eager")


class GeneEncoder(nn.Module):
    """`encoder.*`: token embedding, then LayerNorm."""

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.enc_norm = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS)

    def forward(self, genes_bl: torch.Tensor) -> torch.Tensor:
        return self.enc_norm(self.embedding(genes_bl))


class ValueEncoder(nn.Module):
    """`value_encoder.*`: a small MLP of the (binned) value, so bins keep their order and distance."""

    def __init__(self, d_model: int):
        super().__init__()
        self.linear1 = nn.Linear(1, d_model)
        self.linear2 = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS)

    def forward(self, values_bl: torch.Tensor) -> torch.Tensor:
        x_bl1 = values_bl.unsqueeze(-1).clamp(max=VALUE_CLAMP)
        return self.norm(self.linear2(F.relu(self.linear1(x_bl1))))


class SelfAttention(nn.Module):
    """`self_attn.*`: multi-head self-attention with a fused q;k;v projection."""

    def __init__(self, d_model: int, n_heads: int, attention: str = "sdpa"):
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        self.n_heads = n_heads
        self.attention = attention
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x_bld: torch.Tensor, attend_b11l: Optional[torch.Tensor]) -> torch.Tensor:
        """`attend_b11l`: True where a key takes part (None: every key does)."""
        b, length, d = x_bld.shape
        qkv_3bhld = F.linear(x_bld, self.in_proj_weight, self.in_proj_bias).view(
            b, length, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        q_bhld, k_bhld, v_bhld = qkv_3bhld.unbind(0)
        if self.attention == "sdpa":
            out_bhld = F.scaled_dot_product_attention(q_bhld, k_bhld, v_bhld, attn_mask=attend_b11l)
        else:
            scores_bhll = q_bhld @ k_bhld.transpose(-2, -1) / math.sqrt(d // self.n_heads)
            if attend_b11l is not None:
                scores_bhll = scores_bhll.masked_fill(~attend_b11l, float("-inf"))
            out_bhld = scores_bhll.softmax(-1) @ v_bhld
        return self.out_proj(out_bhld.transpose(1, 2).reshape(b, length, d))


class EncoderLayer(nn.Module):
    """`transformer_encoder.layers.{i}.*`: one post-norm layer."""

    def __init__(self, d_model: int, n_heads: int, d_hid: int, attention: str = "sdpa"):
        super().__init__()
        self.self_attn = SelfAttention(d_model, n_heads, attention)
        self.linear1 = nn.Linear(d_model, d_hid)
        self.linear2 = nn.Linear(d_hid, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS)

    def forward(self, x_bld: torch.Tensor, attend_b11l: Optional[torch.Tensor]) -> torch.Tensor:
        x_bld = self.norm1(x_bld + self.self_attn(x_bld, attend_b11l))
        return self.norm2(x_bld + self.linear2(F.relu(self.linear1(x_bld))))


class TransformerStack(nn.Module):
    """`transformer_encoder.*`: the layers, applied in order."""

    def __init__(self, d_model: int, n_heads: int, d_hid: int, n_layers: int, attention: str = "sdpa"):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d_model, n_heads, d_hid, attention) for _ in range(n_layers))

    def forward(self, x_bld: torch.Tensor, attend_b11l: Optional[torch.Tensor]) -> torch.Tensor:
        for layer in self.layers:
            x_bld = layer(x_bld, attend_b11l)
        return x_bld


class ScgptEncoder(nn.Module):
    """Gene and value embeddings through the layer stack: hidden states of every position."""

    def __init__(self, vocab_size: int, d_model: int, n_heads: int, d_hid: int, n_layers: int,
                 attention: str = "sdpa"):
        super().__init__()
        self.d_model = d_model
        self.encoder = GeneEncoder(vocab_size, d_model)
        self.value_encoder = ValueEncoder(d_model)
        self.transformer_encoder = TransformerStack(d_model, n_heads, d_hid, n_layers, attention)

    def forward(self, genes_bl: torch.Tensor, values_bl: torch.Tensor, attend_bl: torch.Tensor) -> torch.Tensor:
        """`attend_bl`: True at real tokens, False at padding. The mask is dropped when nothing is padded
        (SDPA then may pick its fastest kernel)."""
        x_bld = self.encoder(genes_bl) + self.value_encoder(values_bl)
        attend_b11l = None if bool(attend_bl.all()) else attend_bl[:, None, None, :]
        return self.transformer_encoder(x_bld, attend_b11l)


def checkpoint_keys(state: dict) -> dict:
    """The checkpoint's tensors under this module's names (`Wqkv` -> `in_proj_`)."""
    return {key.replace("self_attn.Wqkv.", "self_attn.in_proj_"): value for key, value in state.items()}
