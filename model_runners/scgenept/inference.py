"""Loading a fine-tuned scGenePT checkpoint and predicting perturbed expression in batches.

A fine-tuned folder holds one state dict (`*.pt`, its name differs between flavours). The sizes come
from the tensors (vocabulary and width from `encoder.embedding.weight`, feed-forward width and depth from
the layer keys, text width from the text tables); the head count cannot be read from shapes and is the
variant's `n_heads`. Every tensor the model needs must be present with its shape, and the checkpoint
must hold exactly the text encoders the variant declares: the authors' loader is strict, and a flavour
mix-up would otherwise run with the wrong embeddings.

Prediction follows the authors' `pred_perturb_from_ctrl`: each sampled control cell's expression over
the whole gene axis (no zero dropping, no truncation), the same perturbation flags for every cell, one
forward pass; here cells go through the engine's batches (`czb_core.models.inference`; all sequences
have the gene axis' length, so there is no padding) under the run's precision.

Imports torch, not anndata: the GPU suite imports this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from czb_core.errors import WeightsError
from czb_core.models.inference import Batched, autocast_dtype, run_batches
from czb_core.progress import CancelToken, ProgressCallback, no_progress
from model_runners.scgenept.network import GENEPT_ENCODER, GO_ENCODER_PREFIX, ScGenePT
from model_runners.scgpt.encoder import checkpoint_keys
from model_runners.scgpt.inference import read_state_dict

CPU_BATCH_SIZE = 4
_LAYER_KEY = re.compile(r"transformer_encoder\.layers\.(\d+)\.")


@dataclass
class LoadedScGenePT:
    """The network in eval mode on `device`, with its vocabulary size."""

    network: ScGenePT
    vocab_size: int
    device: torch.device


def checkpoint_file(folder: Path) -> Path:
    """The one `*.pt` of a fine-tuned folder (file names differ between flavours)."""
    found = sorted(Path(folder).glob("*.pt"))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(p.name for p in found)})"
        raise WeightsError(f"{folder} holds {what} .pt files; a fine-tuned scGenePT folder holds exactly one")
    return found[0]


def text_encoders_in(state: dict) -> list[str]:
    """The text-encoder modules a state dict holds, by prefix."""
    names = {key.split(".")[0] for key in state}
    return sorted(n for n in names if n == GENEPT_ENCODER or n.startswith(GO_ENCODER_PREFIX))


def build_network(state: dict, n_heads: int, text_encoders: Sequence[str], folder: Path) -> ScGenePT:
    """A network of the sizes the checkpoint's tensors imply (random weights, fp32, CPU)."""
    try:
        vocab_size, d_model = state["encoder.embedding.weight"].shape
        d_hid = state["transformer_encoder.layers.0.linear1.weight"].shape[0]
    except KeyError as exc:
        raise WeightsError(f"the checkpoint in {folder} lacks {exc.args[0]}; it is not an scGenePT model") from None
    n_layers = 1 + max(int(m.group(1)) for key in state if (m := _LAYER_KEY.match(key)))
    text_dim = state[f"{text_encoders[0]}.embedding.weight"].shape[1] if text_encoders else None
    if d_model % n_heads:
        raise WeightsError(f"the checkpoint's width {d_model} is not a multiple of the variant's n_heads {n_heads}")
    return ScGenePT(vocab_size, d_model, n_heads, d_hid, n_layers, text_encoders, text_dim)


def load_network(folder: Path, n_heads: int, text_encoders: Sequence[str], device: str = "cpu") -> LoadedScGenePT:
    """The fine-tuned checkpoint in `folder`, checked against the variant's text encoders."""
    path = checkpoint_file(folder)
    state = checkpoint_keys(read_state_dict(path))
    found = text_encoders_in(state)
    if found != sorted(text_encoders):
        raise WeightsError(f"{path} holds text encoders {found or 'none'}, the variant expects "
                           f"{sorted(text_encoders) or 'none'}; the folder belongs to another scGenePT flavour")
    network = build_network(state, n_heads, list(text_encoders), Path(folder))
    wanted = network.state_dict()
    missing = sorted(key for key in wanted if key not in state)
    if missing:
        raise WeightsError(f"{path} lacks {len(missing)} tensors ({', '.join(missing[:5])}"
                           f"{', ...' if len(missing) > 5 else ''}); the model would run with random weights")
    misshaped = [f"{k} {tuple(state[k].shape)} (expected {tuple(t.shape)})" for k, t in wanted.items()
                 if state[k].shape != t.shape]
    if misshaped:
        raise WeightsError(f"{path} has tensors of inconsistent shapes: {'; '.join(misshaped[:3])}")
    network.load_state_dict({key: state[key].float() for key in wanted})
    device = torch.device(device)
    return LoadedScGenePT(network.to(device).eval(), int(state["encoder.embedding.weight"].shape[0]), device)


def predict(model: LoadedScGenePT, values_ng: np.ndarray, tokens_g: np.ndarray, flags_g: np.ndarray, *,
            batch_size: Optional[int] = None, precision: str = "auto", progress: ProgressCallback = no_progress,
            cancel: Optional[CancelToken] = None, step: str = "predict") -> Batched:
    """`pred_ng` (float32): each row's predicted expression under the perturbation `flags_g` (0/1 per gene),
    and the batch size the run ended with."""
    if not (values_ng.shape[1] == len(tokens_g) == len(flags_g)):
        raise ValueError("values, tokens and flags must cover the same genes")
    if len(tokens_g) and (tokens_g.min() < 0 or tokens_g.max() >= model.vocab_size):
        raise ValueError("every gene needs a token of the checkpoint's vocabulary")
    dtype = autocast_dtype(precision, model.device)
    genes_1l = torch.as_tensor(tokens_g, dtype=torch.long, device=model.device)[None]
    flags_1l = torch.as_tensor(flags_g, dtype=torch.long, device=model.device)[None]

    def forward(rows_b: np.ndarray):
        values_bl = torch.as_tensor(values_ng[rows_b], dtype=torch.float32, device=model.device)
        b = len(rows_b)
        return model.network(genes_1l.expand(b, -1), values_bl, flags_1l.expand(b, -1))

    return run_batches(forward, [np.arange(len(values_ng))], CPU_BATCH_SIZE if batch_size is None else batch_size,
                       device=model.device, dtype=dtype, progress=progress, cancel=cancel, step=step,
                       empty=[(len(tokens_g),)])
