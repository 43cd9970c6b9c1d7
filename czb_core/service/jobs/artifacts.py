"""The files a finished job leaves in `<workspace>/jobs/<job_id>/`, and how pages read them back.

`embedding.h5ad` is the slim h5ad contract (obs, `obsm["X_<model>"]`, `uns["czb_run"]`), `umap.npy` the
2-D layout in the same cell order, `record.json` the run record with the job's notes, and
`embedding.extras.npz` the run's side outputs when it has any (TranscriptFormer's contextual gene
embeddings). A prediction run (scGenePT) keeps its predicted expression in `embedding.h5ad`'s `X` and has
no UMAP. A tokenizer-lab training (`czb_core.service.jobs.lab`) leaves `lab_run.json` and its trained
model instead, both named in its record. `record.json` is written last, so its presence means the set is
complete; until then `record.pending.json` holds the record of the embedding stage, for the CPU pool's stage
(see `execution.py`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import anndata as ad
import numpy as np
import pandas as pd

from czb_core.io.exports import npy_zip, to_csv, to_parquet
from czb_core.models.pipeline import extras_path

EMBEDDING_H5AD = "embedding.h5ad"
UMAP_NPY = "umap.npy"
RECORD_JSON = "record.json"
PENDING_RECORD_JSON = "record.pending.json"
METRICS_DIR = "metrics"  # one document per scoring run: metrics/<options key>.json


def is_complete(artifact_dir: Optional[Path]) -> bool:
    """Whether the job's files are all there: the record, written last, and what it says the run made."""
    if artifact_dir is None or not (Path(artifact_dir) / RECORD_JSON).is_file():
        return False
    record = read_record(artifact_dir)
    needed: tuple[str, ...]
    if is_lab_record(record):
        needed = (record["lab_run"], record["model_file"])
    else:
        needed = (EMBEDDING_H5AD,) if is_prediction_record(record) else (EMBEDDING_H5AD, UMAP_NPY)
    return all((Path(artifact_dir) / name).is_file() for name in needed)


def is_lab_record(record: dict) -> bool:
    """A run record of a tokenizer-lab training: a classifier's metrics and weights, not an embedding."""
    return record.get("lab_run") is not None


def is_prediction_record(record: dict) -> bool:
    """A run record of a prediction (predicted expression of control cells), not of an embedding."""
    return record.get("prediction_shape") is not None


def extras_file(artifact_dir: Path) -> Optional[Path]:
    """The run's side outputs (`embedding.extras.npz`), or None when it has none."""
    path = extras_path(Path(artifact_dir) / EMBEDDING_H5AD)
    return path if path.is_file() else None


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
    "side outputs (npz)": ("extras.npz", "application/zip"),
    "prediction (h5ad)": ("prediction.h5ad", "application/x-hdf5"),
}
PREDICTION_FORMATS = ("prediction (h5ad)", "run record (JSON)")


def formats_of(artifact_dir: Path) -> list[str]:
    """The downloads a finished job offers: an embedding's formats, or a prediction's; its side outputs."""
    if is_prediction_record(read_record(artifact_dir)):
        return list(PREDICTION_FORMATS)
    embedding = [f for f in FORMATS if f not in PREDICTION_FORMATS or f == "run record (JSON)"]
    return [f for f in embedding if f != "side outputs (npz)" or extras_file(artifact_dir) is not None]


def export_bytes(artifact_dir: Path, fmt: str) -> tuple[str, str, bytes]:
    """(file name, MIME type, bytes) of one finished job's download in `fmt` (a key of FORMATS)."""
    name, mime = FORMATS[fmt]
    artifact_dir = Path(artifact_dir)
    if fmt in ("h5ad", "prediction (h5ad)"):
        return name, mime, (artifact_dir / EMBEDDING_H5AD).read_bytes()
    if fmt == "run record (JSON)":
        return name, mime, (artifact_dir / RECORD_JSON).read_bytes()
    if fmt == "side outputs (npz)":
        return name, mime, extras_path(artifact_dir / EMBEDDING_H5AD).read_bytes()
    emb_nd, obs, key = read_embedding(artifact_dir)
    if fmt == "parquet":
        return name, mime, to_parquet(emb_nd, obs.index, key)
    if fmt == "csv":
        return name, mime, to_csv(emb_nd, obs.index, key)
    return name, mime, npy_zip(emb_nd, obs.index)
