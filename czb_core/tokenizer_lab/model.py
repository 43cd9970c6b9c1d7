"""The small classifier every tokenizer is judged with: a pre-norm transformer over the cell sentence.

Defaults follow the reference set-up: width 128, 2 layers, 4 heads, FFN 4 x width, GELU, dropout 0.1,
learned positions, a learnable zero-initialised CLS vector prepended, CLS pooling, a linear head. The
linear layers are muP (`mup.MuLinear`) with base width `base_width`, so a learning rate found at width
128 carries over to wider models. This module imports only torch and numpy (the GPU suite runs it on a
machine without anndata).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from czb_core.tokenizer_lab.mup import MuLinear, attention_scale

BASE_WIDTH = 128


@dataclass(frozen=True)
class ModelShape:
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.1
    base_width: int = BASE_WIDTH

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"width {self.d_model} is not divisible by {self.n_heads} heads")


class SelfAttention(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        d, base = shape.d_model, shape.base_width
        self.n_heads = shape.n_heads
        self.qkv = MuLinear(d, 3 * d, "hidden", base)
        self.out = MuLinear(d, d, "hidden", base)
        self.scale = attention_scale(d // shape.n_heads, base // shape.n_heads)
        self.dropout = shape.dropout

    def forward(self, x_bld: torch.Tensor, keep_bl: torch.Tensor) -> torch.Tensor:
        b, length, d = x_bld.shape
        q, k, v = self.qkv(x_bld).view(b, length, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        mask = keep_bl[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                                           scale=self.scale)
        return self.out(y.transpose(1, 2).reshape(b, length, d))


class PreNormBlock(nn.Module):
    """x + attention(norm(x)), then x + FFN(norm(x))."""

    def __init__(self, shape: ModelShape):
        super().__init__()
        d, base = shape.d_model, shape.base_width
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attention = SelfAttention(shape)
        self.ffn_in = MuLinear(d, 4 * d, "hidden", base)
        self.ffn_out = MuLinear(4 * d, d, "hidden", base)
        self.drop = nn.Dropout(shape.dropout)

    def forward(self, x_bld: torch.Tensor, keep_bl: torch.Tensor) -> torch.Tensor:
        x_bld = x_bld + self.drop(self.attention(self.norm1(x_bld), keep_bl))
        return x_bld + self.drop(self.ffn_out(self.drop(F.gelu(self.ffn_in(self.norm2(x_bld))))))


class TokenizedClassifier(nn.Module):
    """Fg + Fe (summed, or Fg alone under the identity reduce) and chromosome tokens -> transformer -> head.

    Inputs: `genes_bl` (pad index = number of genes at chromosome tokens and padding), `values_bl` (what
    Fe reads), `special_bl` (0 gene, 1 chromosome close, 2 + c chromosome c open). A position is padding
    when its gene is the pad index and its special code is 0.
    """

    def __init__(self, fg: nn.Module, fe: nn.Module, n_genes: int, n_classes: int, max_length: int,
                 shape: ModelShape, reduce: str = "sum", n_chromosomes: int = 0):
        super().__init__()
        d = shape.d_model
        self.fg, self.fe, self.reduce, self.pad_gene = fg, fe, reduce, n_genes
        self.chromosomes = nn.Embedding(n_chromosomes + 2, d) if n_chromosomes else None  # N(0, 1) at start
        self.positions = nn.Embedding(max_length + 1, d)
        self.cls = nn.Parameter(torch.zeros(d))
        self.blocks = nn.ModuleList(PreNormBlock(shape) for _ in range(shape.n_layers))
        self.norm = nn.LayerNorm(d)
        self.head = MuLinear(d, n_classes, "output", shape.base_width)

    def embed_tokens(self, genes_bl: torch.Tensor, values_bl: torch.Tensor, special_bl: torch.Tensor) -> torch.Tensor:
        x_bld = self.fg(genes_bl)
        if self.reduce == "sum":
            x_bld = x_bld + self.fe(values_bl)
        if self.chromosomes is not None:
            is_special = (special_bl > 0).unsqueeze(-1)
            x_bld = torch.where(is_special, self.chromosomes(special_bl), x_bld)
        is_gene = (genes_bl != self.pad_gene) | (special_bl > 0)
        return x_bld * is_gene.unsqueeze(-1)

    def forward(self, genes_bl: torch.Tensor, values_bl: torch.Tensor, special_bl: torch.Tensor) -> torch.Tensor:
        keep_bl = (genes_bl != self.pad_gene) | (special_bl > 0)
        x_bld = self.embed_tokens(genes_bl, values_bl, special_bl)
        b = x_bld.shape[0]
        x_bld = torch.cat([self.cls.expand(b, 1, -1), x_bld], dim=1)
        keep_bl = torch.cat([keep_bl.new_ones(b, 1), keep_bl], dim=1)
        x_bld = x_bld + self.positions(torch.arange(x_bld.shape[1], device=x_bld.device))
        for block in self.blocks:
            x_bld = block(x_bld, keep_bl)
        return self.head(self.norm(x_bld[:, 0]))
