"""scGPT cell embeddings from a checkpoint folder, batched by sequence length.

`best_model.pt` is read with `torch.load(weights_only=True)`, so a file that needs the full unpickler
(which can run arbitrary code) is refused. Its encoder tensors must all be there with the shapes
`args.json` and `vocab.json` imply: the authors' loader silently skips missing or mis-shaped tensors
and leaves them random, which gives plausible-looking but meaningless embeddings, so here any gap is a
`WeightsError` naming the keys.

The engine (`czb_core.models.inference`) runs the batches: longest cell first (an out-of-memory error
shows on the first batch, not after an hour), each padded only to its own longest cell, under the run's
precision, with outputs back in input order. Attention is SDPA.

The cell embedding is the last layer's output at `<cls>` (`mode="cls"`, the authors' and cz-benchmarks'
choice) or the mean over the gene positions (`mode="mean"`, `<cls>` and padding excluded); either is
L2-normalised unless `normalize=False`.

torch is imported inside the functions, so importing this module costs nothing until a model is used.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from czb_core.errors import ConfigError, InputError, WeightsError
from czb_core.models.inference import Batched, autocast_dtype, longest_first, memory_batch_size, run_batches
from czb_core.progress import CancelToken, ProgressCallback, no_progress
from model_runners.scgpt.cells import TokenizedCells
from model_runners.scgpt.files import CHECKPOINT_FILES, WEIGHTS_FILE, ScgptArgs, Vocab, load_args, load_vocab

CPU_BATCH_SIZE = 16
MAX_AUTO_BATCH = 256
EMBEDDING_MODES = ("cls", "mean")


@dataclass
class ScgptModel:
    """A loaded encoder with what embedding needs to know of its checkpoint."""

    encoder: Any  # ScgptEncoder, in eval mode, on `device`
    args: ScgptArgs
    vocab: Vocab
    device: Any  # torch.device


def load_model(folder: Path, device: str = "cpu") -> ScgptModel:
    """The checkpoint in `folder` (`best_model.pt`, `args.json`, `vocab.json`) as an fp32 encoder on `device`."""
    import torch

    folder = Path(folder)
    args = load_args(folder)
    vocab = load_vocab(folder, args.pad_token)
    encoder = build_encoder(args, len(vocab))
    encoder.load_state_dict(encoder_tensors(read_state_dict(folder / WEIGHTS_FILE), encoder, folder))
    device = torch.device(device)
    return ScgptModel(encoder.to(device).eval(), args, vocab, device)


def build_encoder(args: ScgptArgs, vocab_size: int, attention: str = "sdpa"):
    """A randomly initialised encoder of the sizes in `args` (fp32, on the CPU)."""
    from model_runners.scgpt.encoder import ScgptEncoder

    return ScgptEncoder(vocab_size, args.embsize, args.nheads, args.d_hid, args.nlayers, attention)


def read_state_dict(path: Path) -> dict:
    """The tensors of `best_model.pt`, refused unless it is a plain state dict `weights_only` can read."""
    import torch

    if not path.is_file():
        raise WeightsError(f"{path} is missing; an scGPT checkpoint folder holds {', '.join(CHECKPOINT_FILES)}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{path} is refused: it holds Python objects beyond tensors, which only the unsafe full unpickler "
            f"could load ({str(exc).splitlines()[0]}); use the published state dict"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise WeightsError(f"{path} cannot be read ({type(exc).__name__}: {exc}); it may be truncated or corrupt: "
                           "delete it and download it again") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a state dict (a mapping of names to tensors)")
    return state


def encoder_tensors(state: dict, encoder, folder: Path) -> dict:
    """The encoder's tensors from the checkpoint `state`, every one present and of the right shape."""
    from model_runners.scgpt.encoder import checkpoint_keys

    state = checkpoint_keys(state)
    wanted = encoder.state_dict()
    missing = sorted(key for key in wanted if key not in state)
    if missing:
        raise WeightsError(
            f"the checkpoint in {folder} lacks {len(missing)} encoder tensors ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}); it is not a complete scGPT model and would run with random "
            "weights"
        )
    misshaped = [f"{key} {tuple(state[key].shape)} (args.json/vocab.json imply {tuple(tensor.shape)})"
                 for key, tensor in wanted.items() if state[key].shape != tensor.shape]
    if misshaped:
        raise WeightsError(f"the checkpoint in {folder} does not fit its own args.json and vocab.json: "
                           f"{'; '.join(misshaped[:3])}")
    return {key: state[key].float() for key in wanted}


def auto_batch_size(model: ScgptModel, longest: int) -> int:
    """Cells per batch: `CPU_BATCH_SIZE` on the CPU; on CUDA, what the engine's share of the free memory holds.

    Rule: a token costs about `4 * (d_hid + 8 * embsize)` bytes of live activations inside one layer
    (feed-forward, q/k/v, attention output, residual and norm copies, in fp32: an upper bound under
    autocast), and a cell of the longest length L costs L times that plus `4 * nheads * L^2` bytes, the
    score matrix of an attention kernel that materialises it. Capped at `MAX_AUTO_BATCH`; batches of
    shorter cells reuse the count.
    """
    per_token = 4 * (model.args.d_hid + 8 * model.args.embsize)
    return memory_batch_size(model.device, longest * per_token + 4 * model.args.nheads * longest**2,
                             cpu_batch=CPU_BATCH_SIZE, max_batch=MAX_AUTO_BATCH)


def embed(
    model: ScgptModel,
    cells: TokenizedCells,
    *,
    mode: str = "cls",
    normalize: bool = True,
    batch_size: Optional[int] = None,
    precision: str = "auto",
    progress: ProgressCallback = no_progress,
    cancel: Optional[CancelToken] = None,
    step: str = "embed",
) -> Batched:
    """`emb_nd` (float32, input order, `embsize` wide) of `cells`, through the engine (longest cell first,
    precision, progress in cells, cancel between batches, the out-of-memory retry).

    A cell without any gene is refused (it would be `<cls>` alone).
    """
    import torch

    if mode not in EMBEDDING_MODES:
        raise ConfigError(f"emb_mode must be one of {', '.join(EMBEDDING_MODES)}, got {mode!r}")
    dtype = autocast_dtype(precision, model.device)
    empty = np.flatnonzero(cells.n_genes == 0)
    if len(empty):
        raise InputError(f"{len(empty):,} of {len(cells):,} cells (e.g. row {empty[0]}) have no gene in scGPT's "
                         "vocabulary and cannot be embedded; filter them out first")
    if batch_size is None:
        batch_size = auto_batch_size(model, int(cells.lengths.max()) if len(cells) else 1)

    def forward(rows_b: np.ndarray):
        genes_bl, values_bl, _ = cells.padded(rows_b, model.vocab.pad_id, model.args.pad_value)
        genes_bl = torch.from_numpy(genes_bl).to(model.device)
        values_bl = torch.from_numpy(values_bl).to(model.device)
        attend_bl = genes_bl != model.vocab.pad_id
        emb_bd = pool(model.encoder(genes_bl, values_bl, attend_bl).float(), attend_bl, mode)
        return torch.nn.functional.normalize(emb_bd, dim=1) if normalize else emb_bd

    return run_batches(forward, [longest_first(cells.lengths)], batch_size, device=model.device, dtype=dtype,
                       progress=progress, cancel=cancel, step=step, empty=[(model.args.embsize,)])


def pool(hidden_bld, attend_bl, mode: str):
    """Position 0 (`<cls>`) for `cls`; for `mean`, the average over attended positions after the first."""
    if mode == "cls":
        return hidden_bld[:, 0]
    genes_bl = attend_bl.clone()
    genes_bl[:, 0] = False
    weights_bl = genes_bl.float()
    return (hidden_bld * weights_bl[..., None]).sum(1) / weights_bl.sum(1, keepdim=True)
