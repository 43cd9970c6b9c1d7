"""The PCA baseline embedding of a dataset, made once by the run pipeline and kept by content hash
(`czb_core.tasks.baseline`), and whether a run record describes that baseline.

Every model's metrics are reported beside the baseline's; the baseline of a dataset never changes, so the
run of `baseline_model()` with its default parameters is made once per file and shared by every run, job and
`czb benchmark`. Tasks score embeddings and never run a model, so making the baseline lives here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from czb_core.io.hashing import sha256_file
from czb_core.progress import CancelToken, ProgressCallback, no_progress
from czb_core.tasks.baseline import baseline_model, baseline_path, store_baseline
from czb_core.types import Organism


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
    result = embed_file(data_path, baseline_model(), organism=organism, cancel=cancel, input_sha256=sha256)
    store_baseline(sha256, result.emb_nd)
    progress("baseline (PCA)", 1, 1)
    return result.emb_nd


def is_the_baseline(record: dict) -> bool:
    """Whether a run record describes the baseline itself: the PCA model with its default parameters."""
    from czb_core.models.registry import get_model

    config = get_model(baseline_model())
    baseline = config.load_implementation()(config)  # the default variant (PCA, not its probabilistic ones)
    return (record.get("model") == baseline_model() and record.get("variant", baseline.variant) == baseline.variant
            and record.get("params") == baseline.parameters())
