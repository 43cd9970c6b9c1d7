"""An embedding as bytes in the formats users of the nearest tools ask for (besides the slim h5ad), and the
names its downloads share (the commands that make it again are `czb_core.models.reproduce`).

Every table keeps the cells in the embedding's order and names them, so rows can be joined back to the
user's own obs; `.npy` has no room for names, so it comes with `cell_ids_txt` in the same order.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import PurePath
from typing import Any, Sequence

import numpy as np
import pandas as pd


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


# -- names ------------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe(text: str) -> str:
    """A file-name part: runs of other characters become `_` (`__` separates the parts)."""
    return re.sub(r"_{2,}", "_", _UNSAFE.sub("_", str(text))).strip("_") or "x"


def run_file_stem(dataset_name: str, model: str, variant: str, job_id: str) -> str:
    """`<dataset>__<model>-<variant>__<job>`: every download of one run shares it, so files from several
    runs sort by dataset and model and never overwrite each other. The dataset's extension is dropped."""
    dataset = PurePath(str(dataset_name)).name
    for suffix in (".h5ad", ".h5", ".gz"):
        dataset = dataset.removesuffix(suffix)
    return f"{_safe(dataset)}__{_safe(model)}-{_safe(variant)}__{_safe(job_id)}"


def download_name(stem: str, artifact_name: str) -> str:
    """A job artifact's download name: `embedding.h5ad` -> `<stem>.h5ad`, `embedding_npy.zip` ->
    `<stem>.npy.zip`, `run_record.json` -> `<stem>.run_record.json`."""
    if artifact_name.startswith("embedding"):
        return stem + "." + artifact_name[len("embedding"):].lstrip("._")
    return f"{stem}.{artifact_name}"


def param_text(value: Any) -> str:
    """A parameter value as `--param KEY=VALUE` takes it: lists comma-separated, mappings as K=V pairs,
    booleans as true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)
