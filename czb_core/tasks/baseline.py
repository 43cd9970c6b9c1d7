"""Where the PCA baseline embedding of a dataset is kept: by content hash, computed once.

Every model's metrics are reported beside the baseline's; the baseline of a dataset never changes, so it
is cached as `<workspace>/baselines/<sha256>.npy` and shared by every run, job and `czb benchmark`.
`czb_core.service.baseline` makes it (a run of `baseline_model()`, the registry's one baseline); tasks
only read it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from czb_core.config import get_settings
from czb_core.io.atomic import atomic_path
from czb_core.models import description
from czb_core.models.registry import discover_models


def baseline_model() -> str:
    """The model the baseline is computed with: the one whose description says baseline (the PCA runner)."""
    return description.baseline_model(discover_models())


def baseline_path(sha256: str) -> Path:
    return get_settings().workspace / "baselines" / f"{sha256}.npy"


def store_baseline(sha256: str, emb_nd: np.ndarray) -> None:
    """Keep `emb_nd` as the baseline of the dataset `sha256` (written atomically)."""
    path = baseline_path(sha256)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, emb_nd)
