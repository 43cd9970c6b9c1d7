"""Scoring runs: a finished embedding scored with a set of metric options, in the CPU pool (`cpu_pool.py`).

Scoring is apart from embedding: a job's cache key names only the embedding, and choosing another label
column is a new scoring run that reuses the embedding and the dataset's cached PCA baseline (whose metrics
are cached too, by dataset and options). A scoring run waits in the queue until its job's embedding is
done; the same options on the same embedding return the existing run. Each document is written to
`<job artifacts>/metrics/<options key>.json`. A problem with the metrics (no label column, one class)
fails the scoring run only: the embedding is still good.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

from czb_core.errors import CzbError
from czb_core.io.atomic import write_json_atomically
from czb_core.progress import Throttle
from czb_core.service.baseline import baseline_embedding, is_the_baseline
from czb_core.service.jobs.artifacts import METRICS_DIR, read_embedding, read_record
from czb_core.service.jobs.store import DONE, FAILED, QUEUED, RUNNING, Job, JobStore, Score
from czb_core.service.workspace import Workspace
from czb_core.tasks.baseline import store_baseline
from czb_core.tasks.baseline_metrics import BaselineSource
from czb_core.tasks.options import MetricOptions
from czb_core.tasks.scoring import score_embedding
from czb_core.types import Organism

log = logging.getLogger(__name__)
PROGRESS_INTERVAL_S = 0.25


class Scorer:
    """Queues scoring runs in the job store; the CPU pool runs them (`wake` tells it one is there)."""

    def __init__(self, store: JobStore, wake: Callable[[], None] = lambda: None):
        self.store, self.wake = store, wake

    def score(self, job: Job, options: MetricOptions, owner: str) -> Score:
        """The scoring run of `job` with `options`: an existing one (done, queued or running), else a new one."""
        existing = self.store.find_score(job.id, options.key(), (DONE, QUEUED, RUNNING))
        if existing is not None and (existing.status != DONE or existing.document_path.is_file()):
            return existing
        score = self.store.create_score(job.id, options, owner)
        self.wake()
        return score


def run_score(workspace: Workspace, store: JobStore, score: Score) -> None:
    """Compute and write one claimed scoring run; whatever goes wrong fails that run only."""
    job = store.get(score.job_id)
    throttle = Throttle(PROGRESS_INTERVAL_S)

    def progress(step: str, done: float, total: Optional[float]) -> None:
        if throttle.allow(step, done, total):
            store.update_score_progress(score.id, step, done, total)

    try:
        document = score_document(workspace, job, score.options, progress)
        path = write_json_atomically(Path(job.artifact_dir) / METRICS_DIR / f"{score.options_key}.json",
                                     document, indent=2, default=str)
    except (CzbError, ValueError, KeyError) as exc:
        store.finish_score(score.id, FAILED, error=str(exc))
        store.add_note(job.id, f"metrics not computed: {exc}")
    except Exception as exc:  # a bug in a metric must not end the CPU worker
        log.exception("scoring %s of job %s failed", score.id, job.id)
        store.finish_score(score.id, FAILED, error=f"{type(exc).__name__}: {exc}")
    else:
        store.finish_score(score.id, DONE, document_path=path)


def score_document(workspace: Workspace, job: Job, options: MetricOptions, progress) -> dict:
    """Score the job's embedding beside the dataset's PCA baseline (a default PCA run is that baseline)."""
    emb_nd, obs, _ = read_embedding(job.artifact_dir)
    record = read_record(job.artifact_dir)
    sha = job.spec.dataset_sha256
    baseline: BaselineSource
    if is_the_baseline(record):  # keep it as the dataset's baseline instead of computing it again
        store_baseline(sha, emb_nd)
        baseline = emb_nd
    else:
        organism = Organism.parse(job.spec.organism) if job.spec.organism else None
        path = workspace.dataset_path(job.dataset_id, job.owner)  # the job's own record, its bytes proven
        baseline = lambda: baseline_embedding(path, sha, organism, progress)  # noqa: E731  (only on a cache miss)
    dataset = {"name": workspace.get(job.dataset_id, job.owner).name, "organism": record.get("organism") or ""}
    model = {"type": record["model_type"], "variant": record["variant"], "name_display": record["display_name"]}
    return score_embedding(emb_nd, obs, options, baseline, dataset_sha256=sha, model=model, dataset=dataset,
                           progress=progress)
