"""Run one model variant on one file: the single entry point of the CLI and the job workers.

`run_model` resolves the model from the registry, builds the dataset, runs the implementation's flow
and returns a `RunResult` holding the embedding, the cells' obs and the run record.
`write_run_h5ad` writes the slim h5ad contract: obs of the input, `obsm["X_<model>"]`,
`uns["czb_run"]`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import anndata as ad
import numpy as np
import pandas as pd

from czb_core.datasets import SingleCellDataset
from czb_core.memory import PeakMemory
from czb_core.progress import CancelToken, ProgressCallback, no_progress
from czb_core.reading import check_readable, sha256_file
from czb_core.registry import get_model
from czb_core.run_record import device_description, h5_safe, package_versions, utc_now
from czb_core.types import DataType, Organism
from czb_core.validation import ValidationReport


def obsm_key(model: str) -> str:
    """The documented key of a model's embedding: `obsm["X_<model>"]`, e.g. `X_pca`, `X_geneformer`."""
    return f"X_{model}"


@dataclass
class RunResult:
    model: str
    variant: str
    emb_nd: np.ndarray
    obs: pd.DataFrame
    record: dict
    report: ValidationReport

    @property
    def obsm_key(self) -> str:
        return obsm_key(self.model)

    def to_anndata(self) -> ad.AnnData:
        return ad.AnnData(
            obs=self.obs.copy(), obsm={self.obsm_key: self.emb_nd}, uns={"czb_run": h5_safe(self.record)}
        )


def run_model(
    data_path: str | Path,
    model: str,
    variant: Optional[str] = None,
    *,
    organism: Optional[Organism] = None,
    params: Optional[dict[str, Any]] = None,
    weights: Optional[str] = None,
    device: Optional[str] = None,
    progress: ProgressCallback = no_progress,
    cancel: Optional[CancelToken] = None,
    input_sha256: Optional[str] = None,
    weights_cache=None,
) -> RunResult:
    """Validate, fetch weights, embed. Raises `InputError`, `DatasetValidationError`, `WeightsError`,
    `ConfigError` or `Cancelled` with a message meant for the user."""
    data_path = check_readable(data_path)
    config = get_model(model)
    implementation = config.load_implementation()(
        config, variant, weights_uri=weights, device=device, progress=progress, cancel=cancel,
        weights_cache=weights_cache, **(params or {}),
    )
    started, t0 = utc_now(), time.perf_counter()
    with PeakMemory(device=implementation.device) as peak:
        dataset = SingleCellDataset(data_path, organism)
        report = implementation.run(dataset)
        emb_nd = np.asarray(dataset.get_output(implementation.model_type, DataType.EMBEDDING))
    progress("hash input", 0, 1)
    sha = input_sha256 or sha256_file(data_path)
    progress("hash input", 1, 1)
    record = {
        "model": model,
        "model_type": implementation.model_type.value,
        "display_name": config.display_name,
        "variant": implementation.variant,
        "obsm_key": obsm_key(model),
        "embedding_shape": list(emb_nd.shape),
        "input": {"path": str(data_path), "sha256": sha, "n_obs": dataset.adata.n_obs,
                  "n_vars": dataset.adata.n_vars},
        "organism": report.facts.get("organism"),
        "weights_source": implementation.weights_source(),
        "weights": implementation.weights_manifest,
        "params": implementation.parameters(),
        "seed": implementation.args.seed,
        "validation": [p.to_dict() for p in report.problems],
        "versions": package_versions(),
        **device_description(implementation.device),
        "started_at": started,
        "finished_at": utc_now(),
        "wall_s": round(time.perf_counter() - t0, 3),
        "peak_rss_mb": round(peak.peak_rss_mb, 1),
        "peak_gpu_mb": None if peak.peak_gpu_mb is None else round(peak.peak_gpu_mb, 1),
    }
    obs = dataset.adata.obs.copy()
    for column, values in implementation.extra_obs.items():
        obs[column] = values
    result = RunResult(model, implementation.variant, emb_nd, obs, record, report)
    dataset.unload_data()
    return result


def write_run_h5ad(result: RunResult, path: str | Path) -> Path:
    """Write the slim h5ad atomically (a temporary name, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    result.to_anndata().write_h5ad(tmp)
    os.replace(tmp, path)
    return path
