"""Several runs' metrics side by side: one row per (task, metric), one column per run and the baseline."""

from __future__ import annotations

from typing import Collection, Mapping

import pandas as pd

BASELINE_COLUMN = "PCA baseline"


def compare_runs(documents: Mapping[str, dict], baseline_runs: Collection[str] = ()) -> pd.DataFrame:
    """`documents`: run label -> metrics document (with its `table` of model and baseline values).

    The baseline's column comes from the first document that has it (every run of a dataset shares
    one baseline); documents without a table (metrics failed or skipped) add no column. A run named in
    `baseline_runs` (the default PCA run) is the baseline itself: its values fill the baseline column
    and it gets no column of its own, so the same embedding is never listed twice.
    """
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for label, document in documents.items():
        for row in document.get("table", []):
            values = rows.setdefault((row["task"], row["metric"]), {})
            if label in baseline_runs:
                values[BASELINE_COLUMN] = row["model"]
                continue
            if row.get("baseline") is not None:
                values.setdefault(BASELINE_COLUMN, row["baseline"])
            values[label] = row["model"]
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["task", "metric"])
    ordered = [BASELINE_COLUMN] if BASELINE_COLUMN in table else []
    return table[ordered + [c for c in table.columns if c != BASELINE_COLUMN]]
