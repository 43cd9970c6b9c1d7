"""Several runs' metrics side by side: one row per (task, metric), one column per run and the baseline."""

from __future__ import annotations

from typing import Mapping

import pandas as pd

BASELINE_COLUMN = "PCA baseline"


def compare_runs(documents: Mapping[str, dict]) -> pd.DataFrame:
    """`documents`: run label -> metrics document (with its `table` of model and baseline values).

    The baseline's column comes from the first document that has it (every run of a dataset shares
    one baseline); documents without a table (metrics failed or skipped) add no column.
    """
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for label, document in documents.items():
        for row in document.get("table", []):
            values = rows.setdefault((row["task"], row["metric"]), {})
            if row.get("baseline") is not None:
                values.setdefault(BASELINE_COLUMN, row["baseline"])
            values[label] = row["model"]
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["task", "metric"])
    ordered = [BASELINE_COLUMN] if BASELINE_COLUMN in table else []
    return table[ordered + [c for c in table.columns if c != BASELINE_COLUMN]]
