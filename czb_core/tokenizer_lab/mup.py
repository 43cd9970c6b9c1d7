"""Linear layers in the maximal-update (muP) abcd parametrisation, for Adam-type optimisers.

Why: a learning rate tuned on a narrow model should stay near-optimal when the model is widened. In the
abcd description, with width n, base width n0 and learnable tensor w:
  the layer uses W = (n0/n)^a * w, initialises w ~ N(0, sigma * (n0/n)^b) and scales the gradient of w
  by (n/n0)^d.
For Adam/AdamW (c = 0, so a plain optimiser works):
  input weights and all biases: a = 0, b = 0, d = 1, n = fan-out;
  hidden weights:               a = 1, b = -1/2, d = 2, n = fan-in;
  output weights:               a = 1, b = 0, d = 1, n = fan-in (an output bias uses n = n0).
At n = n0 the layer is an ordinary linear layer with weight std sigma. `sigma` defaults to 1 for input
layers (fan-in 1 or a few features) and 1/sqrt(n0) for hidden and output layers.
Attention logits are scaled by sqrt(head_dim_0) / head_dim (muP's 1/d attention), equal to the usual
1/sqrt(head_dim) at base width.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

EXPONENTS = {  # layer kind -> (a, b, d) of the weight, for Adam-type optimisers
    "input": (0.0, 0.0, 1.0),
    "hidden": (1.0, -0.5, 2.0),
    "output": (1.0, 0.0, 1.0),
}
BIAS_EXPONENTS = (0.0, 0.0, 1.0)


def _scale_gradient(factor: float):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad * factor

    return hook


class MuLinear(nn.Module):
    """y = x (m_w w)^T + m_b b with the multipliers, initial scales and gradient scales of `EXPONENTS`."""

    def __init__(self, in_features: int, out_features: int, kind: str, base_width: int,
                 bias: bool = True, init_std: Optional[float] = None):
        super().__init__()
        if kind not in EXPONENTS:
            raise ValueError(f"layer kind {kind!r} is not one of {', '.join(EXPONENTS)}")
        a, b, d = EXPONENTS[kind]
        width = out_features if kind == "input" else in_features
        ratio = base_width / width
        sigma = init_std if init_std is not None else (1.0 if kind == "input" else 1.0 / math.sqrt(base_width))
        self.kind, self.in_features, self.out_features = kind, in_features, out_features
        self.weight_multiplier = ratio**a
        self.weight_unscaled = nn.Parameter(torch.randn(out_features, in_features) * sigma * ratio**b)
        if d:
            self.weight_unscaled.register_hook(_scale_gradient((1.0 / ratio) ** d))
        if bias:
            bias_width = base_width if kind == "output" else out_features
            bias_ratio = base_width / bias_width
            ba, _, bd = BIAS_EXPONENTS
            self.bias_multiplier = bias_ratio**ba
            self.bias_unscaled = nn.Parameter(torch.zeros(out_features))
            if bias_ratio != 1.0:
                self.bias_unscaled.register_hook(_scale_gradient((1.0 / bias_ratio) ** bd))
        else:
            self.bias_multiplier = 1.0
            self.register_parameter("bias_unscaled", None)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_multiplier * self.weight_unscaled

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return None if self.bias_unscaled is None else self.bias_multiplier * self.bias_unscaled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kind={self.kind}"


def attention_scale(head_dim: int, base_head_dim: int) -> float:
    """muP attention scale: 1/sqrt(head_dim) at base width, falling as 1/head_dim beyond it."""
    return math.sqrt(base_head_dim) / head_dim
