"""A stateful property test of the workspace and the job store as a lab uses them: two users and an admin
add the same and different files (upload and server path), run, score, share, delete, and restart the
server, in any order Hypothesis finds. After every step: no user sees, reads, or deletes another's record,
job or share; a done job's files exist and are complete; no job stays running past a restart."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from czb_core.errors import ConfigError
from czb_core.io.synthetic import make_synthetic_counts
from czb_core.models.pipeline import RunResult
from czb_core.schema.report import ValidationReport
from czb_core.service.jobs import JobManager
from czb_core.service.jobs import execution as execution_module
from czb_core.service.jobs.artifacts import is_complete
from czb_core.service.sharing import Shares
from czb_core.service.workspace import Workspace

pytestmark = pytest.mark.slow

USERS = ("alice", "bob")
ADMIN = "root"
CONTENTS = ("a", "b")


def quick_run(path, model, variant, *, organism, params, weights, device, progress, cancel, input_sha256, **_):
    """The job layer under test, not PCA: an embedding of the cells the job's own file holds."""
    import anndata as ad

    obs = ad.read_h5ad(path, backed="r").obs.copy()
    emb_nd = np.random.default_rng(params.get("n_comps", 0)).normal(size=(len(obs), 3)).astype(np.float32)
    record = {"model": "pca", "obsm_key": "X_pca", "params": dict(params), "seed": 0, "variant": "default",
              "model_type": "PCA", "display_name": "PCA"}
    progress("embed", 1, 1)
    return RunResult("pca", "default", emb_nd, obs, record, ValidationReport("pca"))


class LabServer(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        home = Path(self._home())
        self.files = {}
        for name, seed in zip(CONTENTS, (1, 2)):
            path = home / "lab" / f"{name}.h5ad"
            path.parent.mkdir(parents=True, exist_ok=True)
            make_synthetic_counts(n_cells=12, n_genes=20, n_types=2, n_batches=1, seed=seed).write_h5ad(path)
            self.files[name] = path
        self.manager = self._start()
        # Picks index these in insertion order, never by id: ids are random, and a replayed example must pick
        # the same record and job it picked the first time.
        self.records: dict[str, str] = {}  # record id -> owner, as the model expects
        self.jobs: dict[str, str] = {}  # job id -> owner
        self.shares: dict[str, str] = {}  # token -> job id
        self.generation_started = time.time()

    @staticmethod
    def _home() -> str:
        import os

        return os.environ["CZB_HOME"]

    def _start(self) -> JobManager:
        # Scoring runs are queued, never run: a running one would refuse a deletion at a moment that depends
        # on timing, and a property test must replay the same way.
        return JobManager(Workspace(), run_fn=quick_run, score=False, processes=False)

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not self.manager.list(statuses=("queued", "running")):
                return
            time.sleep(0.02)

    # -- rules -----------------------------------------------------------------------------------------

    @rule(user=st.sampled_from(USERS), content=st.sampled_from(CONTENTS))
    def upload(self, user, content):
        record = self.manager.workspace.add_stream(io.BytesIO(self.files[content].read_bytes()), f"{content}.h5ad",
                                                   owner=user)
        assert record.owner == user
        self.records[record.id] = user

    @rule(user=st.sampled_from(USERS), content=st.sampled_from(CONTENTS))
    def add_by_server_path(self, user, content):
        record = self.manager.workspace.add_server_path(self.files[content], owner=user)
        assert record.owner == user
        self.records[record.id] = user

    @precondition(lambda self: self.records)
    @rule(user=st.sampled_from(USERS), pick=st.integers(0, 50), n_comps=st.integers(2, 4))
    def run(self, user, pick, n_comps):
        dataset_id = list(self.records)[pick % len(self.records)]
        if self.records[dataset_id] != user:
            with pytest.raises(KeyError):
                self.manager.submit(dataset_id, "pca", owner=user, params={"n_comps": n_comps})
            return
        job = self.manager.submit(dataset_id, "pca", owner=user, params={"n_comps": n_comps})
        assert job.owner == user and job.dataset_id == dataset_id
        self.jobs[job.id] = user
        self._wait_idle()

    @precondition(lambda self: self.jobs)
    @rule(user=st.sampled_from(USERS), pick=st.integers(0, 50), label=st.sampled_from(["cell_type", "batch"]))
    def score(self, user, pick, label):
        job_id = list(self.jobs)[pick % len(self.jobs)]
        if self.manager.get(job_id) is None:
            return
        if self.jobs[job_id] != user:
            with pytest.raises(KeyError):
                self.manager.rescore(job_id, {"label_key": label}, scope=user)
            return
        score = self.manager.rescore(job_id, {"label_key": label}, scope=user)
        assert score.owner == user

    @precondition(lambda self: self.jobs)
    @rule(user=st.sampled_from(USERS), pick=st.integers(0, 50))
    def share(self, user, pick):
        job_id = list(self.jobs)[pick % len(self.jobs)]
        job = self.manager.get(job_id)
        shares = Shares(self.manager.store)
        if job is None or self.jobs[job_id] != user:
            with pytest.raises((KeyError, ConfigError)):
                shares.share_job(job_id, user)
            return
        if job.status != "done":
            return
        self.shares[shares.share_job(job_id, user)] = job_id

    @precondition(lambda self: self.records)
    @rule(user=st.sampled_from((*USERS, ADMIN)), pick=st.integers(0, 50))
    def delete(self, user, pick):
        dataset_id = list(self.records)[pick % len(self.records)]
        owner = self.records[dataset_id]
        scope = None if user == ADMIN else user
        self._wait_idle()
        if scope is not None and owner != scope:
            with pytest.raises(KeyError):
                self.manager.workspace.delete_dataset(dataset_id, scope)
            return
        others = {r for r in self.records if r != dataset_id}
        self.manager.workspace.delete_dataset(dataset_id, scope)
        del self.records[dataset_id]
        self.jobs = {j: o for j, o in self.jobs.items() if self.manager.get(j) is not None}
        assert {r.id for r in self.manager.workspace.list()} == others  # exactly that record went

    @rule()
    def restart(self):
        self.manager.shutdown(timeout=10)
        self.manager = self._start()
        self.generation_started = time.time()

    # -- invariants --------------------------------------------------------------------------------------

    @invariant()
    def each_user_sees_only_their_own(self):
        workspace = self.manager.workspace
        assert {r.id: r.owner for r in workspace.list()} == self.records
        for user in USERS:
            assert all(r.owner == user for r in workspace.list(owner=user))
            for dataset_id, owner in self.records.items():
                if owner != user:
                    with pytest.raises(KeyError):
                        workspace.dataset_path(dataset_id, user)
            for job in self.manager.list(owner=user):
                assert job.owner == user and self.records.get(job.dataset_id) == user
            for job_id, owner in self.jobs.items():
                if owner != user:
                    assert self.manager.get(job_id, user) is None

    @invariant()
    def done_jobs_are_complete_and_none_runs_past_a_restart(self):
        for job in self.manager.list():
            if job.status == "done":
                assert is_complete(job.artifact_dir), job
            if job.status == "running":
                assert job.worker_pid is not None

    @invariant()
    def shares_show_their_own_job_only(self):
        shares = Shares(self.manager.store)
        for token, job_id in self.shares.items():
            job = shares.resolve_share(token)
            assert job is None or job.id == job_id

    def teardown(self):
        self.manager.shutdown(timeout=10)


@pytest.fixture
def lab_server(monkeypatch, tmp_path):
    monkeypatch.setattr(execution_module, "compute_umap", lambda emb_nd, seed=0, labels_n=None: emb_nd[:, :2].copy())
    monkeypatch.setenv("CZB_DATA_ROOTS", str(tmp_path / "czb_home" / "lab"))
    return LabServer


def test_the_workspace_keeps_users_apart_and_results_whole(lab_server, monkeypatch, tmp_path):
    counter = iter(range(10_000))

    def fresh_home():  # each example starts on an empty server
        home = tmp_path / f"home{next(counter)}"
        monkeypatch.setenv("CZB_HOME", str(home))
        monkeypatch.setenv("CZB_DATA_ROOTS", str(home / "lab"))

    class Fresh(lab_server):
        def __init__(self):
            fresh_home()
            super().__init__()

    Fresh.TestCase.settings = settings(max_examples=12, stateful_step_count=14, deadline=None,
                                       suppress_health_check=list(HealthCheck), derandomize=True)
    Fresh.TestCase().runTest()
