"""Geneformer cell embeddings from a Hugging Face BERT checkpoint, batched by sequence length.

The checkpoint is a `BertForMaskedLM` directory (`config.json` + `model.safetensors`, or
`pytorch_model.bin` read with `weights_only=True`; `training_args.bin` is never opened). An embedding
needs neither the masked-LM head (its logits alone would be batch x length x ~20,000 floats) nor the
layers after the one read, so `CellEncoder` keeps the BERT encoder cut to `n_layers - 1` layers for
`emb_layer=-1` (the output of that stack is `hidden_states[n_layers - 1]`) or all of them for
`emb_layer=0`, and never holds every layer's hidden states. Attention is SDPA; on CUDA matmuls run
under bf16 autocast (`precision="auto"`), on the CPU in fp32.

The engine (`czb_core.models.inference`) runs the batches: longest cell first (an out-of-memory error
shows on the first batch, not after an hour), each padded only to its own longest cell, under the run's
precision, with outputs back in input order.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from czb_core.errors import ConfigError, WeightsError
from czb_core.models.inference import Batched, autocast_dtype, longest_first, memory_batch_size, run_batches
from czb_core.progress import CancelToken, ProgressCallback, no_progress

if TYPE_CHECKING:  # an annotation only: the tokenizer module needs numba, which a bare GPU python lacks
    from model_runners.geneformer.tokenizer import TokenizedCells

CPU_BATCH_SIZE = 16
MAX_AUTO_BATCH = 256
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def load_checkpoint(folder: Path, attn_implementation: str = "sdpa"):
    """The `BertForMaskedLM` in `folder`, in fp32 and eval mode; `WeightsError` when it is unusable.

    A missing, truncated or corrupt file, or a checkpoint whose tensors do not fill the BERT encoder
    (which transformers would silently fill with random values), is refused with a message that
    says what to do.
    """
    import torch
    from transformers import BertForMaskedLM
    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    lacking = [names for names in (("config.json",), WEIGHT_FILES)
               if not any((folder / name).is_file() for name in names)]
    if lacking:  # what is missing, never what else the folder holds: the message reaches users of the app
        raise WeightsError(f"{folder} is not a Geneformer checkpoint: it has no "
                           f"{' and no '.join(' or '.join(names) for names in lacking)}")
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model, info = BertForMaskedLM.from_pretrained(
            folder, attn_implementation=attn_implementation, dtype=torch.float32, local_files_only=True,
            weights_only=True, output_loading_info=True,
        )
    except Exception as exc:  # transformers, safetensors and torch each raise their own types
        raise WeightsError(
            f"the checkpoint in {folder} cannot be loaded ({type(exc).__name__}: {exc}); it may be truncated "
            "or corrupt: delete its cache entry and download it again"
        ) from exc
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    missing = sorted(k for k in info["missing_keys"] if k.startswith("bert."))
    if missing or info["mismatched_keys"]:
        problems = missing[:3] + [str(k) for k in list(info["mismatched_keys"])[:3]]
        raise WeightsError(
            f"the checkpoint in {folder} does not fit a BERT of its own config.json ({len(missing)} missing, "
            f"{len(info['mismatched_keys'])} mis-shaped tensors, e.g. {', '.join(problems)}); it would run "
            "with random weights"
        )
    return model.eval()


class CellEncoder:
    """A loaded checkpoint, cut to the layers one embedding needs, on one device."""

    def __init__(self, model, emb_layer: int, device: str, precision: str):
        import torch

        if emb_layer not in (-1, 0):
            raise ConfigError(f"emb_layer must be -1 (second-to-last layer) or 0 (last layer), got {emb_layer}")
        self.config = model.config
        self.device = torch.device(device)
        self.bert = model.bert
        n_layers = self.config.num_hidden_layers
        self.bert.encoder.layer = self.bert.encoder.layer[: n_layers - 1 if emb_layer == -1 else n_layers]
        self.bert.to(self.device)
        self.autocast_dtype = autocast_dtype(precision, self.device)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def auto_batch_size(self, longest: int) -> int:
        """Cells per batch: `CPU_BATCH_SIZE` on the CPU; on CUDA, what half of the free memory holds.

        Rule: a token costs about `4 * (intermediate_size + 8 * hidden_size)` bytes of live activations
        inside one layer (FFN intermediate, q/k/v, attention output, residual and norm copies, in fp32,
        an upper bound under bf16 autocast), a cell of the longest length L costs L times that plus
        L^2 bytes for the boolean attention mask, and the batch gets `GPU_MEMORY_SHARE` of the free
        memory, capped at `MAX_AUTO_BATCH`. Batches of shorter cells reuse the same count.
        """
        per_token = 4 * (self.config.intermediate_size + 8 * self.config.hidden_size)
        return memory_batch_size(self.device, longest * per_token + longest**2, cpu_batch=CPU_BATCH_SIZE,
                                 max_batch=MAX_AUTO_BATCH)

    def embed(
        self,
        cells: TokenizedCells,
        *,
        mode: str,
        pad_token: int,
        has_cls: bool,
        has_eos: bool,
        batch_size: Optional[int] = None,
        progress: ProgressCallback = no_progress,
        cancel: Optional[CancelToken] = None,
        step: str = "embed",
    ) -> Batched:
        """`emb_nd` (float32, input order) of `cells`, and the batch size the run ended with.

        `mode="cls"` reads position 0 (the `<cls>` token); `mode="cell"` averages the attended gene
        positions (padding and genes mapped to `<pad>` excluded, and `<cls>`/`<eos>` when the variant
        has them).
        """
        import torch

        if mode == "cls" and not has_cls:
            raise ConfigError("emb_mode=cls needs a <cls> token, which this variant has not; use emb_mode=cell")
        if batch_size is None:
            batch_size = self.auto_batch_size(int(cells.lengths.max()) if len(cells) else 1)

        def forward(rows_b: np.ndarray):
            tokens_bl, lengths_b = cells.padded(rows_b, pad_token)
            tokens_bl = torch.from_numpy(tokens_bl).to(self.device)
            lengths_b = torch.from_numpy(lengths_b).to(self.device)
            position_l = torch.arange(tokens_bl.shape[1], device=self.device)
            attended_bl = (position_l < lengths_b[:, None]) & (tokens_bl != pad_token)
            hidden_bld = self.bert(input_ids=tokens_bl, attention_mask=attended_bl.long()).last_hidden_state.float()
            if mode == "cls":
                return hidden_bld[:, 0]
            pooled_bl = attended_bl & (position_l >= int(has_cls))
            if has_eos:
                pooled_bl &= position_l < (lengths_b[:, None] - 1)
            weights_bl = pooled_bl.float()
            return (hidden_bld * weights_bl[..., None]).sum(1) / weights_bl.sum(1, keepdim=True)

        return run_batches(forward, [longest_first(cells.lengths)], batch_size, device=self.device,
                           dtype=self.autocast_dtype, progress=progress, cancel=cancel, step=step,
                           empty=[(self.hidden_size,)])
