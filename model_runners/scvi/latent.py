"""What both scVI variants share: where the model runs, and reading its latent mean in reported chunks."""

from __future__ import annotations

import numpy as np

from czb_core.progress import CancelToken, ProgressCallback

EMBED_STEP = "embed"
CHUNK_CELLS = 16_384  # cells per progress report / cancellation check while embedding


def lightning_device(device: str) -> tuple[str, int | str]:
    """(accelerator, device) for scvi-tools: "cuda:1" -> ("gpu", 1); "cpu" -> ("cpu", "auto").

    A single explicit GPU index, because "auto" would take every GPU and start distributed training.
    """
    if device.startswith("cuda"):
        _, _, index = device.partition(":")
        return "gpu", int(index or 0)
    return "cpu", "auto"


def latent_mean(model, batch_size: int, progress: ProgressCallback, cancel: CancelToken) -> np.ndarray:
    """`emb_nd` (float32): the posterior mean of z for every cell of the model's AnnData, in input order."""
    n_cells = model.adata.n_obs
    chunks = []
    progress(EMBED_STEP, 0, n_cells)
    for lo in range(0, n_cells, CHUNK_CELLS):
        cancel.check()
        indices = np.arange(lo, min(lo + CHUNK_CELLS, n_cells))
        chunks.append(model.get_latent_representation(indices=indices, give_mean=True, batch_size=batch_size))
        progress(EMBED_STEP, int(indices[-1]) + 1, n_cells)
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
