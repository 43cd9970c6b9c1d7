"""UCE's network, built from its state dict, and batched embedding of cell sentences (torch only).

The forward pass: look up each token's row of the frozen table, L2-normalise it over its width,
Linear + GELU + LayerNorm to `d_model`, times sqrt(d_model), plus the checkpoint's sinusoidal
position table; post-norm encoder layers (ReLU feed-forward, LayerNorm eps 1e-5); the decoder
(three Linear -> LayerNorm -> GELU blocks, then a Linear) on position 0; L2-normalised.

Padding, as the authors' collator does it: a batch is cut to its longest sentence, and `1 - mask` goes in
as a *float* key-padding mask, which PyTorch adds to the attention logits, so a padded key gets +1 (more
attention, not none). A cell's embedding therefore depends on how many pads its batch gives it. Padded
to the full 1,536 (~450 pads, what this runner once did) it is another embedding: on the structured tiny
checkpoints of `benchmarks/parity_uce.py` (4 and 33 layers, mouse and human cells), the authors' sentences
padded to 1,536 agree with their run to a median centred cosine of 0.75-0.90, where the authors' own runs with
two seeds agree to 0.978-0.988. In the authors' batches of 25 consecutive cells, cut to the longest, a cell sees
a few pads, which moves its embedding a little (there, their batches of 1 against 25: median 0.9998-0.99999,
worst cell 0.996-0.9994). `embed` puts only sentences of one length in a batch (a sentence is
1 + sample size + 2 x its chromosome groups long, so a block's lengths take few values): no cell meets a
pad, the float mask, kept as the authors pass it, adds nothing, and a cell's embedding is the one the
authors' code gives it in a batch of its own, whatever the batch size or the other cells.

Memory: the table (145,469 x 5,120 in the published checkpoints, 2.98 GB in fp32) is memory-mapped from
the checkpoint on the CPU; on a GPU it is copied once, in bf16 when every value is exactly
representable in bf16 and in fp32 otherwise. Sizes are read from the state dict; only the head count
comes from the variant's resources. No anndata, scanpy or numba here (the GPU suite imports this).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from czb_core.models.inference import Batched, autocast_dtype, run_batches, same_length_groups
from czb_core.models.layers import LAYER_NORM_EPS, PostNormStack
from czb_core.progress import CancelToken, ProgressCallback, no_progress

TABLE_KEY = "pe_embedding.weight"
POSITIONS_KEY = "pos_encoder.pe"
USED_PREFIXES = ("encoder.", "transformer_encoder.layers.", "decoder.")


class UceFormatError(ValueError):
    """A state dict that is not UCE's layout (missing keys or shapes that do not fit together)."""


@dataclass(frozen=True)
class UceDims:
    token_dim: int
    d_model: int
    n_heads: int
    d_hid: int
    n_layers: int
    decoder_dims: tuple[int, ...]  # widths after each decoder block, then the output
    max_len: int
    table_rows: int

    @property
    def output_dim(self) -> int:
        return self.decoder_dims[-1]


def read_dims(state: dict, n_heads: int) -> UceDims:
    """The architecture of a UCE state dict (the reference's key names)."""
    for key in (TABLE_KEY, POSITIONS_KEY, "encoder.0.weight", "decoder.3.weight"):
        if key not in state:
            raise UceFormatError(f"not a UCE checkpoint: the state dict has no {key!r}")
    d_model, token_dim = state["encoder.0.weight"].shape
    layers = {int(k.split(".")[2]) for k in state if k.startswith("transformer_encoder.layers.")}
    if layers != set(range(len(layers))) or not layers:
        raise UceFormatError(f"the encoder layers are numbered {sorted(layers)}, not 0..n-1")
    if d_model % n_heads:
        raise UceFormatError(f"d_model {d_model} is not a multiple of the {n_heads} attention heads")
    decoder_dims = tuple(int(state[f"decoder.{i}.0.weight"].shape[0]) for i in range(3))
    decoder_dims += (int(state["decoder.3.weight"].shape[0]),)
    table_rows, table_dim = state[TABLE_KEY].shape
    if table_dim != token_dim:
        raise UceFormatError(f"the token table is {table_dim} wide but the input projection reads {token_dim}")
    return UceDims(int(token_dim), int(d_model), int(n_heads),
                   int(state["transformer_encoder.layers.0.linear1.weight"].shape[0]), len(layers),
                   decoder_dims, int(state[POSITIONS_KEY].shape[0]), int(table_rows))


def decoder_block(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_out), nn.LayerNorm(n_out, eps=LAYER_NORM_EPS), nn.GELU(), nn.Identity())


class UceNetwork(nn.Module):
    """The parts of UCE's model a cell embedding uses; module names follow the state dict's keys."""

    def __init__(self, dims: UceDims, attention: str = "sdpa"):
        super().__init__()
        self.dims = dims
        self.encoder = nn.Sequential(nn.Linear(dims.token_dim, dims.d_model), nn.GELU(),
                                     nn.LayerNorm(dims.d_model, eps=LAYER_NORM_EPS))
        self.transformer_encoder = PostNormStack(dims.d_model, dims.n_heads, dims.d_hid, dims.n_layers, attention)
        widths = (dims.d_model,) + dims.decoder_dims
        self.decoder = nn.Sequential(*(decoder_block(widths[i], widths[i + 1]) for i in range(3)),
                                     nn.Linear(widths[3], widths[4]))
        self.register_buffer("positions_ld", torch.empty(dims.max_len, dims.d_model), persistent=False)
        self.register_buffer("table_td", torch.empty(0, dims.token_dim), persistent=False)

    def forward(self, tokens_bl: torch.Tensor, used_bl: torch.Tensor) -> torch.Tensor:
        """`emb_bd` of token sequences; `used_bl` is 1.0 on used positions, 0.0 on padding."""
        x_bld = F.normalize(self.table_td[tokens_bl].float(), dim=-1)
        x_bld = self.encoder(x_bld) * math.sqrt(self.dims.d_model)
        x_bld = x_bld + self.positions_ld[: tokens_bl.shape[1]]
        bias_b11l = (1.0 - used_bl)[:, None, None, :]  # +1 on padded keys: the float-mask quirk
        x_bld = self.transformer_encoder(x_bld, bias_b11l)
        return F.normalize(self.decoder(x_bld[:, 0]).float(), dim=1)


def load_state(path: Path) -> dict:
    """The checkpoint's tensors, memory-mapped when the file allows it (no 3 GB read into RAM up front)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):  # a legacy (non-zip) file cannot be mapped: read it whole
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def bf16_is_exact(table_td: torch.Tensor, rows_per_step: int = 8192) -> bool:
    """Whether every value survives a round trip through bf16 (then storing the table in bf16 loses nothing)."""
    for start in range(0, table_td.shape[0], rows_per_step):
        part = table_td[start : start + rows_per_step]
        if not torch.equal(part.to(torch.bfloat16).to(part.dtype), part):
            return False
    return True


def build_network(state: dict, n_heads: int, device: str) -> UceNetwork:
    """The network on `device` in fp32, the token table kept as the module docstring says."""
    dims = read_dims(state, n_heads)
    with torch.device("meta"):
        network = UceNetwork(dims)
    used = {k: v for k, v in state.items() if k.startswith(USED_PREFIXES)}
    missing, unexpected = network.load_state_dict(used, strict=False, assign=True)
    missing = [k for k in missing if k not in ("positions_ld", "table_td")]
    if missing or unexpected:
        raise UceFormatError(f"state dict does not fit UCE's layout: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    network.positions_ld = state[POSITIONS_KEY].reshape(dims.max_len, dims.d_model).float()
    network.table_td = torch.empty(0, dims.token_dim)  # set below, without a dtype conversion
    network = network.to(device=device, dtype=torch.float32).eval()
    table_td = state[TABLE_KEY]
    if torch.device(device).type != "cpu":
        table_td = table_td.to(device)
        if bf16_is_exact(table_td):
            table_td = table_td.to(torch.bfloat16)
    network.table_td = table_td
    return network


@dataclass
class UceEncoder:
    """A loaded UCE network on its device (kept between runs; the precision is chosen per run)."""

    network: UceNetwork
    device: str

    @property
    def dims(self) -> UceDims:
        return self.network.dims

    @property
    def table_bytes(self) -> int:
        table = self.network.table_td
        return table.numel() * table.element_size()

    @property
    def table_dtype(self) -> str:
        return str(self.network.table_td.dtype).removeprefix("torch.")

    def embed(self, tokens_nl: np.ndarray, lengths_n: np.ndarray, batch_size: int, precision: str = "fp32",
              progress: ProgressCallback = no_progress, cancel: Optional[CancelToken] = None) -> Batched:
        """`emb_nd` (float32, in input order) of sentences padded to any common width, through the engine
        (`czb_core.models.inference`: precision, progress, cancel, the out-of-memory retry).

        The cells of each sentence length (in input order) go `batch_size` at a time, and a batch is cut to
        its length: no batch mixes lengths, so none carries a pad (the module docstring says why that
        matters). What is left of batch dependence is floating-point summation order: in
        `benchmarks/parity_uce.py`, batches of 1 against the variant's GPU batch give a median centred cosine
        of 1.0 and a worst cell of 0.9999998 (the tests hold it to >= 0.99999)."""
        lengths_n = np.asarray(lengths_n)

        def forward(rows_b: np.ndarray):
            length = int(lengths_n[rows_b[0]])
            tokens_bl = torch.from_numpy(np.ascontiguousarray(tokens_nl[rows_b, :length])).to(self.device)
            return self.network(tokens_bl, torch.ones(tokens_bl.shape, device=self.device))

        return run_batches(forward, same_length_groups(lengths_n), batch_size, device=self.device,
                           dtype=autocast_dtype(precision, self.device), progress=progress, cancel=cancel,
                           empty=[(self.dims.output_dim,)])


def load_encoder(path: Path, n_heads: int, device: str) -> UceEncoder:
    try:
        state = load_state(path)
    except Exception as exc:
        raise UceFormatError(f"{Path(path).name} cannot be read as a UCE state dict ({exc})") from exc
    return UceEncoder(build_network(state, n_heads, device), device)
