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

from czb_core.io.exports import npy_zip, to_csv, to_parquet

EMBEDDING_H5AD = "embedding.h5ad"
UMAP_NPY = "umap.npy"
RECORD_JSON = "record.json"
METRICS_DIR = "metrics"  # one document per scoring run: metrics/<options key>.json


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


# format -> (file name suffix, MIME type)
FORMATS = {
    "h5ad": ("embedding.h5ad", "application/x-hdf5"),
    "parquet": ("embedding.parquet", "application/vnd.apache.parquet"),
    "npy + cell ids": ("embedding_npy.zip", "application/zip"),
    "csv": ("embedding.csv", "text/csv"),
    "run record (JSON)": ("run_record.json", "application/json"),
}


def export_bytes(artifact_dir: Path, fmt: str) -> tuple[str, str, bytes]:
    """(file name, MIME type, bytes) of one finished job's download in `fmt` (a key of FORMATS)."""
    name, mime = FORMATS[fmt]
    artifact_dir = Path(artifact_dir)
    if fmt == "h5ad":
        return name, mime, (artifact_dir / EMBEDDING_H5AD).read_bytes()
    if fmt == "run record (JSON)":
        return name, mime, (artifact_dir / RECORD_JSON).read_bytes()
    emb_nd, obs, key = read_embedding(artifact_dir)
    if fmt == "parquet":
        return name, mime, to_parquet(emb_nd, obs.index, key)
    if fmt == "csv":
        return name, mime, to_csv(emb_nd, obs.index, key)
    return name, mime, npy_zip(emb_nd, obs.index)
