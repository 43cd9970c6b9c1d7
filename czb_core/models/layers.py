"""Transformer layers shared by the runners whose checkpoints use PyTorch's encoder layout (scGPT, scGenePT,
UCE), with the checkpoints' own parameter names, so a state dict loads into them as it is.

One post-norm layer, `x = norm1(x + attention(x))`, `x = norm2(x + linear2(relu(linear1(x))))` (PyTorch's
default `TransformerEncoderLayer`, LayerNorm eps 1e-5, no dropout: these modules only ever run inference),
and its stack. The attention takes a pluggable mask, because the models pass different ones:
- a boolean mask, True where a key takes part (scGPT: padding keys take no part);
- a float mask, added to the logits (UCE passes `1 - used` as its authors do, so a padded key gets +1);
- None: every key takes part (SDPA may then pick its fastest kernel).
`attention="sdpa"` runs PyTorch's fused kernels; `"eager"` writes the softmax out, the reference speed
that the GPU suite compares against.

Imports torch and nothing of anndata: the GPU suite's bare python builds these layers.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-5
ATTENTION_KINDS = ("sdpa", "eager")


class SelfAttention(nn.Module):
    """`self_attn.*`: multi-head self-attention with a fused q;k;v projection ([3d, d], q rows first, the
    layout of `torch.nn.MultiheadAttention`)."""

    def __init__(self, d_model: int, n_heads: int, attention: str = "sdpa"):
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of {n_heads} heads")
        self.n_heads = n_heads
        self.attention = attention
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x_bld: torch.Tensor, mask_b11l: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`mask_b11l`: boolean (True: the key takes part), float (added to the logits) or None."""
        b, length, d = x_bld.shape
        qkv_3bhld = F.linear(x_bld, self.in_proj_weight, self.in_proj_bias).view(
            b, length, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        q_bhld, k_bhld, v_bhld = qkv_3bhld.unbind(0)
        if mask_b11l is not None and mask_b11l.is_floating_point():
            mask_b11l = mask_b11l.to(q_bhld.dtype)
        if self.attention == "sdpa":
            out_bhld = F.scaled_dot_product_attention(q_bhld, k_bhld, v_bhld, attn_mask=mask_b11l)
        else:
            scores_bhll = q_bhld @ k_bhld.transpose(-2, -1) / math.sqrt(d // self.n_heads)
            if mask_b11l is not None and mask_b11l.dtype == torch.bool:
                scores_bhll = scores_bhll.masked_fill(~mask_b11l, float("-inf"))
            elif mask_b11l is not None:
                scores_bhll = scores_bhll + mask_b11l
            out_bhld = scores_bhll.softmax(-1) @ v_bhld
        return self.out_proj(out_bhld.transpose(1, 2).reshape(b, length, d))


class PostNormLayer(nn.Module):
    """`transformer_encoder.layers.{i}.*`: one post-norm layer with a ReLU feed-forward of `d_hid`."""

    def __init__(self, d_model: int, n_heads: int, d_hid: int, attention: str = "sdpa"):
        super().__init__()
        self.self_attn = SelfAttention(d_model, n_heads, attention)
        self.linear1 = nn.Linear(d_model, d_hid)
        self.linear2 = nn.Linear(d_hid, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS)

    def forward(self, x_bld: torch.Tensor, mask_b11l: Optional[torch.Tensor] = None) -> torch.Tensor:
        x_bld = self.norm1(x_bld + self.self_attn(x_bld, mask_b11l))
        return self.norm2(x_bld + self.linear2(F.relu(self.linear1(x_bld))))


class PostNormStack(nn.Module):
    """`transformer_encoder.*`: `n_layers` post-norm layers, applied in order with one mask."""

    def __init__(self, d_model: int, n_heads: int, d_hid: int, n_layers: int, attention: str = "sdpa"):
        super().__init__()
        self.layers = nn.ModuleList(PostNormLayer(d_model, n_heads, d_hid, attention) for _ in range(n_layers))

    def forward(self, x_bld: torch.Tensor, mask_b11l: Optional[torch.Tensor] = None) -> torch.Tensor:
        for layer in self.layers:
            x_bld = layer(x_bld, mask_b11l)
        return x_bld
