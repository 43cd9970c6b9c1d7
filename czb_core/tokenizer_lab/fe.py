"""Fe: how a gene's expression value becomes a vector.

Two halves: `discretise` turns one cell's log-normalised values into what the embedding reads (the
value itself, a per-cell quantile bin as scGPT, an integer bin as scBERT), and `build_fe` makes the
torch module that embeds those numbers. Zero expression never reaches Fe: sentences hold expressed
genes only (Heimdall's `drop_zeros`), so bin 0 is never produced for a gene position but is kept as
scGPT's "not expressed" code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from czb_core.tokenizer_lab.mup import MuLinear

KINDS = ("zero", "linear", "mlp", "quantile", "integer", "autobin")
SCGPT_BINS, SCBERT_BINS, AUTOBIN_BINS, AUTOBIN_ALPHA = 50, 7, 100, 1.0


@dataclass(frozen=True)
class FeSpec:
    """`kind` one of `KINDS`; `num_bins` for the binning kinds (scGPT 50, scBERT 7, scFoundation 100)."""

    kind: str = "zero"
    num_bins: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Fe {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.num_bins < 0:
            raise ValueError(f"Fe num_bins must not be negative, got {self.num_bins}")

    @property
    def bins(self) -> int:
        default = {"quantile": SCGPT_BINS, "integer": SCBERT_BINS, "autobin": AUTOBIN_BINS}.get(self.kind, 0)
        return self.num_bins or default


def quantile_bins(values_k: np.ndarray, num_bins: int, rng: np.random.Generator) -> np.ndarray:
    """scGPT binning of one cell's expressed values: edges are the cell's own quantiles at the interior
    points of linspace(0, 1, num_bins + 1); a value equal to an edge goes to a bin drawn between the
    two sides; bins are 1..num_bins (0 stays "not expressed")."""
    if len(values_k) == 0:
        return np.zeros(0, dtype=np.float32)
    edges = np.quantile(values_k, np.linspace(0, 1, num_bins + 1)[1:-1])
    left = np.digitize(values_k, edges)
    right = np.digitize(values_k, edges, right=True)
    digits = np.ceil(rng.random(len(values_k)) * (left - right) + right)
    return (digits + 1).astype(np.float32)


def integer_bins(values_k: np.ndarray, num_bins: int) -> np.ndarray:
    """scBERT binning: floor of the value, clipped to [0, num_bins]."""
    return np.clip(np.floor(values_k), 0, num_bins).astype(np.float32)


def discretise(spec: FeSpec, values_k: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What each expressed gene's position carries into Fe."""
    if spec.kind == "quantile":
        return quantile_bins(values_k, spec.bins, rng)
    if spec.kind == "integer":
        return integer_bins(values_k, spec.bins)
    return values_k.astype(np.float32)


class ZeroFe(nn.Module):
    """A zero vector whatever the value: expression reaches the model only through the order."""

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model

    def forward(self, values_bl: torch.Tensor) -> torch.Tensor:
        return values_bl.new_zeros(*values_bl.shape, self.d_model)


class LinearFe(nn.Module):
    """A learned linear map of the scalar value ("continuous")."""

    def __init__(self, d_model: int, base_width: int):
        super().__init__()
        self.project = MuLinear(1, d_model, "input", base_width)

    def forward(self, values_bl: torch.Tensor) -> torch.Tensor:
        return self.project(values_bl.unsqueeze(-1))


class MlpFe(nn.Module):
    """Linear(1, d) -> ReLU -> Linear(d, d) of the value."""

    def __init__(self, d_model: int, base_width: int):
        super().__init__()
        self.first = MuLinear(1, d_model, "input", base_width)
        self.second = MuLinear(d_model, d_model, "hidden", base_width)

    def forward(self, values_bl: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(values_bl.unsqueeze(-1))))


class BinFe(nn.Module):
    """An embedding per bin code; `normalise` adds scGPT's LayerNorm after the lookup."""

    def __init__(self, n_codes: int, d_model: int, normalise: bool):
        super().__init__()
        self.embedding = nn.Embedding(n_codes, d_model)
        self.norm = nn.LayerNorm(d_model) if normalise else nn.Identity()

    def forward(self, values_bl: torch.Tensor) -> torch.Tensor:
        codes = values_bl.long().clamp(0, self.embedding.num_embeddings - 1)
        return self.norm(self.embedding(codes))


class AutoBinFe(nn.Module):
    """scFoundation auto-discretisation: Linear(1, B) -> LeakyReLU(0.1) -> Linear(B, B) mixed with its
    input by `alpha`, softmax into weights over B learned bin vectors, weighted sum."""

    def __init__(self, d_model: int, bins: int, alpha: float = AUTOBIN_ALPHA):
        super().__init__()
        self.first = nn.Linear(1, bins)
        self.second = nn.Linear(bins, bins)
        self.alpha = alpha
        self.bin_vectors = nn.Embedding(bins, d_model)

    def forward(self, values_bl: torch.Tensor) -> torch.Tensor:
        hidden = nn.functional.leaky_relu(self.first(values_bl.unsqueeze(-1)), 0.1)
        mixed = self.second(hidden) + self.alpha * hidden
        weights = torch.softmax(mixed, dim=-1)
        return weights @ self.bin_vectors.weight


def build_fe(spec: FeSpec, d_model: int, base_width: int) -> nn.Module:
    if spec.kind == "zero":
        return ZeroFe(d_model)
    if spec.kind == "linear":
        return LinearFe(d_model, base_width)
    if spec.kind == "mlp":
        return MlpFe(d_model, base_width)
    if spec.kind == "quantile":  # codes 0..bins, plus scGPT's pad and mask rows
        return BinFe(spec.bins + 3, d_model, normalise=True)
    if spec.kind == "integer":  # codes 0..bins, plus a pad row
        return BinFe(spec.bins + 2, d_model, normalise=False)
    return AutoBinFe(d_model, spec.bins)
