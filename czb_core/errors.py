"""Error types that carry a message meant for the scientist, not a traceback.

`InputError` means the input itself is unusable (not an h5ad, empty, unreadable): the CLI exits 2.
`DatasetValidationError` is the `ValueError` a validator raises listing every blocking problem: exit 1.
`WeightsError` means the model's weights could not be had. `Cancelled` stops a job between batches.
"""

from __future__ import annotations


class CzbError(Exception):
    """Base of every error whose message is written for a user."""


class InputError(CzbError, ValueError):
    """The dataset cannot be read or holds nothing to work on."""


class DatasetValidationError(CzbError, ValueError):
    """A dataset fails a model's blocking checks; `report` holds every problem."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class WeightsError(CzbError):
    """Weights are missing, denied, unreachable, or do not match their recorded checksum."""


class ConfigError(CzbError):
    """A model, variant or setting that does not exist or is malformed."""


class Cancelled(CzbError):
    """Raised between batches when a run's cancel token is set."""


class DeviceOutOfMemory(CzbError):
    """The GPU ran out of memory at `batch_size` (the batch size the runner had in use)."""

    def __init__(self, batch_size: int):
        super().__init__(f"CUDA out of memory at batch size {batch_size}")
        self.batch_size = batch_size


class StorageError(CzbError):
    """The server's disk or job database refused a write (disk full, I/O error): nothing the user did."""
