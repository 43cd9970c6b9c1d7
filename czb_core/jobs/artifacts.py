"""The files a finished job leaves in `<workspace>/jobs/<job_id>/`, and how pages read them back.

`embedding.h5ad` is the slim h5ad contract (obs, `obsm["X_<model>"]`, `uns["czb_run"]`), `umap.npy` the
2-D layout in the same cell order, `record.json` the run record with the job's notes. `record.json` is
written last, so its presence means the set is complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import anndata as ad
import numpy as np
import pandas as pd

EMBEDDING_H5AD = "embedding.h5ad"
UMAP_NPY = "umap.npy"
RECORD_JSON = "record.json"


def is_complete(artifact_dir: Optional[Path]) -> bool:
    return artifact_dir is not None and all(
        (Path(artifact_dir) / name).is_file() for name in (EMBEDDING_H5AD, UMAP_NPY, RECORD_JSON)
    )


def read_embedding(artifact_dir: Path) -> tuple[np.ndarray, pd.DataFrame, str]:
    """`(emb_nd, obs, obsm_key)`: obs colours the plots, its index names the cells in the exports."""
    adata = ad.read_h5ad(Path(artifact_dir) / EMBEDDING_H5AD)
    key = str(adata.uns["czb_run"]["obsm_key"])
    return np.asarray(adata.obsm[key]), adata.obs, key


def read_umap(artifact_dir: Path) -> np.ndarray:
    return np.load(Path(artifact_dir) / UMAP_NPY)


def read_record(artifact_dir: Path) -> dict:
    return json.loads((Path(artifact_dir) / RECORD_JSON).read_text())


def record_json(record: dict) -> bytes:
    """The run record (how the embedding was made) as indented JSON; unknown types written as text."""
    return json.dumps(record, indent=2, default=str).encode()
