"""The PCA baseline embedding of a dataset, computed once and kept by content hash.

Every model's metrics are reported beside the baseline's; the baseline of a dataset never changes, so it
is cached as `<workspace>/baselines/<sha256>.npy` and shared by every run, job and `czb benchmark`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from czb_core.config import get_settings
from czb_core.io.atomic import atomic_path
from czb_core.progress import CancelToken, ProgressCallback, no_progress
from czb_core.io.hashing import sha256_file
from czb_core.types import Organism

BASELINE_MODEL = "pca"


def baseline_path(sha256: str) -> Path:
    return get_settings().workspace / "baselines" / f"{sha256}.npy"


def baseline_embedding(
    data_path: str | Path,
    sha256: Optional[str] = None,
    organism: Optional[Organism] = None,
    progress: ProgressCallback = no_progress,
    cancel: Optional[CancelToken] = None,
) -> np.ndarray:
    """`emb_nd` of the PCA baseline (default parameters) of the file, from the cache when present."""
    from czb_core.models.pipeline import embed_file

    sha256 = sha256 or sha256_file(data_path)
    path = baseline_path(sha256)
    if path.exists():
        return np.load(path)
    progress("baseline (PCA)", 0, 1)
    result = embed_file(data_path, BASELINE_MODEL, organism=organism, cancel=cancel, input_sha256=sha256)
    store_baseline(sha256, result.emb_nd)
    progress("baseline (PCA)", 1, 1)
    return result.emb_nd


def store_baseline(sha256: str, emb_nd: np.ndarray) -> None:
    """Keep `emb_nd` as the baseline of the dataset `sha256` (written atomically)."""
    path = baseline_path(sha256)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, emb_nd)


def is_the_baseline(record: dict) -> bool:
    """Whether a run record describes the baseline itself: the PCA model with its default parameters."""
    from czb_core.models.registry import get_model

    config = get_model(BASELINE_MODEL)
    baseline = config.load_implementation()(config)  # the default variant (PCA, not its probabilistic ones)
    return (record.get("model") == BASELINE_MODEL and record.get("variant", baseline.variant) == baseline.variant
            and record.get("params") == baseline.parameters())
