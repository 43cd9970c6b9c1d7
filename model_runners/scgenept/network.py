"""scGenePT as torch modules whose names are the fine-tuned checkpoint's own state-dict keys.

Per gene position the input is the sum of: scGPT's gene-token embedding (`encoder.*`) and value
embedding (`value_encoder.*`), both shared with the scGPT runner; zero or more text-embedding encoders
(a fine-tuned `[vocab, 1536]` table, a projection to `d`, LayerNorm: `genept_encoder.*` with the projection
named `proj_layer`, `gopt_encoder_{c,f,p}.*` with it named `fc`); and the perturbation flag embedding
(`pert_encoder`, 0 = not perturbed, 1 = perturbed, 2 = padding). The sum is taken in fp32, normalised
(`ln`), read by scGPT's post-norm layer stack (`transformer_encoder.*`), and the expression decoder
(`decoder.fc`: Linear, LeakyReLU, Linear, LeakyReLU, Linear to 1) gives each gene's predicted expression,
in the space of the input (log-normalised), not a change. The checkpoint's `cls_decoder` is never used.

Imports torch (and the scGPT encoder parts), not anndata: the GPU suite imports this module.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from czb_core.models.layers import LAYER_NORM_EPS, PostNormStack
from model_runners.scgpt.encoder import GeneEncoder, ValueEncoder

N_PERT_FLAGS = 3  # not perturbed, perturbed, padding
GENEPT_ENCODER = "genept_encoder"
GO_ENCODER_PREFIX = "gopt_encoder_"


class TextEncoder(nn.Module):
    """A gene's text embedding (a table row), projected to the model width and normalised. The projection's
    attribute name differs between the two kinds of encoder, so it is given."""

    def __init__(self, vocab_size: int, text_dim: int, d_model: int, projection_name: str):
        super().__init__()
        self.projection_name = projection_name
        self.embedding = nn.Embedding(vocab_size, text_dim)
        setattr(self, projection_name, nn.Linear(text_dim, d_model))
        self.enc_norm = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS)

    def forward(self, genes_bl: torch.Tensor) -> torch.Tensor:
        projection = getattr(self, self.projection_name)
        return self.enc_norm(projection(self.embedding(genes_bl).float()))


class ExpressionDecoder(nn.Module):
    """`decoder.fc.*`: one predicted value per position."""

    def __init__(self, d_model: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(d_model, d_model), nn.LeakyReLU(), nn.Linear(d_model, d_model),
                                nn.LeakyReLU(), nn.Linear(d_model, 1))

    def forward(self, hidden_bld: torch.Tensor) -> torch.Tensor:
        return self.fc(hidden_bld).squeeze(-1)


def projection_name(encoder_name: str) -> str:
    """`proj_layer` for the NCBI / UniProt encoder, `fc` for the GO ones."""
    if encoder_name == GENEPT_ENCODER:
        return "proj_layer"
    if encoder_name.startswith(GO_ENCODER_PREFIX):
        return "fc"
    raise ValueError(f"unknown text encoder {encoder_name!r}; expected {GENEPT_ENCODER} or {GO_ENCODER_PREFIX}<c|f|p>")


class ScGenePT(nn.Module):
    """Expression of every gene of a cell under perturbation flags, from the cell's control expression."""

    def __init__(self, vocab_size: int, d_model: int, n_heads: int, d_hid: int, n_layers: int,
                 text_encoders: Sequence[str] = (), text_dim: Optional[int] = None, attention: str = "sdpa"):
        super().__init__()
        self.text_encoder_names = tuple(text_encoders)
        if self.text_encoder_names and not text_dim:
            raise ValueError("text encoders need the width of their embedding table (text_dim)")
        self.encoder = GeneEncoder(vocab_size, d_model)
        self.value_encoder = ValueEncoder(d_model)
        for name in self.text_encoder_names:
            setattr(self, name, TextEncoder(vocab_size, text_dim, d_model, projection_name(name)))
        self.pert_encoder = nn.Embedding(N_PERT_FLAGS, d_model)
        self.ln = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS)
        self.transformer_encoder = PostNormStack(d_model, n_heads, d_hid, n_layers, attention)
        self.decoder = ExpressionDecoder(d_model)

    def forward(self, genes_bl: torch.Tensor, values_bl: torch.Tensor, flags_bl: torch.Tensor) -> torch.Tensor:
        """`pred_bl`: every position is a real gene (no padding), so no attention mask."""
        x_bld = self.encoder(genes_bl) + self.value_encoder(values_bl)
        for name in self.text_encoder_names:
            x_bld = x_bld + getattr(self, name)(genes_bl)
        x_bld = self.ln((x_bld + self.pert_encoder(flags_bl)).float())
        return self.decoder(self.transformer_encoder(x_bld, None))
