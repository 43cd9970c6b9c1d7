"""Jobs on disk: the `jobs` table of the workspace's SQLite file.

The store, not a worker's memory, is the truth about a job, so a refreshed page re-attaches to its job by
id, several pages can watch one job, and a server restart loses no finished result. Every method opens
its own short transaction (see `czb_core.service.database.open_db`), so any thread may call any method.
"""

from __future__ import annotations

import builtins
import json
import logging
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, TypeVar

from czb_core.errors import ConfigError
from czb_core.models.record import utc_now
from czb_core.service.database import add_missing_column, init_db, open_db, storage_problem
from czb_core.service.jobs.job_log import job_log_path
from czb_core.service.jobs.spec import JobSpec
from czb_core.tasks.options import MetricOptions

STORE_RETRY_S = 1.0
STORE_GIVE_UP_S = 600.0
T = TypeVar("T")

log = logging.getLogger(__name__)
QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "done", "failed", "cancelled", "interrupted",
)
FINISHED = (DONE, FAILED, CANCELLED, INTERRUPTED)
RETRYABLE = (FAILED, CANCELLED, INTERRUPTED)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    spec_key TEXT NOT NULL,
    dataset_sha256 TEXT NOT NULL,
    dataset_id TEXT,
    model TEXT NOT NULL,
    variant TEXT NOT NULL,
    status TEXT NOT NULL,
    device TEXT NOT NULL,
    step TEXT NOT NULL DEFAULT '',
    done REAL NOT NULL DEFAULT 0,
    total REAL,
    message TEXT NOT NULL DEFAULT '',
    error TEXT,
    notes_json TEXT NOT NULL DEFAULT '[]',
    artifact_dir TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker_pid INTEGER,
    step_started_at TEXT,
    cpu_stage TEXT,
    heartbeat_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_status_device ON jobs (status, device);
CREATE INDEX IF NOT EXISTS jobs_spec_key ON jobs (spec_key);
CREATE TABLE IF NOT EXISTS scores (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    options_json TEXT NOT NULL,
    options_key TEXT NOT NULL,
    status TEXT NOT NULL,
    step TEXT NOT NULL DEFAULT '',
    done REAL NOT NULL DEFAULT 0,
    total REAL,
    error TEXT,
    document_path TEXT,
    created_at TEXT NOT NULL,
    finished_at TEXT,
    worker_pid INTEGER
);
CREATE INDEX IF NOT EXISTS scores_job ON scores (job_id, options_key);
"""


@dataclass
class Job:
    id: str
    owner: str
    spec: JobSpec
    spec_key: str
    dataset_sha256: str  # the content the spec names (the cache key's part)
    dataset_id: Optional[str]  # the owner's dataset record it runs on
    model: str
    variant: str
    status: str
    device: str  # the worker queue: "cpu" or "cuda"
    step: str = ""
    done: float = 0.0
    total: Optional[float] = None
    message: str = ""
    error: Optional[str] = None
    notes: list[str] = field(default_factory=list)  # what the worker changed, e.g. OOM batch-size retries
    artifact_dir: Optional[Path] = None  # set once the job is done
    created_at: str = ""
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    cancel_requested: bool = False
    worker_pid: Optional[int] = None  # the process running it
    step_started_at: Optional[str] = None  # when the current step began: its rate so far gives the ETA
    cpu_stage: Optional[str] = None  # embedded, its UMAP "queued" for or "running" in the CPU pool; None before
    heartbeat_at: Optional[float] = None  # wall time of its worker's last sign of life (`JobStore.beat`)

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    @property
    def progress_fraction(self) -> float:
        """0..1 within the current step (1 once done); steps report their own totals."""
        if self.status == DONE:
            return 1.0
        if not self.total:
            return 0.0
        return min(1.0, max(0.0, self.done / self.total))

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        data = dict(row)
        data["spec"] = JobSpec.from_json(data.pop("spec_json"))
        data["notes"] = json.loads(data.pop("notes_json"))
        data["artifact_dir"] = Path(data["artifact_dir"]) if data["artifact_dir"] else None
        data["cancel_requested"] = bool(data["cancel_requested"])
        return cls(**data)


@dataclass
class Score:
    """A scoring run: one job's embedding scored with one set of metric options (queued until the job is done)."""

    id: str
    job_id: str
    owner: str
    options: MetricOptions
    options_key: str
    status: str
    step: str = ""
    done: float = 0.0
    total: Optional[float] = None
    error: Optional[str] = None
    document_path: Optional[Path] = None
    created_at: str = ""
    finished_at: Optional[str] = None
    worker_pid: Optional[int] = None  # the CPU pool process scoring it

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Score":
        data = dict(row)
        data["options"] = MetricOptions.from_dict(json.loads(data.pop("options_json")))
        data["document_path"] = Path(data["document_path"]) if data["document_path"] else None
        return cls(**data)

    def document(self) -> dict:
        """The metrics document of a done score."""
        return json.loads(self.document_path.read_text())


class JobStore:
    def __init__(self, db_path: Path):
        self.db_path = Path(db_path)
        init_db(self.db_path, SCHEMA)
        for column, sql_type in (("worker_pid", "INTEGER"), ("step_started_at", "TEXT"), ("cpu_stage", "TEXT"),
                                 ("dataset_id", "TEXT"), ("heartbeat_at", "REAL")):  # databases made before
            add_missing_column(self.db_path, "jobs", column, sql_type)
        add_missing_column(self.db_path, "scores", "worker_pid", "INTEGER")
        with open_db(self.db_path, immediate=True) as conn:
            conn.execute("CREATE INDEX IF NOT EXISTS jobs_dataset_id ON jobs (dataset_id)")
            link_jobs_to_records(conn)
            one_active_job_per_spec(conn)

    def submit(self, spec: JobSpec, owner: str, device: str, dataset_id: str,
               reusable: Callable[[Job], bool] = lambda job: True,
               check: Callable[[], None] = lambda: None) -> tuple[Job, bool]:
        """The job for `spec` of `owner`: their done job with this key when `reusable(job)` (a cache hit),
        else their queued or running one (a second click joins it), else a new queued job, once `check()`
        (the per-user limits) has passed. Returns (job, whether it is new).

        One write transaction from the first look to the insert: two submits at once cannot both find
        nothing and both insert, nor both pass a queue cap that has room for one."""
        key = spec.key()
        with open_db(self.db_path, immediate=True) as conn:
            for statuses in ((DONE,), (QUEUED, RUNNING)):
                row = conn.execute(
                    "SELECT * FROM jobs WHERE spec_key = ? AND owner = ? "
                    f"AND status IN ({', '.join('?' * len(statuses))}) "
                    "ORDER BY rowid DESC LIMIT 1", (key, owner, *statuses)).fetchone()
                if row is not None and (statuses != (DONE,) or reusable(Job.from_row(row))):
                    return Job.from_row(row), False
            check()
            job_id = uuid.uuid4().hex[:12]
            conn.execute(
                "INSERT INTO jobs (id, owner, spec_json, spec_key, dataset_sha256, dataset_id, model, variant, "
                "status, device, message, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, owner, spec.to_json(), key, spec.dataset_sha256, dataset_id, spec.model, spec.variant,
                 QUEUED, device, "queued", utc_now()),
            )
        return self.get(job_id), True

    def get(self, job_id: str) -> Optional[Job]:
        with open_db(self.db_path) as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    def list(
        self, dataset_id: Optional[str] = None, owner: Optional[str] = None,
        statuses: Optional[Iterable[str]] = None,
    ) -> list[Job]:
        """Newest first, filtered by whichever arguments are given."""
        clauses, args = [], []
        if dataset_id is not None:
            clauses.append("dataset_id = ?")
            args.append(dataset_id)
        if owner is not None:
            clauses.append("owner = ?")
            args.append(owner)
        if statuses is not None:
            statuses = list(statuses)
            clauses.append(f"status IN ({', '.join('?' * len(statuses))})")
            args.extend(statuses)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with open_db(self.db_path) as conn:
            rows = conn.execute(f"SELECT * FROM jobs{where} ORDER BY rowid DESC", args).fetchall()
        return [Job.from_row(r) for r in rows]

    def queue_position(self, job_id: str, owner: Optional[str] = None) -> Optional[int]:
        """1 for the next job its device will take; None unless the job is queued. With `owner`, the place
        among that owner's queued jobs only (what a user can see; the difference is other users' jobs ahead)."""
        query = ("SELECT COUNT(*) FROM jobs AS other, jobs AS me WHERE me.id = ? AND me.status = ? "
                 "AND other.status = ? AND other.device = me.device AND other.rowid <= me.rowid")
        args = [job_id, QUEUED, QUEUED]
        if owner is not None:
            query += " AND other.owner = ?"
            args.append(owner)
        with open_db(self.db_path) as conn:
            row = conn.execute(query, args).fetchone()
        return row[0] or None

    def claim_next(self, device: str, worker_pid: Optional[int] = None) -> Optional[Job]:
        """Mark the oldest queued job of `device` running (by `worker_pid`) and return it (first in, first out)."""
        with open_db(self.db_path, immediate=True) as conn:
            row = conn.execute(
                "SELECT id FROM jobs WHERE status = ? AND device = ? ORDER BY rowid LIMIT 1", (QUEUED, device)
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET status = ?, started_at = ?, message = 'starting', worker_pid = ?, heartbeat_at = ? "
                "WHERE id = ?", (RUNNING, utc_now(), worker_pid, time.time(), row["id"]),
            )
        return self.get(row["id"])

    def hand_to_cpu(self, job_id: str) -> None:
        """The job's embedding is on disk: its UMAP waits for the CPU pool, and its device worker (no longer
        named on it) takes the next job."""
        with open_db(self.db_path) as conn:
            conn.execute("UPDATE jobs SET cpu_stage = ?, worker_pid = NULL, message = ? WHERE id = ? AND status = ?",
                         (QUEUED, "waiting for a CPU worker (UMAP)", job_id, RUNNING))

    def claim_next_umap(self, worker_pid: Optional[int] = None) -> Optional[Job]:
        """The oldest embedded job waiting for its UMAP, now run by the CPU pool process `worker_pid`."""
        with open_db(self.db_path, immediate=True) as conn:
            row = conn.execute("SELECT id FROM jobs WHERE status = ? AND cpu_stage = ? ORDER BY rowid LIMIT 1",
                               (RUNNING, QUEUED)).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE jobs SET cpu_stage = ?, worker_pid = ?, heartbeat_at = ? WHERE id = ?",
                         (RUNNING, worker_pid, time.time(), row["id"]))
        return self.get(row["id"])

    def device_loads(self, devices: Iterable[str]) -> dict[str, int]:
        """Queued plus running jobs per device, those waiting only for the CPU pool not counted: the load a
        new job would wait behind."""
        loads = dict.fromkeys(devices, 0)
        with open_db(self.db_path) as conn:
            rows = conn.execute(
                "SELECT device, COUNT(*) FROM jobs WHERE status = ? OR (status = ? AND cpu_stage IS NULL) "
                "GROUP BY device", (QUEUED, RUNNING)).fetchall()
        for device, count in rows:
            if device in loads:
                loads[device] = count
        return loads

    def update_progress(self, job_id: str, step: str, done: float, total: Optional[float],
                        step_started_at: Optional[str] = None) -> None:
        """Where a running job is, with when its current step began, so that a page tells the step's elapsed
        time and rate from one read of the row. A job no longer running (failed, interrupted by a restart)
        keeps the row it ended with."""
        with open_db(self.db_path) as conn:
            conn.execute(
                "UPDATE jobs SET step = ?, done = ?, total = ?, message = ?, step_started_at = ? WHERE id = ? "
                "AND status = ?", (step, done, total, step, step_started_at, job_id, RUNNING),
            )

    def beat(self, job_id: str) -> None:
        """The running job's worker is alive and can write: the supervisor fails a job silent for too long."""
        with open_db(self.db_path) as conn:
            conn.execute("UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND status = ?", (time.time(), job_id, RUNNING))

    def set_status(
        self, job_id: str, status: str, *, message: Optional[str] = None, error: Optional[str] = None,
        artifact_dir: Optional[Path] = None, only_from: Optional[Iterable[str]] = None,
    ) -> bool:
        """Move a job to `status` (stamping finished_at for final ones); with `only_from`, only from those
        statuses. Returns whether the job moved, so callers can act on races (cancel vs. claim)."""
        sets = {"status": status, "error": error}
        if message is not None:
            sets["message"] = message
        if artifact_dir is not None:
            sets["artifact_dir"] = str(artifact_dir)
        if status in FINISHED:
            sets["finished_at"] = utc_now()
        query = f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ?"
        args = [*sets.values(), job_id]
        if only_from is not None:
            only_from = list(only_from)
            query += f" AND status IN ({', '.join('?' * len(only_from))})"
            args.extend(only_from)
        with open_db(self.db_path) as conn:
            return conn.execute(query, args).rowcount > 0

    def request_cancel(self, job_id: str) -> bool:
        """Flag a running job; its worker stops it at the next cancellation check."""
        with open_db(self.db_path) as conn:
            return conn.execute(
                "UPDATE jobs SET cancel_requested = 1, message = 'cancelling' WHERE id = ? AND status = ?",
                (job_id, RUNNING),
            ).rowcount > 0

    def add_note(self, job_id: str, note: str) -> None:
        with open_db(self.db_path, immediate=True) as conn:
            (notes_json,) = conn.execute("SELECT notes_json FROM jobs WHERE id = ?", (job_id,)).fetchone()
            conn.execute(
                "UPDATE jobs SET notes_json = ? WHERE id = ?", (json.dumps([*json.loads(notes_json), note]), job_id)
            )

    def mark_interrupted_on_startup(self) -> int:
        """Jobs left running by a previous server process can never finish: make them retryable. A job whose
        embedding was already on disk (waiting for or in its UMAP) only needs the UMAP again: it is queued
        for the CPU pool instead. Returns how many jobs were interrupted."""
        with open_db(self.db_path) as conn:
            conn.execute("UPDATE jobs SET cpu_stage = ?, worker_pid = NULL WHERE status = ? AND cpu_stage IS NOT NULL",
                         (QUEUED, RUNNING))
            return conn.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, message = ? WHERE status = ? AND cpu_stage IS NULL",
                (INTERRUPTED, utc_now(), "the server restarted while this job was running; retry it", RUNNING),
            ).rowcount

    # -- scoring runs ------------------------------------------------------------------------------

    def create_score(self, job_id: str, options: MetricOptions, owner: str) -> Score:
        score_id = uuid.uuid4().hex[:12]
        with open_db(self.db_path) as conn:
            conn.execute(
                "INSERT INTO scores (id, job_id, owner, options_json, options_key, status, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (score_id, job_id, owner, options.canonical_json(), options.key(), QUEUED, utc_now()),
            )
        return self.get_score(score_id)

    def get_score(self, score_id: str) -> Optional[Score]:
        with open_db(self.db_path) as conn:
            row = conn.execute("SELECT * FROM scores WHERE id = ?", (score_id,)).fetchone()
        return Score.from_row(row) if row else None

    def scores_of(self, job_id: str) -> builtins.list[Score]:  # `list` is the method above here
        """Newest first."""
        with open_db(self.db_path) as conn:
            rows = conn.execute("SELECT * FROM scores WHERE job_id = ? ORDER BY rowid DESC", (job_id,)).fetchall()
        return [Score.from_row(r) for r in rows]

    def find_score(self, job_id: str, options_key: str, statuses: Iterable[str]) -> Optional[Score]:
        statuses = list(statuses)
        with open_db(self.db_path) as conn:
            row = conn.execute(
                f"SELECT * FROM scores WHERE job_id = ? AND options_key = ? AND status IN "
                f"({', '.join('?' * len(statuses))}) ORDER BY rowid DESC LIMIT 1",
                (job_id, options_key, *statuses),
            ).fetchone()
        return Score.from_row(row) if row else None

    def claim_next_score(self, worker_pid: Optional[int] = None) -> Optional[Score]:
        """The oldest queued score whose embedding is done, marked running (by the CPU pool process
        `worker_pid`); scores of jobs that can no longer finish are cancelled on the way."""
        with open_db(self.db_path, immediate=True) as conn:
            conn.execute(
                f"UPDATE scores SET status = ?, finished_at = ?, error = 'the run did not finish' WHERE status = ? "
                f"AND job_id IN (SELECT id FROM jobs WHERE status IN ({', '.join('?' * len(RETRYABLE))}))",
                (CANCELLED, utc_now(), QUEUED, *RETRYABLE),
            )
            row = conn.execute(
                "SELECT scores.id FROM scores JOIN jobs ON jobs.id = scores.job_id WHERE scores.status = ? "
                "AND jobs.status = ? ORDER BY scores.rowid LIMIT 1", (QUEUED, DONE),
            ).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE scores SET status = ?, worker_pid = ? WHERE id = ?", (RUNNING, worker_pid, row["id"]))
        return self.get_score(row["id"])

    def update_score_progress(self, score_id: str, step: str, done: float, total: Optional[float]) -> None:
        with open_db(self.db_path) as conn:
            conn.execute("UPDATE scores SET step = ?, done = ?, total = ? WHERE id = ?", (step, done, total, score_id))

    def finish_score(self, score_id: str, status: str, *, error: Optional[str] = None,
                     document_path: Optional[Path] = None) -> None:
        with open_db(self.db_path) as conn:
            conn.execute(
                "UPDATE scores SET status = ?, error = ?, document_path = ?, finished_at = ? WHERE id = ?",
                (status, error, str(document_path) if document_path else None, utc_now(), score_id),
            )

    def fail_scores_of(self, worker_pid: int, error: str) -> int:
        """Fail the scores a CPU pool process was running when it died."""
        with open_db(self.db_path) as conn:
            return conn.execute(
                "UPDATE scores SET status = ?, error = ?, finished_at = ? WHERE status = ? AND worker_pid = ?",
                (FAILED, error, utc_now(), RUNNING, worker_pid)).rowcount

    def requeue_running_scores(self) -> int:
        """Scoring left running by a previous server process starts over (it reads only finished files)."""
        with open_db(self.db_path) as conn:
            return conn.execute("UPDATE scores SET status = ?, step = '' WHERE status = ?", (QUEUED, RUNNING)).rowcount

    # -- deleting, and what an owner holds (sharing, quotas, retention) ---------------------------------

    def delete_job(self, job_id: str, scope: Optional[str] = None) -> Job:
        """Remove a finished job: its row, its scoring runs and share links, then its artifact directory.

        A queued or running job is refused (cancel it first), as is a job being scored: their workers would
        go on writing files no record names. Another owner's job is "not found" (KeyError). Returns the
        removed job.
        """
        with open_db(self.db_path, immediate=True) as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or (scope is not None and row["owner"] != scope):
                raise KeyError(f"job {job_id} not found")
            job = Job.from_row(row)
            if not job.is_finished:
                raise ConfigError(f"job {job_id} is {job.status}; cancel it before deleting it")
            if conn.execute("SELECT 1 FROM scores WHERE job_id = ? AND status = ?", (job_id, RUNNING)).fetchone():
                raise ConfigError(f"job {job_id} is being scored; delete it once scoring has finished")
            conn.execute("DELETE FROM scores WHERE job_id = ?", (job_id,))
            if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'shares'").fetchone():
                conn.execute("DELETE FROM shares WHERE job_id = ?", (job_id,))  # the table of `sharing.py`
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        shutil.rmtree(self.artifact_dir_of(job), ignore_errors=True)
        job_log_path(self.db_path.parent, job.id).unlink(missing_ok=True)
        return job

    def artifact_dir_of(self, job: Job) -> Path:
        """Where the job's files are: the recorded directory, else `<workspace>/jobs/<id>`, where a job
        interrupted by a restart may have left part of its files before any directory was recorded."""
        return job.artifact_dir or self.db_path.parent / "jobs" / job.id

    def count_queued(self, owner: str) -> int:
        """How many of the owner's runs wait in the queues (the per-user cap of `quotas.py`)."""
        with open_db(self.db_path) as conn:
            return conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE owner = ? AND status = ?", (owner, QUEUED)
            ).fetchone()[0]


def until_store_answers(write: Callable[[], T], give_up_after: float = STORE_GIVE_UP_S) -> T:
    """`write()`, tried again every second while the store fails for want of storage (disk full, I/O
    error), so that a job's final status is written once the disk has room again instead of being lost
    (the job would stay `running` for ever); after `give_up_after` seconds the error is raised."""
    deadline = time.monotonic() + give_up_after
    while True:
        try:
            return write()
        except (sqlite3.OperationalError, OSError) as exc:
            if storage_problem(exc) is None and "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            log.warning("job store: %s; trying again", exc)
        time.sleep(STORE_RETRY_S)


def link_jobs_to_records(conn: sqlite3.Connection) -> None:
    """Name the dataset record of jobs kept before jobs named one: the owner's record of the job's content
    (an owner has one per content), where the datasets table has record ids already."""
    has_ids = "id" in {row["name"] for row in conn.execute("PRAGMA table_info(datasets)")}
    if has_ids:
        conn.execute("UPDATE jobs SET dataset_id = (SELECT d.id FROM datasets AS d WHERE d.sha256 = "
                     "jobs.dataset_sha256 AND d.owner = jobs.owner) WHERE dataset_id IS NULL")


def one_active_job_per_spec(conn: sqlite3.Connection) -> None:
    """At most one queued or running job per (owner, spec), kept by the database itself. A database with
    duplicates from before (several servers once raced) keeps them and gets the index once they finish."""
    try:
        conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_active ON jobs (owner, spec_key) "
                     f"WHERE status IN ('{QUEUED}', '{RUNNING}')")
    except sqlite3.IntegrityError:
        pass
