"""Run one model variant on one file: the single entry point of the CLI and the job workers.

`embed_file` reads the file's header once, builds the model's data manager from it, and runs the
implementation's `execute` flow, which reads the matrix only after the checks pass. It returns a
`RunResult` (the embedding or a prediction, obs and the run record). `write_run_h5ad` writes the slim h5ad
contract: obs of the input, `obsm["X_<model>"]`, `uns["czb_run"]`; `write_extras` the side outputs some
runs make (`<name>.extras.npz`, e.g. contextual gene embeddings), which do not belong in the h5ad.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import anndata as ad
import numpy as np
import pandas as pd

from czb_core.errors import InputError
from czb_core.io.atomic import atomic_path
from czb_core.io.hashing import sha256_file
from czb_core.io.header import read_header
from czb_core.io.reading import read_anndata
from czb_core.models.device import resolve_device
from czb_core.models.memory import PeakMemory
from czb_core.models.record import device_description, h5_safe, package_versions, utc_now
from czb_core.models.registry import get_model
from czb_core.models.runner import RunOutput
from czb_core.progress import CancelToken, ProgressCallback, no_progress
from czb_core.schema.report import ValidationReport
from czb_core.streaming.plan import IN_MEMORY, STREAMED, plan_reading
from czb_core.streaming.row_blocks import open_row_blocks
from czb_core.streaming.sharding import SHARDED, configured_ray_address, embed_sharded
from czb_core.types import Organism


def obsm_key(model: str) -> str:
    """The documented key of a model's embedding: `obsm["X_<model>"]`, e.g. `X_pca`, `X_geneformer`."""
    return f"X_{model}"


@dataclass
class RunResult:
    """An embedding of the input's cells (`emb_nd`), or a prediction (`pred_ng` over `genes_g`, one row
    per row of `obs`, e.g. sampled control cells), with the run record and the validation report."""

    model: str
    variant: str
    emb_nd: Optional[np.ndarray]
    obs: pd.DataFrame
    record: dict
    report: ValidationReport
    pred_ng: Optional[np.ndarray] = None
    genes_g: Optional[np.ndarray] = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def obsm_key(self) -> str:
        return obsm_key(self.model)

    def to_anndata(self) -> ad.AnnData:
        """The slim h5ad: obs and `obsm["X_<model>"]`, or for a prediction X over the predicted genes."""
        uns = {"czb_run": h5_safe(self.record)}
        if self.pred_ng is not None:
            var = pd.DataFrame(index=pd.Index(np.asarray(self.genes_g, dtype=str), name="gene"))
            return ad.AnnData(X=np.asarray(self.pred_ng, dtype=np.float32), obs=self.obs.copy(), var=var, uns=uns)
        return ad.AnnData(obs=self.obs.copy(), obsm={self.obsm_key: self.emb_nd}, uns=uns)


def embed_file(
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
    stream: Optional[bool] = None,
    ray_address: Optional[str] = None,
) -> RunResult:
    """Validate, fetch weights, embed. Raises `InputError`, `DatasetValidationError`, `WeightsError`,
    `ConfigError`, `DeviceOutOfMemory` or `Cancelled` with a message meant for the user.

    `stream`: True reads the matrix in row blocks (models that can), False reads it whole; None decides
    from its size and the free memory (`czb_core.streaming.plan`). A matrix that does not fit in memory
    is refused before it is read when the model cannot stream it.

    `ray_address` (default `CZB_RAY_ADDRESS`): run it as shards of rows on that Ray cluster
    (`czb_core.streaming.sharding`); the device is then the workers' and `stream` does not apply."""
    config = get_model(model)
    implementation = config.load_implementation()(config, variant, weights_uri=weights,
                                                  weights_cache=weights_cache, **(params or {}))
    ray_address = ray_address or configured_ray_address()
    requested_device, device = device, ("cpu" if ray_address else resolve_device(device))
    sharding = None
    started, t0 = utc_now(), time.perf_counter()
    with PeakMemory(device=device) as peak:
        progress("read header", 0, 1)
        header = read_header(data_path)
        progress("read header", 1, 1)
        manager = implementation.data_manager(header, organism)
        reading = SHARDED if ray_address else reading_mode(data_path, manager.matrix_location, implementation, stream)
        if reading == SHARDED:
            output, sharding = embed_sharded(implementation, manager, data_path, address=ray_address,
                                             device=requested_device, progress=progress, cancel=cancel)
        elif reading == STREAMED:
            output = implementation.execute(manager, device=device, progress=progress, cancel=cancel,
                                            open_blocks=lambda: open_row_blocks(data_path, manager.matrix_location,
                                                                                progress))
        else:
            output = implementation.execute(manager, device=device, progress=progress, cancel=cancel,
                                            read_data=lambda: read_anndata(data_path))
    report = implementation.report
    if input_sha256 is None:
        progress("hash input", 0, 1)
        input_sha256 = sha256_file(data_path)
        progress("hash input", 1, 1)
    record = run_record(implementation, output, report, header_path=header.path, sha256=input_sha256,
                        n_vars=header.n_vars, started=started, wall_s=time.perf_counter() - t0, peak=peak)
    record["reading"] = reading
    if sharding is not None:
        record["sharding"] = sharding
    record["genes"] = {"read from": manager.gene_source, "naming": manager.gene_system.value,
                       "species": manager.detection.describe(), "reference": manager.detection.reference}
    if output.pred_ng is not None:  # rows are the runner's (e.g. sampled control cells), not the input's
        obs = pd.DataFrame(output.obs, index=pd.RangeIndex(output.n_cells).astype(str))
        return RunResult(model, implementation.variant, None, obs, record, report, output.pred_ng, output.genes_g,
                         output.extras)
    obs = manager.obs.iloc[np.flatnonzero(manager.cells_kept_n)].copy()
    for column, values in output.obs.items():
        obs[column] = values
    return RunResult(model, implementation.variant, np.asarray(output.emb_nd), obs, record, report,
                     extras=output.extras)


def reading_mode(data_path: str | Path, location: str, implementation, stream: Optional[bool]) -> str:
    """IN_MEMORY or STREAMED for this file and model (see `embed_file`)."""
    if stream:
        return STREAMED
    if Path(data_path).suffix == ".h5":  # 10x files are read whole (they are per-sample, not atlases)
        return IN_MEMORY
    plan = plan_reading(data_path, location)
    if plan.fits:
        return IN_MEMORY
    if stream is None and implementation.can_stream:
        return STREAMED
    fix = ("run it streamed (czb run --stream)" if implementation.can_stream else
           "run it on a subset of the cells, on a machine with more memory, or with the PCA baseline, which streams")
    raise InputError(f"{Path(data_path).name} is too large to read into memory here ({plan.describe()}); {fix}")


def run_record(implementation, output: RunOutput, report: ValidationReport, *, header_path: str, sha256: str,
               n_vars: int, started: str, wall_s: float, peak: PeakMemory) -> dict:
    """How the embedding was made: enough to reproduce or audit it (stored as `uns["czb_run"]`)."""
    config = implementation.config
    return {
        "model": config.name,
        "model_type": implementation.model_type.value,
        "display_name": config.display_name,
        "variant": implementation.variant,
        "obsm_key": obsm_key(config.name),
        "embedding_shape": None if output.emb_nd is None else list(output.emb_nd.shape),
        "prediction_shape": None if output.pred_ng is None else list(output.pred_ng.shape),
        "input": {"path": header_path, "sha256": sha256, "n_obs": output.n_cells, "n_vars": n_vars},
        "organism": report.facts.get("organism"),
        "weights_source": implementation.weights_source(),
        "weights": implementation.weights_manifest,
        "weights_warm": implementation.weights_warm,
        "params": implementation.parameters(),
        "seed": implementation.args.seed,
        "batch_size_used": output.batch_size,
        "facts": output.facts,
        "extras": {name: list(np.shape(values)) for name, values in output.extras.items()},
        "notes": output.notes,
        "validation": [p.to_dict() for p in report.problems],
        "versions": package_versions(),
        **device_description(implementation.device),
        "started_at": started,
        "finished_at": utc_now(),
        "wall_s": round(wall_s, 3),
        "peak_rss_mb": round(peak.peak_rss_mb, 1),
        "peak_gpu_mb": None if peak.peak_gpu_mb is None else round(peak.peak_gpu_mb, 1),
    }


def write_run_h5ad(result: RunResult, path: str | Path) -> Path:
    """Write the slim h5ad atomically (a temporary name, then a rename)."""
    with atomic_path(path) as tmp:
        result.to_anndata().write_h5ad(tmp)
    return Path(path)


def extras_path(h5ad_path: str | Path) -> Path:
    """Where the side outputs of the run written to `h5ad_path` go: `<stem>.extras.npz` beside it."""
    path = Path(h5ad_path)
    return path.with_name(f"{path.stem}.extras.npz")


def write_extras(result: RunResult, path: str | Path) -> Optional[Path]:
    """The run's side outputs as one uncompressed npz (no pickled objects), atomically; None without any."""
    if not result.extras:
        return None
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **result.extras)  # type: ignore[arg-type]  # numpy's stub reads ** as allow_pickle
    return Path(path)
