"""scGPT's encoder as torch modules whose parameter names are the checkpoint's own state-dict keys.

Input per position: gene embedding (`Embedding`, then LayerNorm) plus value embedding (the value clamped
at 512, `Linear(1, d)`, ReLU, `Linear(d, d)`, LayerNorm). Then `nlayers` post-norm encoder layers:
the shared `czb_core.models.layers.PostNormStack` (ReLU feed-forward of `d_hid`, `nheads` heads) with a
boolean mask: a padding key takes no part in any attention. Dropout is left
out: the model only ever runs in inference here. The heads the checkpoint also holds (expression,
MVC and classifier decoders) are not needed for cell embeddings and not built.

The attention's fused q;k;v projection is `self_attn.in_proj_{weight,bias}` ([3d, d], q rows first), the
layout of `torch.nn.MultiheadAttention`; the checkpoints store it as `self_attn.Wqkv.*` (the flash-attn
module the authors trained with), which `checkpoint_keys` renames. Attention runs through
`scaled_dot_product_attention` (`attention="sdpa"`) or as the explicit softmax of the scores
(`attention="eager"`, the reference speed the GPU suite compares against).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from czb_core.models.layers import LAYER_NORM_EPS, PostNormStack

VALUE_CLAMP = 512.0  # the value encoder's upper clamp


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


class ScgptEncoder(nn.Module):
    """Gene and value embeddings through the layer stack: hidden states of every position."""

    def __init__(self, vocab_size: int, d_model: int, n_heads: int, d_hid: int, n_layers: int,
                 attention: str = "sdpa"):
        super().__init__()
        self.d_model = d_model
        self.encoder = GeneEncoder(vocab_size, d_model)
        self.value_encoder = ValueEncoder(d_model)
        self.transformer_encoder = PostNormStack(d_model, n_heads, d_hid, n_layers, attention)

    def forward(self, genes_bl: torch.Tensor, values_bl: torch.Tensor, attend_bl: torch.Tensor) -> torch.Tensor:
        """`attend_bl`: True at real tokens, False at padding. The mask is dropped when nothing is padded
        (SDPA then may pick its fastest kernel)."""
        x_bld = self.encoder(genes_bl) + self.value_encoder(values_bl)
        attend_b11l = None if bool(attend_bl.all()) else attend_bl[:, None, None, :]
        return self.transformer_encoder(x_bld, attend_b11l)


def checkpoint_keys(state: dict) -> dict:
    """The checkpoint's tensors under this module's names (`Wqkv` -> `in_proj_`)."""
    return {key.replace("self_attn.Wqkv.", "self_attn.in_proj_"): value for key, value in state.items()}
