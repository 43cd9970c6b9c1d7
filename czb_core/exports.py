"""The downloads of a finished job, as bytes for a download button.

The slim h5ad is written by the worker; these are the other formats users of the nearest tools ask for.
Every table keeps the cells in the embedding's order and names them, so rows can be joined back to the
user's own obs; `.npy` has no room for names, so it comes with `cell_ids_txt` in the same order.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from czb_core.jobs.artifacts import EMBEDDING_H5AD, RECORD_JSON, read_embedding


def embedding_frame(emb_nd: np.ndarray, obs_names: Sequence[str], key: str) -> pd.DataFrame:
    """`cell_id` then one float32 column per dimension, named `<key>_0`, `<key>_1`, ..."""
    emb_nd = np.asarray(emb_nd, dtype=np.float32)
    if len(obs_names) != emb_nd.shape[0]:
        raise ValueError(f"{len(obs_names)} cell ids for {emb_nd.shape[0]} embedding rows")
    frame = pd.DataFrame(emb_nd, columns=[f"{key}_{i}" for i in range(emb_nd.shape[1])])
    frame.insert(0, "cell_id", np.asarray(obs_names, dtype=str))
    return frame


def to_parquet(emb_nd: np.ndarray, obs_names: Sequence[str], key: str) -> bytes:
    buffer = io.BytesIO()
    embedding_frame(emb_nd, obs_names, key).to_parquet(buffer, index=False, engine="pyarrow")
    return buffer.getvalue()


def to_csv(emb_nd: np.ndarray, obs_names: Sequence[str], key: str) -> bytes:
    """Values with 9 significant digits: enough to read back every float32 exactly."""
    return embedding_frame(emb_nd, obs_names, key).to_csv(index=False, float_format="%.9g").encode()


def to_npy(emb_nd: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(emb_nd, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def cell_ids_txt(obs_names: Sequence[str]) -> bytes:
    """One cell id per line, in the embedding's row order (the companion of `to_npy`)."""
    return "".join(f"{name}\n" for name in obs_names).encode()




def npy_zip(emb_nd: np.ndarray, obs_names: Sequence[str]) -> bytes:
    """`embedding.npy` and `cell_ids.txt` together, so the ids cannot get separated from the rows."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("embedding.npy", to_npy(emb_nd))
        archive.writestr("cell_ids.txt", cell_ids_txt(obs_names))
    return buffer.getvalue()


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
