"""Tiny scGenePT files in the real on-disk formats, built with plain torch (no runner code).

- a fine-tuned folder: one `torch.save`d state dict named as the authors name it, with scGPT's keys
  (attention under `self_attn.Wqkv.*`), the text encoders of the flavour (`genept_encoder.{embedding,
  proj_layer,enc_norm}`, `gopt_encoder_x.{embedding,fc,enc_norm}`), `pert_encoder`, `ln`, `decoder.fc.{0,2,4}`
  and the unused `cls_decoder`;
- `vocab.json` (`{token: id}`: genes, then `<pad>`, `<cls>`, `<eoc>`);
- GEARS' processed screen as the zip GEARS downloads (`<name>/perturb_processed.h5ad`, obs['condition']).

`PlainScGenePT` is the reference forward pass: torch.nn building blocks loaded from the state dict, one
cell at a time.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import torch
from torch import nn

SPECIALS = ("<pad>", "<cls>", "<eoc>")
D, HEADS, HID, LAYERS, TEXT_DIM = 16, 2, 24, 2, 12
CHECKPOINT_NAME = "best_model_gpt3.5_ada_rnd_seed_42_concat.pt"


def write_vocab(folder: Path, genes: Iterable[str]) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {gene: i for i, gene in enumerate(genes)}
    vocab.update({token: len(vocab) + i for i, token in enumerate(SPECIALS)})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    return folder


def tensor_shapes(vocab_size: int, text_encoders: Sequence[str]) -> dict[str, tuple[int, ...]]:
    shapes = {
        "encoder.embedding.weight": (vocab_size, D), "encoder.enc_norm.weight": (D,), "encoder.enc_norm.bias": (D,),
        "value_encoder.linear1.weight": (D, 1), "value_encoder.linear1.bias": (D,),
        "value_encoder.linear2.weight": (D, D), "value_encoder.linear2.bias": (D,),
        "value_encoder.norm.weight": (D,), "value_encoder.norm.bias": (D,),
        "pert_encoder.weight": (3, D), "ln.weight": (D,), "ln.bias": (D,),
        "decoder.fc.0.weight": (D, D), "decoder.fc.0.bias": (D,), "decoder.fc.2.weight": (D, D),
        "decoder.fc.2.bias": (D,), "decoder.fc.4.weight": (1, D), "decoder.fc.4.bias": (1,),
        "cls_decoder._decoder.0.weight": (D, D), "cls_decoder.out_layer.weight": (1, D),
    }
    for name in text_encoders:
        proj = "proj_layer" if name == "genept_encoder" else "fc"
        shapes.update({f"{name}.embedding.weight": (vocab_size, TEXT_DIM), f"{name}.{proj}.weight": (D, TEXT_DIM),
                       f"{name}.{proj}.bias": (D,), f"{name}.enc_norm.weight": (D,), f"{name}.enc_norm.bias": (D,)})
    for i in range(LAYERS):
        p = f"transformer_encoder.layers.{i}."
        shapes.update({p + "self_attn.Wqkv.weight": (3 * D, D), p + "self_attn.Wqkv.bias": (3 * D,),
                       p + "self_attn.out_proj.weight": (D, D), p + "self_attn.out_proj.bias": (D,),
                       p + "linear1.weight": (HID, D), p + "linear1.bias": (HID,),
                       p + "linear2.weight": (D, HID), p + "linear2.bias": (D,),
                       p + "norm1.weight": (D,), p + "norm1.bias": (D,),
                       p + "norm2.weight": (D,), p + "norm2.bias": (D,)})
    return shapes


def write_checkpoint(folder: Path, n_genes: int, text_encoders: Sequence[str] = (), seed: int = 0,
                     drop: Iterable[str] = ()) -> Path:
    """A fine-tuned folder for a vocabulary of `n_genes` genes plus the three specials."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in tensor_shapes(n_genes + len(SPECIALS), text_encoders).items():
        noise = torch.randn(shape, generator=generator)
        if "norm" in key and key.endswith("weight") or key == "ln.weight":
            state[key] = 1.0 + 0.2 * noise
        elif key.endswith("bias") or "embedding" in key or key == "pert_encoder.weight":
            state[key] = 0.5 * noise
        else:
            state[key] = noise / shape[-1] ** 0.5
    torch.save({k: v for k, v in state.items() if k not in set(drop)}, folder / CHECKPOINT_NAME)
    return folder


def write_gears_zip(folder: Path, name: str, conditions: Sequence[str]) -> Path:
    """GEARS' download: a zip of `<name>/perturb_processed.h5ad` whose obs['condition'] holds `conditions`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    adata = ad.AnnData(np.zeros((len(conditions), 2), dtype=np.float32),
                       obs=pd.DataFrame({"condition": pd.Categorical(conditions)},
                                        index=[f"c{i}" for i in range(len(conditions))]))
    buffer = io.BytesIO()
    tmp = folder / "tmp.h5ad"
    adata.write_h5ad(tmp)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(tmp, f"{name}/perturb_processed.h5ad")
    tmp.unlink()
    path = folder / "6154417"
    path.write_bytes(buffer.getvalue())
    return path


class PlainScGenePT:
    """One cell at a time, torch.nn parts only: the published architecture from its state dict."""

    def __init__(self, checkpoint: Path, text_encoders: Sequence[str] = ()):
        s = torch.load(checkpoint, weights_only=True)
        self.s = s
        self.text_encoders = list(text_encoders)
        self.layers = []
        for i in range(LAYERS):
            layer = nn.TransformerEncoderLayer(D, HEADS, HID, dropout=0.0, batch_first=True)
            p = f"transformer_encoder.layers.{i}."
            layer.load_state_dict({k[len(p):].replace("Wqkv.", "in_proj_"):
                                   v for k, v in s.items() if k.startswith(p)})
            self.layers.append(layer.eval())

    def _lin(self, name, x):
        return x @ self.s[name + ".weight"].T + self.s[name + ".bias"]

    def _norm(self, name, x):
        return nn.functional.layer_norm(x, (D,), self.s[name + ".weight"], self.s[name + ".bias"])

    @torch.no_grad()
    def predict(self, tokens_l: np.ndarray, values_l: np.ndarray, flags_l: np.ndarray) -> np.ndarray:
        tokens = torch.from_numpy(tokens_l.astype(np.int64))
        v = torch.from_numpy(values_l.astype(np.float32))[:, None].clamp(max=512)
        x = self._norm("encoder.enc_norm", self.s["encoder.embedding.weight"][tokens])
        x = x + self._norm("value_encoder.norm", self._lin("value_encoder.linear2",
                                                           torch.relu(self._lin("value_encoder.linear1", v))))
        for name in self.text_encoders:
            proj = "proj_layer" if name == "genept_encoder" else "fc"
            text = self._lin(f"{name}.{proj}", self.s[f"{name}.embedding.weight"][tokens])
            x = x + self._norm(f"{name}.enc_norm", text)
        x = self._norm("ln", x + self.s["pert_encoder.weight"][torch.from_numpy(flags_l.astype(np.int64))])[None]
        for layer in self.layers:
            x = layer(x)
        h = nn.functional.leaky_relu(self._lin("decoder.fc.0", x[0]))
        h = nn.functional.leaky_relu(self._lin("decoder.fc.2", h))
        return self._lin("decoder.fc.4", h)[:, 0].numpy()
