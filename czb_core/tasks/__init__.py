"""Benchmark tasks and metrics computed as cz-benchmarks computes them, on an embedding and obs.

`run_tasks` / `run_with_baseline` are the entry points, `MetricOptions` the stored choice of
columns and tasks, `scoring.cached_baseline_results` the cached baseline scores; each metric
module says which cz-benchmarks or scib-metrics definition it reproduces. Nothing here imports streamlit
or runs a model.
"""

from czb_core.tasks.column_roles import ColumnRoles, ColumnSuggestion, suggest_columns
from czb_core.tasks.inputs import TASK_NAMES, TaskInputs, prepare_inputs
from czb_core.tasks.options import NO_BATCH, MetricOptions
from czb_core.tasks.results import MetricResult, TaskResult, results_table, to_czbenchmarks_json
from czb_core.tasks.scoring import BASELINE_DESCRIPTION, TASK_DISPLAY, run_prepared, run_tasks, run_with_baseline
from czb_core.tasks.subsample import stratified_subsample

__all__ = [
    "BASELINE_DESCRIPTION",
    "ColumnRoles",
    "ColumnSuggestion",
    "MetricOptions",
    "MetricResult",
    "NO_BATCH",
    "TASK_DISPLAY",
    "TASK_NAMES",
    "TaskInputs",
    "TaskResult",
    "prepare_inputs",
    "results_table",
    "run_prepared",
    "run_tasks",
    "run_with_baseline",
    "stratified_subsample",
    "suggest_columns",
    "to_czbenchmarks_json",
]
