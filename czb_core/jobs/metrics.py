"""The worker's metrics step: score a finished run's embedding beside the dataset's PCA baseline.

Runs after the UMAP, in the worker, never in a page. Label and batch columns come from the job's
metric options, else from the column-role suggestions. A problem with the metrics (no label column,
one class) is written to `metrics.json` and noted on the job: the embedding itself is still good, so
the job stays done.
"""

from __future__ import annotations

import json
from pathlib import Path

from czb_core.baseline import baseline_embedding, is_the_baseline, store_baseline
from czb_core.errors import CzbError
from czb_core.run import RunResult
from czb_core.tasks import run_with_baseline, suggest_columns, to_czbenchmarks_json
from czb_core.types import Organism

METRICS_JSON = "metrics.json"


class MetricsStep:
    """A `post_run_steps` entry of the JobManager."""

    def __init__(self, workspace, store):
        self.workspace = workspace
        self.store = store

    def __call__(self, job, result: RunResult, artifact_dir: Path, progress) -> None:
        options = dict(job.spec.metrics)
        if options.get("skip"):
            (artifact_dir / METRICS_JSON).write_text(json.dumps({"options": options, "skipped": "by request"}))
            return
        roles = suggest_columns(result.obs)
        options.setdefault("label_key", roles.label)
        if "batch_key" not in options and roles.batch and roles.batch != options["label_key"]:
            options["batch_key"] = roles.batch
        try:
            if not options["label_key"]:
                raise ValueError("no obs column looks like cell-type labels; choose one on the Run page")
            document = self._score(job, result, options, progress)
        except (CzbError, ValueError, KeyError) as exc:
            document = {"options": options, "error": str(exc)}
            self.store.add_note(job.id, f"metrics not computed: {exc}")
        (artifact_dir / METRICS_JSON).write_text(json.dumps(document, indent=2, default=str))
        result.record["metrics"] = {"file": METRICS_JSON, **options, "error": document.get("error")}

    def _score(self, job, result: RunResult, options: dict, progress) -> dict:
        organism = Organism.parse(job.spec.organism) if job.spec.organism else None
        if is_the_baseline(result.record):  # a default PCA run is the baseline: keep it, don't compute it again
            store_baseline(job.spec.dataset_sha256, result.emb_nd)
            baseline_nd = result.emb_nd
        else:
            path = self.workspace.dataset_path(job.spec.dataset_sha256)
            baseline_nd = baseline_embedding(path, job.spec.dataset_sha256, organism, progress)
        dataset = {"name": self.workspace.get(job.spec.dataset_sha256).name,
                   "organism": result.record.get("organism") or ""}
        model = {"type": result.record["model_type"], "variant": result.variant,
                 "name_display": result.record["display_name"]}
        model_results, baseline_results, table = run_with_baseline(
            result.emb_nd, baseline_nd, result.obs, options["label_key"], options.get("batch_key"),
            options.get("split_key"), options.get("train"), options.get("test"),
            seed=int(result.record.get("seed") or 0), progress=progress, model=model, dataset=dataset,
        )
        return {
            "options": options,
            "model": to_czbenchmarks_json(model_results, options),
            "baseline": to_czbenchmarks_json(baseline_results, options),
            "table": table.to_dict("records"),
            "extra": {r.task_name: r.extra for r in model_results},
            "n_used": max(r.n_used for r in model_results),
            "n_total": model_results[0].n_total,
        }
