"""Tokenizer-lab trainings as jobs: one tokenizer with one seed is one job on a device queue.

A page submits every combination with `JobManager.submit_lab`, whose spec is built here
(`make_lab_spec`): model `LAB_MODEL`, variant the tokenizer's name, and as parameters the split, the
tokenizer's three parts, the seed and the training settings, so that the same training asked for twice
is one cached job. A device worker prepares the data once (`prepare_lab_job`), trains (`train_lab_job`:
each epoch reported with its validation MCC, the cancel token checked between batches, a CUDA
out-of-memory error raised as `DeviceOutOfMemory` so that the job layer trains again at half the batch
size on the same prepared data) and saves (`save_lab_run`): `lab_run.json` (metrics, learning curve,
confusion matrix with class names, the spec) and the trained model (`<tokenizer>_seed<seed>.pt`, tensors
and plain values only, loadable with `torch.load(..., weights_only=True)`); the job layer writes
`record.json` last. A lab job has no UMAP and no scoring run: its metrics are the training's own.

Reading back: the finished jobs of one experiment (same split and training settings,
`group_finished_experiments`) become the command line's `LabResult` (`collect_lab_result`), whose summary,
runs, learning curves and best confusion matrix the Tokenizer lab page shows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import pandas as pd

from czb_core.errors import ConfigError, DeviceOutOfMemory
from czb_core.io.atomic import write_json_atomically
from czb_core.io.reading import read_anndata
from czb_core.models.device import is_cuda_oom, resolve_device
from czb_core.models.memory import PeakMemory
from czb_core.models.record import device_description, package_versions, utc_now
from czb_core.progress import CancelToken, ProgressCallback, progress_line, seconds_since
from czb_core.service.jobs.artifacts import is_complete
from czb_core.service.jobs.spec import JobSpec
from czb_core.service.jobs.store import DONE, RUNNING, Job
from czb_core.tokenizer_lab import LAB_MODEL
from czb_core.tokenizer_lab.fc import FcSpec
from czb_core.tokenizer_lab.fe import FeSpec
from czb_core.tokenizer_lab.fg import FgSpec
from czb_core.tokenizer_lab.lab import (
    LabData,
    LabResult,
    LabSplit,
    TokenizerSetup,
    prepare_lab_data,
    save_model,
    split_problems,
)
from czb_core.tokenizer_lab.model import ModelShape
from czb_core.tokenizer_lab.sentences import TokenizerSpec
from czb_core.tokenizer_lab.train import RunResult, TrainConfig, train_run
from czb_core.types import Organism

LAB_RUN_JSON = "lab_run.json"
TRAIN_STEP = "train epoch"  # counted in epochs (`czb_core.progress.STEP_UNITS`)
RUN_KEYS = ("fg", "fe", "fc", "seed")  # the parameters that differ between the runs of one experiment
MAX_SPLIT_VALUES = 200  # a column with more values is no grouping to split on (cell ids, counts)


# -- the spec --------------------------------------------------------------------------------------------


def encode_lab_params(split: LabSplit, tokenizer: TokenizerSpec, seed: int, config: TrainConfig) -> dict:
    """Everything that changes what a training computes, as JSON values (the spec's parameters); the
    training settings are at the top level, so an out-of-memory retry can halve `batch_size`."""
    training = json.loads(json.dumps(asdict(config)))  # tuples (betas) as lists, the shape as a dict
    return {"label_key": split.label_key, "split_key": split.split_key, "train": list(split.train),
            "val": list(split.val), "test": list(split.test), "fg": asdict(tokenizer.fg), "fe": asdict(tokenizer.fe),
            "fc": asdict(tokenizer.fc), "seed": int(seed), **training}


def make_lab_spec(dataset_sha256: str, split: LabSplit, tokenizer: TokenizerSpec, seed: int, config: TrainConfig,
                  organism: Optional[str] = None) -> JobSpec:
    """The job spec of one training; a split with an empty part or a value in two parts is refused
    (ConfigError) before anything is queued."""
    problems = split_problems(split)
    if problems:
        raise ConfigError("; ".join(problems))
    params = encode_lab_params(split, tokenizer, seed, config)
    return JobSpec(dataset_sha256, LAB_MODEL, tokenizer.name, params, organism)


def decode_split(params: dict) -> LabSplit:
    return LabSplit(params["label_key"], params["split_key"], tuple(params["train"]), tuple(params["val"]),
                    tuple(params["test"]))


def decode_tokenizer(name: str, params: dict) -> TokenizerSpec:
    return TokenizerSpec(name, FgSpec(**params["fg"]), FeSpec(**params["fe"]), FcSpec(**params["fc"]))


def decode_config(params: dict) -> TrainConfig:
    values = {f.name: params[f.name] for f in fields(TrainConfig)}
    return TrainConfig(**{**values, "betas": tuple(values["betas"]), "shape": ModelShape(**values["shape"])})


# -- running one job (in a device worker) ----------------------------------------------------------------


@dataclass
class PreparedLabJob:
    """What a job's training needs from its dataset, made once: a retry at a smaller batch trains on it again."""

    tokenizer: TokenizerSpec
    data: LabData
    setup: TokenizerSetup


@dataclass
class LabJobRun:
    """A finished training with what made it: `params` as trained (the batch size of the last retry)."""

    prepared: PreparedLabJob
    run: RunResult
    config: TrainConfig
    params: dict
    device: str
    started: str
    peak: PeakMemory


class EpochReport:
    """`train_run`'s `on_epoch`: each epoch as the step `train epoch` with the validation MCC (and the best
    so far) as the step's bracketed detail, which the job's progress line shows while it trains."""

    def __init__(self, progress: ProgressCallback, epochs: int):
        self.progress, self.epochs = progress, epochs
        self.best: Optional[tuple[float, int]] = None

    def __call__(self, point: dict) -> None:
        if self.best is None or point["val_mcc"] > self.best[0]:
            self.best = (point["val_mcc"], point["epoch"])
        detail = f"val MCC {point['val_mcc']:.3f}, best {self.best[0]:.3f} at epoch {self.best[1]}"
        self.progress(f"{TRAIN_STEP} [{detail}]", point["epoch"], self.epochs)


def prepare_lab_job(data_path: str | Path, tokenizer_name: str, params: dict, organism: Optional[str],
                    progress: ProgressCallback, cancel: CancelToken) -> PreparedLabJob:
    """Read the dataset, keep and normalise the cells of the split, and build the tokenizer's sentences."""
    tokenizer = decode_tokenizer(tokenizer_name, params)
    d_model = decode_config(params).shape.d_model
    progress("load", 0, 1)
    adata = read_anndata(data_path)
    progress("load", 1, 1)
    cancel.check()
    progress("prepare", 0, 1)
    data = prepare_lab_data(adata, decode_split(params), Organism.parse(organism) if organism else None)
    setup = TokenizerSetup(tokenizer, data, d_model)
    progress("prepare", 1, 1)
    return PreparedLabJob(tokenizer, data, setup)


def train_lab_job(prepared: PreparedLabJob, params: dict, device: str, progress: ProgressCallback,
                  cancel: CancelToken) -> LabJobRun:
    """Train with `params`; a CUDA out-of-memory error becomes `DeviceOutOfMemory` at this batch size, which
    the job layer answers by training again at half of it."""
    config = decode_config(params)
    data, setup = prepared.data, prepared.setup
    started = utc_now()
    progress(TRAIN_STEP, 0, config.epochs)
    torch_device = resolve_device(device)
    try:
        with PeakMemory(device=torch_device) as peak:
            run = train_run(lambda: setup.build_model(len(data.classes), config), setup.maker, data.labels_n,
                            len(data.classes), data.splits, config, int(params["seed"]), prepared.tokenizer.name,
                            cancel=cancel, device=torch_device, on_epoch=EpochReport(progress, config.epochs))
    except Exception as exc:
        if is_cuda_oom(exc):
            raise DeviceOutOfMemory(config.batch_size) from None
        raise
    return LabJobRun(prepared, run, config, dict(params), torch_device, started, peak)


def save_lab_run(job_run: LabJobRun, artifact_dir: Path, spec: JobSpec) -> dict:
    """Write the trained model and `lab_run.json`; return the run record, which names both files (the job
    layer adds the job's facts and writes it last, as `record.json`)."""
    run, data = job_run.run, job_run.prepared.data
    model_file = save_model(run, job_run.prepared.tokenizer, data.classes, job_run.config, Path(artifact_dir)).name
    document = {
        "spec": json.loads(spec.to_json()), "tokenizer": run.tokenizer,
        "description": job_run.prepared.tokenizer.describe(), "seed": run.seed,
        "test_accuracy": run.test_accuracy, "test_mcc": run.test_mcc, "best_val_mcc": run.best_val_mcc,
        "best_epoch": run.best_epoch, "epochs_run": run.epochs_run, "seconds": run.seconds,
        "classes": list(data.classes), "confusion": run.confusion_cc.tolist(), "curve": run.curve,
        "n_cells": {part: int(len(rows)) for part, rows in data.splits.items()}, "warnings": list(data.warnings),
        "params": job_run.params, "model_file": model_file,
    }
    write_json_atomically(Path(artifact_dir) / LAB_RUN_JSON, document, indent=2)
    peak = job_run.peak
    return {
        "model": LAB_MODEL, "variant": run.tokenizer, "input": {"sha256": spec.dataset_sha256},
        "organism": spec.organism, "params": job_run.params, "seed": run.seed,
        "batch_size_used": job_run.config.batch_size, "test_accuracy": run.test_accuracy, "test_mcc": run.test_mcc,
        "lab_run": LAB_RUN_JSON, "model_file": model_file, "versions": package_versions(),
        **device_description(job_run.device), "started_at": job_run.started, "finished_at": utc_now(),
        "wall_s": round(run.seconds, 3), "peak_rss_mb": round(peak.peak_rss_mb, 1),
        "peak_gpu_mb": None if peak.peak_gpu_mb is None else round(peak.peak_gpu_mb, 1),
    }


# -- reading finished jobs back --------------------------------------------------------------------------


def read_lab_run(artifact_dir: str | Path) -> dict:
    return json.loads((Path(artifact_dir) / LAB_RUN_JSON).read_text())


def to_run_result(document: dict) -> RunResult:
    """The command line's `RunResult` of a finished job, for `LabResult`'s tables; the weights stay in
    their file (`state_dict` is empty)."""
    return RunResult(document["tokenizer"], int(document["seed"]), document["test_accuracy"], document["test_mcc"],
                     document["best_val_mcc"], int(document["best_epoch"]), int(document["epochs_run"]),
                     document["seconds"], np.asarray(document["confusion"], dtype=np.int64), document["curve"], {})


def find_model_file(job: Job) -> Path:
    """The trained model file of a done lab job."""
    return Path(job.artifact_dir) / read_lab_run(job.artifact_dir)["model_file"]


def identify_experiment(params: dict) -> str:
    """What runs must share to be compared, the split and the training settings (all but tokenizer and seed),
    as a short hash that a page can keep in its URL."""
    shared = json.dumps({k: v for k, v in params.items() if k not in RUN_KEYS}, sort_keys=True)
    return hashlib.sha256(shared.encode()).hexdigest()[:12]


def describe_experiment(params: dict) -> str:
    parts = " · ".join(f"{name} {', '.join(params[key])}" for name, key in
                       (("train", "train"), ("validation", "val"), ("test", "test")))
    return (f"{params['label_key']} across {params['split_key']}: {parts} · {params['epochs']} epochs, batch "
            f"{params['batch_size']}, lr {params['lr']:g}, width {params['shape']['d_model']}")


def find_split_columns(obs: pd.DataFrame, label_key: str) -> list[str]:
    """The obs columns a split can be made of: not the label, with at least three values (train, validation,
    test) and few enough to choose from; those named like a tissue first, as the shift the lab is about."""
    usable = [c for c in obs.columns if c != label_key and 3 <= obs[c].nunique(dropna=True) <= MAX_SPLIT_VALUES]
    return sorted(usable, key=lambda c: "tissue" not in str(c).lower())


def select_lab_jobs(jobs: Iterable[Job]) -> list[Job]:
    return [job for job in jobs if job.model == LAB_MODEL]


def group_finished_experiments(jobs: Iterable[Job]) -> dict[str, list[Job]]:
    """The done lab jobs whose files are complete, by experiment id, newest experiment first, each with its
    jobs in the order they were submitted. `jobs` come newest first (as `JobManager.list` gives them); a
    tokenizer and seed done twice in one experiment (e.g. by two owners an admin sees) counts once, newest."""
    newest: dict[tuple, Job] = {}
    for job in select_lab_jobs(jobs):
        if job.status == DONE and is_complete(job.artifact_dir):
            key = (identify_experiment(job.spec.params), job.variant, job.spec.params["seed"])
            newest.setdefault(key, job)
    experiments: dict[str, list[Job]] = {}
    for (key, _, _), job in newest.items():
        experiments.setdefault(key, []).append(job)
    return {key: group[::-1] for key, group in experiments.items()}


def collect_lab_result(jobs: list[Job]) -> LabResult:
    """The finished jobs of one experiment as the command line's `LabResult` (its summary per tokenizer,
    runs, learning curves and best confusion matrix); the classes are the split's, the same in every job."""
    documents = [read_lab_run(job.artifact_dir) for job in jobs]
    warnings = list(dict.fromkeys(w for document in documents for w in document["warnings"]))
    return LabResult([to_run_result(d) for d in documents], tuple(documents[0]["classes"]), warnings)


def melt_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """`LabResult.summary()` as one row per tokenizer and metric with its mean and standard deviation over
    seeds: the shape of a grouped bar chart with error bars."""
    return pd.concat([pd.DataFrame({"tokenizer": summary["tokenizer"], "metric": name, "mean": summary[f"{key}_mean"],
                                    "std": summary[f"{key}_std"], "seeds": summary["n_seeds"]})
                      for name, key in (("test accuracy", "accuracy"), ("test MCC", "mcc"))], ignore_index=True)


def format_job_row(job: Job, now: Optional[datetime] = None) -> dict:
    """One lab job in a jobs table: tokenizer, seed, where it is (during training, the epoch with its
    validation MCC) and why it stopped."""
    elapsed = seconds_since(job.step_started_at, now) if job.status == RUNNING else None
    return {"job": job.id, "tokenizer": job.variant, "seed": job.spec.params.get("seed"), "status": job.status,
            "device": job.device, "progress": progress_line(job.status, job.step, job.done, job.total, elapsed),
            "error": job.error or "", "notes": "; ".join(job.notes)}
