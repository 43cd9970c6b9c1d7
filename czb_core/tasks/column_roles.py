"""Guess which obs column holds cell-type labels and which holds batches, and say why.

Scientists' files name these columns many ways (`cell_type`, `celltype`, `leiden`, `donor_id`,
`sample`...). A column is a candidate when its name looks right and its values can work: between 2
and `MAX_CATEGORIES` distinct values, not one value per cell. Each suggestion carries its reasons so
the app can show them; warnings flag what would silently weaken a metric (classes label prediction
will drop, name-matching columns that hold an id per cell).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

MAX_CATEGORIES = 500

LABEL_NAMES = (
    "cell_type", "celltype", "cell_type_ontology_term_id", "cell_ontology_class", "cell_label",
    "labels", "label", "annotation", "cluster", "clusters", "louvain", "leiden", "cell_subtype",
)
BATCH_NAMES = (
    "batch", "donor_id", "donor", "sample", "sample_id", "dataset_id", "dataset", "assay",
    "suspension_type", "library", "library_id", "patient", "individual", "plate", "lane", "run",
)


@dataclass(frozen=True)
class ColumnSuggestion:
    """One candidate column; `score` ranks candidates (exact name 3, partial name 2, cardinality 1),
    `preference` breaks ties (lower = a more usual name)."""

    column: str
    role: str
    score: int
    preference: int
    n_values: int
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ColumnRoles:
    """Candidates best first; `label`/`batch` give the top pick's column name or None."""

    labels: list[ColumnSuggestion]
    batches: list[ColumnSuggestion]
    warnings: list[str]

    @property
    def label(self) -> Optional[str]:
        return self.labels[0].column if self.labels else None

    @property
    def batch(self) -> Optional[str]:
        return self.batches[0].column if self.batches else None


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")


def _name_match(column: str, names: tuple[str, ...]) -> tuple[int, int]:
    """(score, preference): exact name 3, all words of a name among the column's words 2, else 0;
    preference = the name's position in `names`, so `cell_type` outranks `cell_type_ontology_term_id`."""
    key = _norm(column)
    if key in names:
        return 3, names.index(key)
    tokens = set(key.split("_"))
    partial = [i for i, name in enumerate(names) if set(name.split("_")) <= tokens]
    return (2, partial[0]) if partial else (0, len(names))


def _is_categorical_like(values: pd.Series, named: bool) -> bool:
    """Numbers count as categories only under a fitting name (`leiden` = 0, 1, 2...) and only when
    whole; unnamed numeric columns are QC figures (counts, percentages), never labels or batches."""
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return True
    present = values.dropna()
    return named and bool((present == present.round()).all())


def suggest_columns(obs: pd.DataFrame, min_class_size: int = 10) -> ColumnRoles:
    """Rank obs columns as label and batch candidates; a column is offered for one role only."""
    n_cells = len(obs)
    labels, batches, warnings = [], [], []
    for column in obs.columns:
        values = obs[column]
        n_values = int(values.nunique(dropna=True))
        label_score, label_pref = _name_match(column, LABEL_NAMES)
        batch_score, batch_pref = _name_match(column, BATCH_NAMES)
        named = max(label_score, batch_score) > 0
        if n_cells > 1 and n_values == n_cells:
            if named:
                warnings.append(f"column {column!r} has one value per cell: it cannot be used as labels or batches")
            continue
        if n_values < 2:
            if named:
                warnings.append(f"column {column!r} holds a single value: it cannot be used as labels or batches")
            continue
        if n_values > MAX_CATEGORIES or not _is_categorical_like(values, named):
            continue
        if label_score >= batch_score:
            why = "name looks like a cell-type label" if label_score else "no label-like name; cardinality fits"
            reasons = [why, f"{n_values} distinct values", *_small_class_notes(values, min_class_size)]
            labels.append(ColumnSuggestion(str(column), "label", label_score or 1, label_pref, n_values, reasons))
        else:
            reasons = ["name looks like a batch / donor / sample", f"{n_values} distinct values"]
            batches.append(ColumnSuggestion(str(column), "batch", batch_score, batch_pref, n_values, reasons))
    labels.sort(key=lambda s: (-s.score, s.preference))
    batches.sort(key=lambda s: (-s.score, s.preference))
    if labels:
        top = labels[0].column
        warnings.extend(f"label column {top!r}: {note}" for note in _small_class_notes(obs[top], min_class_size))
    return ColumnRoles(labels=labels, batches=batches, warnings=warnings)


def _small_class_notes(values: pd.Series, min_class_size: int) -> list[str]:
    counts = values.value_counts(dropna=True)
    small = counts[(counts > 0) & (counts < min_class_size)]  # unused categories count 0
    if small.empty:
        return []
    shown = ", ".join(f"{name} ({count})" for name, count in small.head(5).items())
    more = f" and {len(small) - 5} more" if len(small) > 5 else ""
    return [f"{len(small)} classes have fewer than {min_class_size} cells and are left out of label prediction: "
            f"{shown}{more}"]
