"""What a page says about a job's progress: units, elapsed time, ETA, queue place; never 100% for a failure."""

from datetime import datetime, timedelta, timezone

import pytest

from czb_core.progress import (
    format_amount,
    format_duration,
    progress_fraction,
    progress_line,
    queue_line,
    seconds_since,
    step_eta_s,
    step_unit,
)
from czb_core.service.jobs.execution import StoreProgress
from czb_core.service.jobs.spec import JobSpec
from czb_core.service.jobs.store import JobStore

pytestmark = pytest.mark.unit


def test_steps_count_in_their_own_units():
    assert step_unit("embed") == "cells" and step_unit("embed (perturbed)") == "cells"
    assert step_unit("train epoch") == "epochs" and step_unit("download weights") == "bytes"
    assert step_unit("umap") == "" and step_unit("embedding") == ""  # a prefix must be a whole word
    assert format_amount(1200, "cells") == "1,200 cells"
    assert format_amount(3 * 2**30 / 2, "bytes") == "1.5 GB" and format_amount(512, "bytes") == "512 B"


@pytest.mark.parametrize("seconds, text", [(0, "0 s"), (44.6, "45 s"), (185, "3 min 05 s"), (7800, "2 h 10 min")])
def test_durations_read_as_a_person_would_say_them(seconds, text):
    assert format_duration(seconds) == text


def test_eta_comes_from_the_steps_rate_and_only_once_it_has_one():
    assert step_eta_s(done=300, total=1200, elapsed_s=30) == pytest.approx(90)  # 10 cells/s, 900 left
    assert step_eta_s(done=0, total=1200, elapsed_s=30) is None  # stuck at the start: no made-up figure
    assert step_eta_s(done=5, total=None, elapsed_s=30) is None
    assert step_eta_s(done=5, total=10, elapsed_s=None) is None


def test_running_line_has_units_elapsed_and_eta():
    line = progress_line("running", "embed", 300, 1200, step_elapsed_s=30)
    assert line == "embed: 300 cells / 1,200 cells (25%) · 30 s in, about 1 min 30 s left"
    assert progress_line("running", "train epoch", 0, 400, step_elapsed_s=12).endswith(
        "12 s in, estimating time left")
    assert progress_line("running", "pca", 0, 1, step_elapsed_s=3) == "pca · 3 s in"  # one-shot step: no count
    assert progress_line("queued", "", 0, None) == "waiting for a worker"


def test_a_failed_job_is_never_shown_complete():
    assert progress_fraction("failed", 1, 1) is None and progress_fraction("cancelled", 5, 10) is None
    assert progress_fraction("running", 5, 10) == 0.5 and progress_fraction("running", 0, None) is None
    line = progress_line("failed", "umap", 1, 1)
    assert line == "failed during umap" and "100%" not in line
    assert progress_line("failed", "embed", 1200, 1200) == "failed during embed: 1,200 cells / 1,200 cells"


def test_queue_line_counts_other_users_apart():
    assert queue_line(2, 0, "cuda") == "Waiting in the cuda queue: position 2 among your jobs."
    assert queue_line(1, 3, "cpu").endswith("position 1 among your jobs; 3 jobs ahead (other users).")
    assert queue_line(1, 1, "cpu").endswith("1 job ahead (other users).")


def test_seconds_since_a_store_time_stamp():
    now = datetime(2026, 1, 1, 12, 0, 30, tzinfo=timezone.utc)
    assert seconds_since((now - timedelta(seconds=30)).isoformat(timespec="seconds"), now) == 30
    assert seconds_since(None, now) is None


def _store_with_job(tmp_path, owner="ana"):
    store = JobStore(tmp_path / "db.sqlite")
    return store, store.submit(JobSpec(dataset_sha256="d" * 64, model="pca", variant="default"), owner, "cpu", "rec")[0]


def test_store_progress_dates_each_step_and_restarts(tmp_path, monkeypatch):
    import czb_core.service.jobs.execution as execution

    store, job = _store_with_job(tmp_path)
    store.claim_next("cpu")  # progress is written for a running job only
    stamps = iter(["2026-01-01T00:00:00+00:00", "2026-01-01T00:01:00+00:00", "2026-01-01T00:02:00+00:00"])
    monkeypatch.setattr(execution, "utc_now", lambda: next(stamps))
    progress = StoreProgress(store, job.id, interval=0)
    progress("load", 0, 1)
    progress("embed", 0, 100)
    progress("embed", 50, 100)
    assert store.get(job.id).step_started_at == "2026-01-01T00:01:00+00:00"  # same step: same start
    progress("embed", 0, 100)  # an out-of-memory retry starts the step over
    progress("embed", 10, 100)
    got = store.get(job.id)
    assert (got.step, got.done, got.total, got.step_started_at) == ("embed", 10, 100, "2026-01-01T00:02:00+00:00")


def test_queue_position_among_an_owners_jobs(tmp_path):
    store = JobStore(tmp_path / "db.sqlite")

    def queued(owner, n):
        return store.submit(JobSpec(dataset_sha256=str(n) * 64, model="pca", variant="default"), owner, "cpu", "rec")[0]

    jobs = [queued(owner, n) for n, owner in enumerate(["bo", "ana", "bo", "ana"])]
    assert [store.queue_position(j.id) for j in jobs] == [1, 2, 3, 4]
    assert store.queue_position(jobs[3].id, "ana") == 2  # so 2 of the 4 ahead-or-equal are other users'
    assert store.queue_position(jobs[0].id, "bo") == 1
