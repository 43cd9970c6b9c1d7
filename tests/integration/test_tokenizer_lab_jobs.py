"""Tokenizer-lab trainings as jobs: one job per tokenizer and seed on the device queue, its files (no UMAP,
no scoring), the cache, the summary over seeds, seeded reproducibility (equal to the command line's run),
progress per epoch with the validation MCC, cancel mid-training, the out-of-memory retry and retry.

Worker threads of this process (`processes=False`) run the real training on a small generated dataset
with a tiny model and short sentences, so each training takes about a second.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from czb_core.errors import ConfigError
from czb_core.io.synthetic import make_synthetic_counts
from czb_core.service.jobs import JobManager
from czb_core.service.jobs import lab as lab_jobs
from czb_core.service.jobs.artifacts import RECORD_JSON, is_complete, read_record
from czb_core.service.workspace import Workspace
from czb_core.tokenizer_lab import LAB_MODEL
from czb_core.tokenizer_lab.lab import LabSplit, TokenizerSetup, prepare_lab_data, run_lab
from czb_core.tokenizer_lab.model import ModelShape
from czb_core.tokenizer_lab.presets import parse_tokenizer
from czb_core.tokenizer_lab.train import TrainConfig
from tests.integration.test_jobs import wait_gone

SPLIT = LabSplit("cell_type", "donor_id", ("donor0_0", "donor0_1"), ("donor1_0",), ("donor1_1",))
TINY = TrainConfig(epochs=3, batch_size=32, shape=ModelShape(d_model=16, n_layers=1, n_heads=2))
RANKED = parse_tokenizer("fg=identity,fe=zero,fc=expression,max=48")
BINNED = parse_tokenizer("fg=identity,fe=quantile,fc=random,max=48")


def lab_counts():
    """240 cells x 120 human genes, three cell types; `donor_id` has four values: two to train on, one to
    stop on, one to test on."""
    return make_synthetic_counts(n_cells=240, n_genes=120, n_types=3, n_batches=2, mean_counts=300, seed=1)


@pytest.fixture(scope="module")
def lab_adata():
    return lab_counts()


@pytest.fixture
def dataset(lab_adata, write_h5ad):
    return Workspace().add_file(write_h5ad(lab_adata, "lab.h5ad"))


@pytest.fixture
def manager():
    manager = JobManager(Workspace(), processes=False)
    yield manager
    for job in manager.list(statuses=("queued", "running")):
        manager.cancel(job.id)
    manager.shutdown(timeout=10)


def wait_for(manager, job_id, statuses, timeout=60.0, until=lambda job: True):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = manager.get(job_id)
        if job.status in statuses and until(job):
            return job
        time.sleep(0.02)
    job = manager.get(job_id)
    raise AssertionError(f"job {job_id} is {job.status} ({job.step!r}, error {job.error!r}), expected {statuses}")


def test_each_tokenizer_and_seed_is_a_job_with_its_files_and_the_summary_spans_seeds(manager, dataset, lab_adata):
    submitted = [manager.submit_lab(dataset.id, SPLIT, tokenizer, seed, TINY)
                 for tokenizer in (RANKED, BINNED) for seed in (0, 1)]
    assert len({job.id for job in submitted}) == 4
    assert {(job.model, job.device) for job in submitted} == {(LAB_MODEL, "cpu")}
    done = [wait_for(manager, job.id, ("done",)) for job in submitted]

    for job in done:
        directory = Path(job.artifact_dir)
        record = read_record(directory)
        assert is_complete(directory)
        assert sorted(p.name for p in directory.iterdir()) == sorted(
            [RECORD_JSON, lab_jobs.LAB_RUN_JSON, record["model_file"]])  # no embedding, no UMAP
        assert manager.scores(job.id) == []  # no scoring run
        assert record["job"]["id"] == job.id and list(record["job"]["step_seconds"]) == ["load", "prepare",
                                                                                        "train epoch"]
        document = lab_jobs.read_lab_run(directory)
        assert document["spec"]["variant"] == job.variant and document["seed"] == job.spec.params["seed"]
        assert [point["epoch"] for point in document["curve"]] == list(range(1, document["epochs_run"] + 1))
        assert len(document["confusion"]) == len(document["classes"]) == 3
        assert sum(map(sum, document["confusion"])) == document["n_cells"]["test"]

    again = manager.submit_lab(dataset.id, SPLIT, RANKED, 1, TINY)
    assert (again.id, again.status) == (done[1].id, "done")  # the same training asked again: the cached job

    experiments = lab_jobs.group_finished_experiments(manager.list(dataset_id=dataset.id))
    assert len(experiments) == 1
    (experiment,) = experiments.values()
    assert [job.id for job in experiment] == [job.id for job in done]  # in the order submitted
    result = lab_jobs.collect_lab_result(experiment)
    summary = result.summary()
    assert summary["tokenizer"].tolist() == [RANKED.name, BINNED.name]
    assert summary["n_seeds"].tolist() == [2, 2]
    runs = result.runs_table().set_index(["tokenizer", "seed"])["test_mcc"]
    for row in summary.itertuples():
        assert row.mcc_mean == pytest.approx(runs[row.tokenizer].mean())
        assert row.mcc_std == pytest.approx(runs[row.tokenizer].std())
    long = lab_jobs.melt_summary(summary)
    assert sorted(long["metric"].unique()) == ["test MCC", "test accuracy"] and len(long) == 4
    curves = result.curves()
    assert set(curves.columns) >= {"tokenizer", "seed", "epoch", "train_loss", "val_mcc"}
    assert result.best_confusion().shape == (3, 3)
    assert "cell_type across donor_id" in lab_jobs.describe_experiment(experiment[0].spec.params)
    assert lab_jobs.find_split_columns(lab_adata.obs, "cell_type") == ["donor_id"]  # tissue has two values


def test_the_trained_model_file_loads_without_unpickling_code_into_a_fresh_classifier(manager, dataset, lab_adata):
    job = wait_for(manager, manager.submit_lab(dataset.id, SPLIT, BINNED, 0, TINY).id, ("done",))
    saved = torch.load(lab_jobs.find_model_file(job), map_location="cpu", weights_only=True)
    data = prepare_lab_data(lab_adata, SPLIT)
    model = TokenizerSetup(BINNED, data, TINY.shape.d_model).build_model(len(data.classes), TINY)
    model.load_state_dict(saved["state_dict"])  # strict: every weight is there, with its shape
    assert saved["classes"] == list(data.classes)


def test_same_seed_same_numbers_as_the_command_line_run(manager, dataset, lab_adata):
    """Two owners' jobs (no cache between them) and `run_lab` itself give identical metrics and curves."""
    jobs = []
    for owner in ("alice", "bob"):
        owners_record = manager.workspace.add_file(dataset.path, owner=owner)
        jobs.append(manager.submit_lab(owners_record.id, SPLIT, BINNED, 3, TINY, owner=owner))
    assert jobs[0].id != jobs[1].id
    documents = [lab_jobs.read_lab_run(wait_for(manager, job.id, ("done",)).artifact_dir) for job in jobs]
    direct = run_lab(prepare_lab_data(lab_adata, SPLIT), [BINNED], [3], TINY).runs[0]
    for document in documents:
        assert document["curve"] == direct.curve
        assert (document["test_accuracy"], document["test_mcc"]) == (direct.test_accuracy, direct.test_mcc)
        assert document["confusion"] == direct.confusion_cc.tolist()


def test_progress_shows_the_epoch_and_validation_mcc_and_cancel_stops_training(manager, dataset):
    long = TrainConfig(epochs=500, patience=500, batch_size=32, shape=TINY.shape)
    job = manager.submit_lab(dataset.id, SPLIT, RANKED, 0, long)
    running = wait_for(manager, job.id, ("running",), until=lambda j: "[val MCC" in j.step)
    assert running.step.startswith("train epoch [val MCC") and running.total == 500
    line = lab_jobs.format_job_row(running)["progress"]
    assert "val MCC" in line and "/ 500 epochs" in line

    manager.cancel(job.id)
    cancelled = wait_for(manager, job.id, ("cancelled",), timeout=20)
    assert 1 <= cancelled.done < 500
    assert wait_gone(manager.workspace.root / "jobs" / job.id)
    assert lab_jobs.group_finished_experiments(manager.list()) == {}


def test_out_of_memory_is_retried_at_half_the_batch_on_the_data_prepared_once(manager, dataset, monkeypatch):
    reads, calls = [], []
    read_anndata, train_run = lab_jobs.read_anndata, lab_jobs.train_run

    def counted_read(path):
        reads.append(path)
        return read_anndata(path)

    def out_of_memory_at_32(*args, **kwargs):
        calls.append(args[5].batch_size)  # the TrainConfig
        if args[5].batch_size == 32:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return train_run(*args, **kwargs)

    monkeypatch.setattr(lab_jobs, "read_anndata", counted_read)
    monkeypatch.setattr(lab_jobs, "train_run", out_of_memory_at_32)
    job = wait_for(manager, manager.submit_lab(dataset.id, SPLIT, RANKED, 0, TINY).id, ("done",))
    assert calls == [32, 16] and len(reads) == 1
    assert job.notes == ["CUDA out of memory at batch size 32; retried at 16"]
    record = read_record(job.artifact_dir)
    assert record["batch_size_used"] == 16 and record["job"]["notes"] == job.notes
    assert lab_jobs.read_lab_run(job.artifact_dir)["params"]["batch_size"] == 16
    assert job.spec.params["batch_size"] == 32  # the spec, and so the cache key, is what was asked for


def test_a_failed_lab_job_is_retried_as_a_new_job(manager, dataset, monkeypatch):
    train_run = lab_jobs.train_run
    failures = iter([True])

    def fail_once(*args, **kwargs):
        if next(failures, False):
            raise ValueError("a stand-in failure")
        return train_run(*args, **kwargs)

    monkeypatch.setattr(lab_jobs, "train_run", fail_once)
    failed = wait_for(manager, manager.submit_lab(dataset.id, SPLIT, RANKED, 0, TINY).id, ("failed",))
    assert "a stand-in failure" in failed.error
    retried = manager.retry(failed.id)
    assert retried.id != failed.id and retried.device == "cpu"
    assert wait_for(manager, retried.id, ("done",)).spec == failed.spec


def test_a_split_with_a_value_in_two_parts_or_an_empty_part_is_refused_before_queueing(manager, dataset):
    overlapping = LabSplit("cell_type", "donor_id", ("donor0_0",), ("donor1_0",), ("donor0_0",))
    with pytest.raises(ConfigError, match="train and test share"):
        manager.submit_lab(dataset.id, overlapping, RANKED, 0, TINY)
    empty = LabSplit("cell_type", "donor_id", ("donor0_0",), (), ("donor1_1",))
    with pytest.raises(ConfigError, match="at least one 'donor_id' value for val"):
        manager.submit_lab(dataset.id, empty, RANKED, 0, TINY)
    assert manager.list() == []


def test_spec_parameters_round_trip_to_the_tokenizer_split_and_training_settings():
    params = json.loads(json.dumps(lab_jobs.encode_lab_params(SPLIT, BINNED, 4, TINY)))  # as stored in the job table
    assert lab_jobs.decode_tokenizer(BINNED.name, params) == BINNED
    assert lab_jobs.decode_split(params) == SPLIT
    assert lab_jobs.decode_config(params) == TINY
    assert params["seed"] == 4 and params["batch_size"] == TINY.batch_size
