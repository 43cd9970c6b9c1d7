"""The run record: how an embedding was made, stored with it (`uns["czb_run"]`) and exported as JSON.

Enough to reproduce or audit a run: input hash, model, variant, weights manifest (source, checksums),
parameters, seed, package versions, device, timings and peak memory.
"""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

RECORDED_PACKAGES = (
    "numpy", "scipy", "pandas", "anndata", "scanpy", "scikit-learn", "torch", "transformers", "scvi-tools",
)


def package_versions() -> dict[str, str]:
    from czb_core import __version__

    versions = {"python": platform.python_version(), "czb_core": __version__}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def device_description(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"device": device, "platform": platform.platform()}
    if device.startswith("cuda") and "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():  # the GPU the run used (`cuda:1`), not always the first
            info["gpu"] = torch.cuda.get_device_name(torch.device(device if ":" in device else "cuda:0"))
            info["gpu_count"] = torch.cuda.device_count()
    return info


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def h5_safe(value: Any) -> Any:
    """A copy storable in h5ad `uns`: None values dropped (HDF5 has no null); a list of records
    (dicts or lists, e.g. validation problems, weight files) becomes a dict keyed "0", "1", ... since
    HDF5 stores only lists of scalars."""
    if isinstance(value, dict):
        return {str(k): h5_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        items = [v for v in value if v is not None]
        if any(isinstance(v, (dict, list, tuple)) for v in items):
            return {str(i): h5_safe(v) for i, v in enumerate(items)}
        return items
    return value
