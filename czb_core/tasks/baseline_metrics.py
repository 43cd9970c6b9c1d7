"""The PCA baseline's metrics of a dataset, computed once per set of metric options and kept on disk.

Every model run is scored beside the baseline, and the baseline of a dataset never changes: scoring
it again for each model (a third of a run's metric time, more with label prediction) buys nothing.
`scoring.cached_baseline_results` reads an entry here, or scores the baseline and stores it.
Its task results are kept as JSON next to the cached baseline embedding:
`<workspace>/baselines/metrics/<dataset sha256>-<entry key>.json`, one file per entry, written
atomically so concurrent workers never see half a file.

The entry key is the sha256 of: the resolved `MetricOptions` with the tasks that will actually run
and the effective cell cap filled in (so "default tasks" and the same tasks named explicitly share an
entry), a fingerprint of the obs columns those options read (number of cells and every value), and
`CACHE_VERSION`, to be raised whenever a metric's definition or output changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import pandas as pd

from czb_core.config import get_settings
from czb_core.io.atomic import write_json_atomically
from czb_core.tasks.baseline import baseline_path
from czb_core.tasks.inputs import select_tasks
from czb_core.tasks.options import MetricOptions
from czb_core.tasks.results import MetricResult, TaskResult

CACHE_VERSION = 1
BaselineSource = Union[np.ndarray, Callable[[], np.ndarray]]


def obs_fingerprint(obs: pd.DataFrame, options: MetricOptions) -> str:
    """sha256 of the number of cells and every value (missing ones marked) of the columns the
    options read, so a cached entry is never served for other labels under the same file hash."""
    digest = hashlib.sha256(f"{len(obs)}".encode())
    for column in (options.label_key, options.batch_column, options.split_key):
        if column is None or column not in obs.columns:
            digest.update(b"\0-")
            continue
        values = obs[column].astype("string")
        digest.update(f"\0{column}\0".encode())
        digest.update(pd.util.hash_pandas_object(values, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def entry_key(options: MetricOptions, obs: pd.DataFrame) -> str:
    """The cache key of (resolved options, obs); see the module docstring for what goes in."""
    if not options.is_resolved:
        raise ValueError("baseline metrics are cached for resolved options only: call options.resolve(obs)")
    effective = dataclasses.replace(
        options,
        tasks=select_tasks(options.tasks, options.batch_column, options.split_key),
        max_cells=get_settings().metrics_max_cells if options.max_cells is None else options.max_cells,
    )
    material = {"version": CACHE_VERSION, "options": effective.to_dict(), "obs": obs_fingerprint(obs, options)}
    return hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def baseline_metrics_path(dataset_sha256: str, key: str) -> Path:
    return baseline_path(dataset_sha256).parent / "metrics" / f"{dataset_sha256}-{key}.json"


def load_baseline_results(
    dataset_sha256: str, options: MetricOptions, obs: pd.DataFrame
) -> Optional[list[TaskResult]]:
    """The cached baseline results of these options, or None when there are none (or they are unreadable)."""
    path = baseline_metrics_path(dataset_sha256, entry_key(options, obs))
    try:
        document = json.loads(path.read_text())
        return [_task_result(entry) for entry in document["results"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store_baseline_results(
    dataset_sha256: str, options: MetricOptions, obs: pd.DataFrame, results: list[TaskResult]
) -> Path:
    """Write the entry atomically (temporary file, then rename)."""
    path = baseline_metrics_path(dataset_sha256, entry_key(options, obs))
    document = {
        "version": CACHE_VERSION,
        "dataset_sha256": dataset_sha256,
        "options": options.to_dict(),
        "results": [dataclasses.asdict(result) for result in results],
    }
    return write_json_atomically(path, document)


def _task_result(entry: dict) -> TaskResult:
    metrics = [MetricResult(m["metric_type"], float(m["value"]), dict(m["params"])) for m in entry["metrics"]]
    return TaskResult(**{**entry, "metrics": metrics})
