"""Check a task run's inputs once, up front, and settle which cells the metrics use.

Every problem is an `InputError` (a ValueError) written for the scientist: a missing column names the
columns there are; a label column with a single class, an embedding whose rows do not match the
cells, a split value that is not in its column all stop the run before any work is done.

Cells without a label (NaN / None) are dropped, not fatal: unlabelled cells are common in real
annotations, so the run goes on without them and every result carries a warning saying how many
were dropped; only a label column that is entirely missing is an error. The same holds for cells
without a batch when batch integration runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from czb_core.config import get_settings
from czb_core.errors import InputError
from czb_core.tasks.label_prediction import MIN_CLASS_SIZE, kept_classes
from czb_core.tasks.subsample import stratified_subsample

TASK_NAMES = ("clustering", "embedding", "label_prediction", "batch_integration", "cross_split")
MIN_TRAIN_CELLS = 5  # kNN's k: the smallest training set every transfer classifier can fit


@dataclass(frozen=True)
class TaskInputs:
    """The checked obs side of a run: which tasks, which cells (`rows_n`, positions into the
    embedding) and their labels, batches and split values, aligned with `rows_n`."""

    tasks: tuple[str, ...]
    rows_n: np.ndarray
    labels_n: pd.Series
    batches_n: Optional[pd.Series]
    split_n: Optional[pd.Series]
    train_value: object
    test_value: object
    n_total: int
    warnings: tuple[str, ...]
    seed: int  # of the subsample, and of every random step of the tasks

    @property
    def n_used(self) -> int:
        return len(self.rows_n)


def select_tasks(tasks: Optional[Sequence[str]], batch_key: Optional[str], split_key: Optional[str]) -> tuple[str, ...]:
    """Default: every task whose inputs were given. Asking for one without its column is an error."""
    if tasks is None:
        wanted = {"clustering", "embedding", "label_prediction"}
        wanted |= {"batch_integration"} if batch_key else set()
        wanted |= {"cross_split"} if split_key else set()
        return tuple(t for t in TASK_NAMES if t in wanted)
    unknown = [t for t in tasks if t not in TASK_NAMES]
    if unknown:
        raise InputError(f"unknown task(s) {', '.join(map(repr, unknown))}; choose from: {', '.join(TASK_NAMES)}")
    if "batch_integration" in tasks and not batch_key:
        raise InputError("batch_integration needs a batch column: pass batch_key")
    if "cross_split" in tasks and not split_key:
        raise InputError("cross_split needs a split column and two of its values: pass split_key, train_value, "
                         "test_value")
    return tuple(t for t in TASK_NAMES if t in tasks)


def check_embedding(emb_nd: np.ndarray, n_cells: int, what: str = "embedding") -> np.ndarray:
    """A finite 2-D float array with one row per cell in obs."""
    emb_nd = np.asarray(emb_nd)
    if emb_nd.ndim != 2 or not np.issubdtype(emb_nd.dtype, np.number):
        raise InputError(f"{what} must be a 2-D numeric array (cells x dims), got shape {emb_nd.shape} of "
                         f"{emb_nd.dtype}")
    if emb_nd.shape[0] != n_cells:
        raise InputError(f"{what} has {emb_nd.shape[0]:,} rows but obs has {n_cells:,} cells; they must match one "
                         "to one")
    bad_rows = int((~np.isfinite(emb_nd)).any(axis=1).sum())
    if bad_rows:
        raise InputError(f"{what} has {bad_rows:,} rows with NaN or infinite values")
    return emb_nd


def _column(obs: pd.DataFrame, key: str, role: str) -> pd.Series:
    if key not in obs.columns:
        available = ", ".join(map(repr, obs.columns)) or "(none)"
        raise InputError(f"{role} column {key!r} is not in obs; available columns: {available}")
    return obs[key].reset_index(drop=True)


def prepare_inputs(
    obs: pd.DataFrame,
    label_key: str,
    batch_key: Optional[str] = None,
    split_key: Optional[str] = None,
    train_value=None,
    test_value=None,
    tasks: Optional[Sequence[str]] = None,
    seed: int = 42,
    max_cells: Optional[int] = None,
) -> TaskInputs:
    """Validate columns and values, drop unlabelled cells, then take the stratified subsample."""
    selected = select_tasks(tasks, batch_key, split_key)
    n_total = len(obs)
    labels_n = _column(obs, label_key, "label")
    batches_n = _column(obs, batch_key, "batch") if "batch_integration" in selected else None
    split_n = _column(obs, split_key, "split") if "cross_split" in selected else None

    warnings = []
    keep_n = labels_n.notna().to_numpy()
    if not keep_n.any():
        raise InputError(f"label column {label_key!r} has no values: every cell's label is missing")
    if not keep_n.all():
        warnings.append(f"{(~keep_n).sum():,} cells without a {label_key!r} label were left out")
    if batches_n is not None:
        no_batch_n = keep_n & batches_n.isna().to_numpy()
        if no_batch_n.any():
            warnings.append(f"{no_batch_n.sum():,} cells without a {batch_key!r} batch were left out")
        keep_n &= ~no_batch_n
    labelled_rows_n = np.flatnonzero(keep_n)

    if not keep_n.any():
        raise InputError(f"no cell has both a {label_key!r} label and a {batch_key!r} batch")
    if labels_n[keep_n].nunique() < 2:
        only = labels_n[keep_n].iloc[0]
        raise InputError(f"label column {label_key!r} has a single class ({only!r}): metrics need at least 2 labels")
    if batches_n is not None and batches_n[keep_n].nunique() < 2:
        raise InputError(f"batch column {batch_key!r} has a single value: batch integration needs at least 2 batches")

    cap = get_settings().metrics_max_cells if max_cells is None else max_cells
    picked_n = stratified_subsample(labels_n.iloc[labelled_rows_n], cap, seed, MIN_CLASS_SIZE)
    rows_n = labelled_rows_n[picked_n]
    if len(rows_n) < len(labelled_rows_n):
        warnings.append(f"metrics use a seeded stratified subsample of {len(rows_n):,} of "
                        f"{len(labelled_rows_n):,} cells")

    inputs = TaskInputs(
        tasks=selected,
        rows_n=rows_n,
        labels_n=labels_n.iloc[rows_n].reset_index(drop=True),
        batches_n=None if batches_n is None else batches_n.iloc[rows_n].reset_index(drop=True),
        split_n=None if split_n is None else split_n.iloc[rows_n].reset_index(drop=True),
        train_value=train_value,
        test_value=test_value,
        n_total=n_total,
        warnings=tuple(warnings),
        seed=seed,
    )
    _check_task_needs(inputs, label_key, split_key)
    return inputs


def _check_task_needs(inputs: TaskInputs, label_key: str, split_key: Optional[str]) -> None:
    """Conditions single tasks need, checked on the cells they will actually get."""
    if "label_prediction" in inputs.tasks and len(kept_classes(inputs.labels_n)) < 2:
        raise InputError(
            f"label prediction needs at least 2 classes in {label_key!r} with {MIN_CLASS_SIZE}+ cells each"
        )
    if "cross_split" not in inputs.tasks:
        return
    values = inputs.split_n.dropna().unique()
    for role, value in (("train", inputs.train_value), ("test", inputs.test_value)):
        if value is None or value not in values:
            shown = ", ".join(map(repr, sorted(map(str, values))[:20]))
            raise InputError(f"{role} value {value!r} is not in split column {split_key!r}; values there: {shown}")
    if inputs.train_value == inputs.test_value:
        raise InputError("train and test values of the split must differ")
    train_labels_n = inputs.labels_n[inputs.split_n == inputs.train_value]
    if len(train_labels_n) < MIN_TRAIN_CELLS or train_labels_n.nunique() < 2:
        raise InputError(
            f"the train cells ({split_key!r} = {inputs.train_value!r}) need at least {MIN_TRAIN_CELLS} cells "
            f"and 2 labels; they have {len(train_labels_n)} cells and {train_labels_n.nunique()} labels"
        )
