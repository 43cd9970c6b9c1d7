"""Tiny scGPT checkpoints in the real on-disk format, built with plain torch (no runner code).

A checkpoint folder holds `vocab.json` (`{token: id}`: the genes, then `<pad>`, `<cls>`, `<eoc>`),
`args.json` (the training arguments, tiny sizes, the real key names) and `best_model.pt` (a `torch.save`d
state dict with the attention's fused projection under `self_attn.Wqkv.*`, plus decoder heads an
embedding does not use). Tensors are random but not degenerate (LayerNorm weights near 1), so a wrong
wiring shows in the outputs. `PlainScgpt` is the reference forward pass the runner is checked against:
torch.nn building blocks loaded straight from `best_model.pt`, one cell at a time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
from torch import nn

TINY_ARGS = {
    "embsize": 16, "nheads": 2, "d_hid": 24, "nlayers": 2, "n_layers_cls": 3, "dropout": 0.2,
    "pad_token": "<pad>", "pad_value": -2, "mask_value": -1, "n_bins": 51, "max_seq_len": 64,
    "input_style": "binned", "input_emb_style": "continuous", "fast_transformer": True, "MVC": True,
}
SPECIALS = ("<pad>", "<cls>", "<eoc>")


def gene_symbols(n: int) -> list[str]:
    """`n` made-up symbols in the style of CELLxGENE feature names."""
    return [f"GENE{i}" for i in range(n)]


def tensor_shapes(vocab_size: int, args: dict) -> dict[str, tuple[int, ...]]:
    """Every key of a real whole-human `best_model.pt` that an embedding reads, and a few head keys it does not."""
    d, hid = args["embsize"], args["d_hid"]
    shapes = {
        "encoder.embedding.weight": (vocab_size, d),
        "encoder.enc_norm.weight": (d,), "encoder.enc_norm.bias": (d,),
        "value_encoder.linear1.weight": (d, 1), "value_encoder.linear1.bias": (d,),
        "value_encoder.linear2.weight": (d, d), "value_encoder.linear2.bias": (d,),
        "value_encoder.norm.weight": (d,), "value_encoder.norm.bias": (d,),
        "decoder.fc.0.weight": (d, d), "decoder.fc.0.bias": (d,),
        "mvc_decoder.gene2query.weight": (d, d), "mvc_decoder.gene2query.bias": (d,),
        "cls_decoder.out_layer.weight": (1, d), "cls_decoder.out_layer.bias": (1,),
    }
    for i in range(args["nlayers"]):
        layer = f"transformer_encoder.layers.{i}."
        shapes.update({
            layer + "self_attn.Wqkv.weight": (3 * d, d), layer + "self_attn.Wqkv.bias": (3 * d,),
            layer + "self_attn.out_proj.weight": (d, d), layer + "self_attn.out_proj.bias": (d,),
            layer + "linear1.weight": (hid, d), layer + "linear1.bias": (hid,),
            layer + "linear2.weight": (d, hid), layer + "linear2.bias": (d,),
            layer + "norm1.weight": (d,), layer + "norm1.bias": (d,),
            layer + "norm2.weight": (d,), layer + "norm2.bias": (d,),
        })
    return shapes


def random_state_dict(vocab_size: int, args: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in tensor_shapes(vocab_size, args).items():
        noise = torch.randn(shape, generator=generator)
        if "norm" in key and key.endswith("weight"):
            state[key] = 1.0 + 0.2 * noise
        elif key.endswith("bias") or key == "encoder.embedding.weight":
            state[key] = 0.5 * noise
        else:
            state[key] = noise / shape[-1] ** 0.5
    return state


def write_checkpoint(folder: Path, genes: Iterable[str], args: Optional[dict] = None, seed: int = 0,
                     drop: Iterable[str] = ()) -> Path:
    """A checkpoint folder for `genes` (ids 0..n-1, then the specials); `drop` leaves those keys out."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    args = dict(TINY_ARGS, **(args or {}))
    vocab = {gene: i for i, gene in enumerate(genes)}
    vocab.update({token: len(vocab) + i for i, token in enumerate(SPECIALS)})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "args.json").write_text(json.dumps(args))
    state = random_state_dict(len(vocab), args, seed)
    torch.save({k: v for k, v in state.items() if k not in set(drop)}, folder / "best_model.pt")
    return folder


class TrainingRecord:
    """A non-tensor object, as a training script might pickle beside its weights."""

    def __init__(self, epoch: int):
        self.epoch = epoch


def write_pickled_checkpoint(folder: Path, genes: Iterable[str]) -> Path:
    """A checkpoint whose `best_model.pt` also pickles a Python object: only the full unpickler reads it."""
    folder = write_checkpoint(folder, genes)
    state = torch.load(folder / "best_model.pt", weights_only=True)
    torch.save({"state_dict": state, "record": TrainingRecord(5)}, folder / "best_model.pt")
    return folder


class PlainScgpt:
    """One cell at a time, no padding, no masks: the published architecture from its parts."""

    def __init__(self, folder: Path):
        state = torch.load(folder / "best_model.pt", weights_only=True)
        args = json.loads((folder / "args.json").read_text())
        d = args["embsize"]
        self.genes = nn.Embedding.from_pretrained(state["encoder.embedding.weight"])
        self.gene_norm = self._norm(d, state, "encoder.enc_norm")
        self.value1 = self._linear(state, "value_encoder.linear1")
        self.value2 = self._linear(state, "value_encoder.linear2")
        self.value_norm = self._norm(d, state, "value_encoder.norm")
        self.layers = []
        for i in range(args["nlayers"]):
            layer = nn.TransformerEncoderLayer(d, args["nheads"], args["d_hid"], dropout=0.0, batch_first=True)
            prefix = f"transformer_encoder.layers.{i}."
            layer.load_state_dict({
                key[len(prefix):].replace("Wqkv.weight", "in_proj_weight").replace("Wqkv.bias", "in_proj_bias"): value
                for key, value in state.items() if key.startswith(prefix)
            })
            self.layers.append(layer.eval())

    @staticmethod
    def _linear(state, name) -> nn.Linear:
        weight = state[name + ".weight"]
        linear = nn.Linear(weight.shape[1], weight.shape[0])
        linear.load_state_dict({"weight": weight, "bias": state[name + ".bias"]})
        return linear

    @staticmethod
    def _norm(d, state, name) -> nn.LayerNorm:
        norm = nn.LayerNorm(d)
        norm.load_state_dict({"weight": state[name + ".weight"], "bias": state[name + ".bias"]})
        return norm

    @torch.no_grad()
    def embed(self, genes: np.ndarray, values: np.ndarray, mode: str, normalize: bool = True) -> np.ndarray:
        genes_l = torch.from_numpy(genes.astype(np.int64))
        values_l1 = torch.from_numpy(values.astype(np.float32))[:, None].clamp(max=512)
        x_ld = self.gene_norm(self.genes(genes_l)) + self.value_norm(self.value2(torch.relu(self.value1(values_l1))))
        x_1ld = x_ld[None]
        for layer in self.layers:
            x_1ld = layer(x_1ld)
        out_d = x_1ld[0, 0] if mode == "cls" else x_1ld[0, 1:].mean(0)
        return (out_d / out_d.norm() if normalize else out_d).numpy()
