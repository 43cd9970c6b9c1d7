"""Where things live and how to reach them, read from the environment once per call.

Every path the project writes derives from `CZB_HOME` (default `~/.czb`) unless overridden, so a lab
admin can point the workspace at a big disk and the weights cache at a shared one. Nothing is
hard-coded to `/weights` or `/app` as cz-benchmarks did.

| variable | meaning | default |
|---|---|---|
| CZB_HOME | root of workspace and caches | ~/.czb |
| CZB_WEIGHTS_DIR | weights cache | $CZB_HOME/weights |
| CZB_WORKSPACE | datasets, jobs database, artifacts | $CZB_HOME/workspace |
| CZB_S3_ENDPOINT_URL | S3 endpoint (MinIO, a mirror, a test server) | AWS |
| CZB_S3_SIGNED | 1 = use boto3's credential chain instead of anonymous access | 0 |
| CZB_DATA_ROOTS | server directories users may open by path, separated by ':' | (none) |
| CZB_MAX_UPLOAD_MB | upload size cap shown and enforced by the app | 2048 |
| CZB_USER | owner recorded on datasets and jobs when no login is set up | local |
| CZB_METRICS_MAX_CELLS | above this many cells metrics use a seeded stratified subsample | 50000 |
| CZB_ADMINS | e-mails (or CZB_USER names) of admins, comma-separated: they see every user's items | (none) |
| CZB_WORKER_MEMORY_LIMIT_MB | data-size limit (RLIMIT_DATA) of each worker process; a job past it fails | (none) |
| CZB_CPU_WORKERS | processes computing UMAPs and metrics, apart from the device workers | 1 |
| CZB_USER_QUOTA_GB | disk quota per user: stored dataset files plus job results | (none) |
| CZB_MAX_QUEUED_JOBS | runs one user may have waiting in the queues | 20 |
| CZB_RETENTION_DAYS | datasets (and their results) older than this are deleted | (keep forever) |
| CZB_MAX_CELLS | a file declaring more cells is refused before it is read | 20000000 |
| CZB_RAY_ADDRESS | Ray cluster that runs shard their rows on (`auto`, `HOST:PORT`, `ray://HOST:PORT`) | (no Ray) |
| CZB_HEALTH_PORT | port of `GET /health` (workers, queue, disk) | (no endpoint) |
| CZB_HEALTH_HOST | address the health endpoint listens on | 127.0.0.1 |
| CZB_SINGLE_USER | 1 = one person here, no login: `make serve` starts without [auth], on 127.0.0.1 only | 0 |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from czb_core.errors import ConfigError


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


def _env_positive(name: str, kind: type, default=None):
    """A positive number from the environment, or `default` when unset; a typo must not silently mean
    "no limit", so anything else is refused naming the variable."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = kind(value)
    except ValueError:
        number = 0
    if not number > 0:
        raise ConfigError(f"{name}={value!r} is not a positive {'whole ' if kind is int else ''}number")
    return number


def _env_switch(name: str) -> bool:
    """On for "1", off for "0" or unset; anything else is refused, so a "yes" or "true" is not silently off."""
    value = os.environ.get(name, "").strip() or "0"
    if value not in ("0", "1"):
        raise ConfigError(f"{name} must be 1 or 0, not {value!r}")
    return value == "1"


def _port(name: str) -> Optional[int]:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ConfigError(f"{name} must be a port number (1-65535), not {value!r}")
    return int(value)


@dataclass(frozen=True)
class Settings:
    home: Path
    weights_dir: Path
    workspace: Path
    s3_endpoint_url: Optional[str]
    s3_signed: bool
    data_roots: tuple[Path, ...] = field(default_factory=tuple)
    max_upload_mb: int = 2048
    user: str = "local"
    metrics_max_cells: int = 50_000
    worker_memory_limit_mb: Optional[int] = None
    admins: tuple[str, ...] = ()
    cpu_workers: int = 1
    user_quota_gb: Optional[float] = None
    max_queued_jobs: int = 20
    retention_days: Optional[float] = None
    max_cells: int = 20_000_000
    ray_address: Optional[str] = None
    health_port: Optional[int] = None
    health_host: str = "127.0.0.1"
    single_user: bool = False

    @classmethod
    def from_env(cls) -> "Settings":
        home = _env_path("CZB_HOME", Path.home() / ".czb")
        roots = tuple(
            Path(p).expanduser().resolve()
            for p in os.environ.get("CZB_DATA_ROOTS", "").split(os.pathsep)
            if p.strip()
        )
        return cls(
            home=home,
            weights_dir=_env_path("CZB_WEIGHTS_DIR", home / "weights"),
            workspace=_env_path("CZB_WORKSPACE", home / "workspace"),
            s3_endpoint_url=os.environ.get("CZB_S3_ENDPOINT_URL") or None,
            s3_signed=os.environ.get("CZB_S3_SIGNED", "0") == "1",
            data_roots=roots,
            max_upload_mb=int(os.environ.get("CZB_MAX_UPLOAD_MB", "2048")),
            user=os.environ.get("CZB_USER", "local"),
            metrics_max_cells=int(os.environ.get("CZB_METRICS_MAX_CELLS", "50000")),
            worker_memory_limit_mb=int(os.environ["CZB_WORKER_MEMORY_LIMIT_MB"])
            if os.environ.get("CZB_WORKER_MEMORY_LIMIT_MB") else None,
            admins=tuple(a.strip().lower() for a in os.environ.get("CZB_ADMINS", "").split(",") if a.strip()),
            cpu_workers=_env_positive("CZB_CPU_WORKERS", int, 1),
            user_quota_gb=_env_positive("CZB_USER_QUOTA_GB", float),
            max_queued_jobs=_env_positive("CZB_MAX_QUEUED_JOBS", int, 20),
            retention_days=_env_positive("CZB_RETENTION_DAYS", float),
            max_cells=_env_positive("CZB_MAX_CELLS", int, 20_000_000),
            ray_address=os.environ.get("CZB_RAY_ADDRESS", "").strip() or None,
            health_port=_port("CZB_HEALTH_PORT"),
            health_host=os.environ.get("CZB_HEALTH_HOST", "").strip() or "127.0.0.1",
            single_user=_env_switch("CZB_SINGLE_USER"),
        )


def get_settings() -> Settings:
    """Settings as the environment says now (cheap; tests change the environment per test)."""
    return Settings.from_env()
