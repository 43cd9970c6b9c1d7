"""What a scientist chose for scoring an embedding, as one value that can be stored, compared and hashed.

Label and batch columns are tri-state, because "I did not choose" and "I chose none" mean different
things: `None` = not chosen, `resolve(obs)` fills in the suggested column (`column_roles.py`);
`NO_BATCH` = the scientist chose no batch column, and it stays that way whatever obs suggests; a
string = that column. In JSON, not chosen is null and NO_BATCH is false, which no column name can be.

`key()` is the sha256 of the canonical JSON (sorted keys, no spaces), so two equal choices give the
same key in every process: the baseline-metrics cache is keyed by it (`baseline_metrics.py`).
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any, Optional, Union

import numpy as np
import pandas as pd

from czb_core.errors import InputError
from czb_core.tasks.column_roles import suggest_columns
from czb_core.tasks.inputs import TASK_NAMES


class _NoBatch(enum.Enum):
    NO_BATCH = "no batch"

    def __repr__(self) -> str:
        return "NO_BATCH"


NO_BATCH = _NoBatch.NO_BATCH
BatchChoice = Union[str, None, _NoBatch]
FIELDS = ("label_key", "batch_key", "split_key", "train", "test", "tasks", "seed", "max_cells")


@dataclass(frozen=True)
class MetricOptions:
    """Columns, tasks, seed and cell cap of a metrics run. `tasks=None` = every task whose columns are
    set; `max_cells=None` = `Settings.metrics_max_cells`. Tasks are kept in the library's order."""

    label_key: Optional[str] = None
    batch_key: BatchChoice = None
    split_key: Optional[str] = None
    train: Any = None
    test: Any = None
    tasks: Optional[tuple[str, ...]] = None
    seed: int = 42
    max_cells: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("train", "test", "seed", "max_cells"):  # numpy scalars (values read from obs) -> Python
            value = getattr(self, name)
            if isinstance(value, np.generic):
                object.__setattr__(self, name, value.item())
        for name in ("label_key", "split_key"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise InputError(f"{name} must be a column name or None, got {value!r}")
        if self.batch_key is not None and self.batch_key is not NO_BATCH:
            if not isinstance(self.batch_key, str) or not self.batch_key:
                raise InputError("batch_key must be a column name, None (not chosen) or NO_BATCH, "
                                 f"got {self.batch_key!r}")
        if self.tasks is not None:
            tasks = (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks)
            unknown = [t for t in tasks if t not in TASK_NAMES]
            if unknown:
                raise InputError(f"unknown task(s) {', '.join(map(repr, unknown))}; "
                                 f"choose from: {', '.join(TASK_NAMES)}")
            object.__setattr__(self, "tasks", tuple(t for t in TASK_NAMES if t in tasks))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputError(f"seed must be an integer, got {self.seed!r}")
        if self.max_cells is not None and (isinstance(self.max_cells, bool) or not isinstance(self.max_cells, int)
                                           or self.max_cells < 1):
            raise InputError(f"max_cells must be a positive integer or None, got {self.max_cells!r}")
        for name in ("train", "test"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, int, float, bool)):
                raise InputError(f"{name} must be a single split value (text or number), got {value!r}")

    @property
    def batch_column(self) -> Optional[str]:
        """The batch column to score with, None when there is none (chosen or not found)."""
        return None if self.batch_key is NO_BATCH else self.batch_key

    @property
    def is_resolved(self) -> bool:
        """Whether every open choice is settled: a label column and a batch decision."""
        return self.label_key is not None and self.batch_key is not None

    def to_dict(self) -> dict:
        """JSON-ready: NO_BATCH becomes false, tasks a list."""
        values = {name: getattr(self, name) for name in FIELDS}
        values["batch_key"] = False if self.batch_key is NO_BATCH else self.batch_key
        values["tasks"] = None if self.tasks is None else list(self.tasks)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "MetricOptions":
        """The inverse of `to_dict`; unknown keys are an error (a typo would silently be ignored)."""
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise InputError(f"unknown metric option(s): {', '.join(unknown)}; known: {', '.join(FIELDS)}")
        values = dict(values)
        if values.get("batch_key") is False:
            values["batch_key"] = NO_BATCH
        if values.get("tasks") is not None:
            values["tasks"] = tuple(values["tasks"])
        return cls(**values)

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def key(self) -> str:
        """sha256 hex of the canonical JSON."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def resolve(self, obs: pd.DataFrame) -> "MetricOptions":
        """Fill the label and batch columns the scientist left open from `suggest_columns(obs)`.

        A chosen column (or NO_BATCH) is never replaced. An open batch becomes the top batch
        suggestion unless that is the label column, else NO_BATCH. An open label with no suggestion
        is an error that says what to do.
        """
        roles = suggest_columns(obs) if (self.label_key is None or self.batch_key is None) else None
        label_key = self.label_key
        if label_key is None:
            label_key = roles.label
            if label_key is None:
                raise InputError("no obs column looks like cell-type labels; choose the label column")
        batch_key = self.batch_key
        if batch_key is None:
            batch_key = roles.batch if roles.batch and roles.batch != label_key else NO_BATCH
        return replace(self, label_key=label_key, batch_key=batch_key)

    @classmethod
    def from_run_kwargs(cls, label_key: str, **task_options) -> "MetricOptions":
        """The resolved options that `run_kwargs` turns into `label_key` and `task_options` (no batch column:
        `NO_BATCH`)."""
        fields = {{"train_value": "train", "test_value": "test"}.get(k, k): v for k, v in task_options.items()}
        fields["batch_key"] = fields.get("batch_key") or NO_BATCH
        if fields.get("tasks") is not None:
            fields["tasks"] = tuple(fields["tasks"])
        return cls(label_key=label_key, **fields)

    def run_kwargs(self) -> dict:
        """Keyword arguments of `run_tasks` / `run_with_baseline` for these (resolved) options."""
        if not self.is_resolved:
            raise InputError("metric options are not resolved: call resolve(obs) first")
        return dict(
            label_key=self.label_key, batch_key=self.batch_column, split_key=self.split_key,
            train_value=self.train, test_value=self.test, tasks=self.tasks, seed=self.seed,
            max_cells=self.max_cells,
        )

