"""The tokenizer lab: which way of turning cells into tokens generalises to held-out groups (e.g. a tissue)?

The user names a label column and a split column whose values define train, validation and test cells.
Every tokenizer is trained with every seed on the same normalised matrix (normalize_total to 1e4, log1p)
and scored on the test cells at its best validation epoch. The result: per-run metrics, a summary per
tokenizer (mean and standard deviation of test accuracy and MCC over seeds), learning curves, the
confusion matrix of the best tokenizer's best seed, and optionally each trained model as a file.

The dataset is read through the data manager, as a model runner reads it: the counts from wherever they
live (X, layers['counts'], or raw.X with raw.X's own genes; a CELLxGENE file keeps log-normalised values
in X), gene ids and symbols from var_names or the var columns that hold them, and the organism set or
detected from the gene names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from czb_core.errors import InputError
from czb_core.io.header import header_from_anndata
from czb_core.progress import CancelToken, ProgressCallback, no_progress
from czb_core.schema.data_manager import DataManager, DataNeeds
from czb_core.schema.normalization import normalize_log1p
from czb_core.tokenizer_lab.fc import chromosome_map
from czb_core.tokenizer_lab.fe import build_fe
from czb_core.tokenizer_lab.fg import FrozenFg, IdentityFg, build_fg
from czb_core.tokenizer_lab.model import TokenizedClassifier
from czb_core.tokenizer_lab.sentences import SentenceMaker, TokenizerSpec, nonzero_medians
from czb_core.tokenizer_lab.train import RunResult, TrainConfig, train_run
from czb_core.types import Organism

LAB_TARGET_SUM = 1e4  # normalize_total target of every tokenizer
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LabSplit:
    """Columns and the split-column values of each part; a part may take several values."""

    label_key: str
    split_key: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


@dataclass
class LabData:
    """Log-normalised cells x genes (only the cells of the three parts), class codes, split rows, genes."""

    x_ng: sp.csr_matrix
    labels_n: np.ndarray
    classes: tuple[str, ...]
    splits: dict[str, np.ndarray]
    gene_ids: np.ndarray
    symbols: np.ndarray
    organism: Optional[Organism] = None  # set, or decided by the gene names
    organism_reason: str = ""  # what the gene names say of the species: why, when they did not decide it
    warnings: list[str] = field(default_factory=list)


def _part_rows(values: pd.Series, wanted: tuple[str, ...], part: str, split_key: str) -> np.ndarray:
    present = set(values.unique())
    missing = [w for w in wanted if w not in present]
    if missing:
        shown = ", ".join(sorted(map(str, present))[:20])
        raise InputError(f"{split_key!r} has no value {', '.join(map(repr, missing))} for {part}; values: {shown}")
    return np.flatnonzero(values.isin(wanted).to_numpy())


def split_problems(split: LabSplit) -> list[str]:
    """What makes a split unusable before any cell is read: a part without values (nothing to train on,
    stop on or score), or a value in two parts (the same cells would be trained on and scored)."""
    problems = [f"choose at least one {split.split_key!r} value for {part}" for part in SPLITS
                if not getattr(split, part)]
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = sorted(set(getattr(split, a)) & set(getattr(split, b)))
        if shared:
            problems.append(f"{a} and {b} share split values {shared}")
    return problems


def lab_data_manager(adata: ad.AnnData, organism: Optional[Organism] = None) -> DataManager:
    """The data manager of a loaded dataset, bound to it; refuses one without raw counts, since the lab
    normalises counts itself and normalising already-normalised values again would train on neither."""
    manager = DataManager(header_from_anndata(adata), DataNeeds(raw_counts=True), organism).bind(adata)
    if manager.counts_location is None:
        raise InputError("the tokenizer lab needs raw integer counts: X holds non-integer or negative values and "
                         "neither layers['counts'] nor raw.X holds counts")
    return manager


def prepare_lab_data(adata: ad.AnnData, split: LabSplit, organism: Optional[Organism] = None) -> LabData:
    """Check the columns and parts, keep the cells of the three parts, normalise their counts, code the labels."""
    manager = lab_data_manager(adata, organism)
    obs = manager.obs
    for key in (split.label_key, split.split_key):
        if key not in obs:
            raise InputError(f"obs has no column {key!r}; columns: {', '.join(map(str, obs.columns))}")
    problems = split_problems(split)
    if problems:
        raise InputError("; ".join(problems))
    values = obs[split.split_key].astype(str)
    parts = {p: _part_rows(values, getattr(split, p), p, split.split_key) for p in SPLITS}
    keep = np.concatenate([parts[p] for p in SPLITS])
    labels = obs[split.label_key].iloc[keep]
    if labels.isna().any():
        raise InputError(f"{int(labels.isna().sum()):,} of the chosen cells have no {split.label_key!r}")
    labels = labels.astype(str).to_numpy()
    classes = tuple(sorted(set(labels)))
    if len(set(labels[: len(parts["train"])])) < 2:
        raise InputError(f"the training cells hold fewer than two {split.label_key!r} classes")
    codes = {c: i for i, c in enumerate(classes)}
    offsets = np.cumsum([0] + [len(parts[p]) for p in SPLITS])
    splits = {p: np.arange(offsets[i], offsets[i + 1]) for i, p in enumerate(SPLITS)}
    train_classes = set(labels[splits["train"]])
    unseen = sorted(set(labels[np.concatenate([splits["val"], splits["test"]])]) - train_classes)
    warnings = [f"classes absent from training can never be predicted: {', '.join(unseen)}"] if unseen else []
    if manager.organism_check is not None and manager.organism_check.contradicts:
        warnings.append(manager.organism_check.message)
    return LabData(normalize_log1p(manager.counts(keep), LAB_TARGET_SUM),
                   np.array([codes[v] for v in labels], dtype=np.int64), classes, splits,
                   manager.genes_in("ensembl"), manager.genes_in("symbol"), manager.organism,
                   manager.detection.reason, warnings)


def lab_organism(data: LabData) -> Organism:
    """The dataset's organism, for tokenizers that need one, or a clear error asking for it."""
    if data.organism is None:
        raise InputError(f"cannot tell the organism from the gene names ({data.organism_reason}); give it explicitly")
    return data.organism


@dataclass
class LabResult:
    runs: list[RunResult]
    classes: tuple[str, ...]
    warnings: list[str]

    def runs_table(self) -> pd.DataFrame:
        return pd.DataFrame([{"tokenizer": r.tokenizer, "seed": r.seed, "test_accuracy": r.test_accuracy,
                              "test_mcc": r.test_mcc, "best_val_mcc": r.best_val_mcc, "best_epoch": r.best_epoch,
                              "epochs_run": r.epochs_run, "seconds": r.seconds} for r in self.runs])

    def summary(self) -> pd.DataFrame:
        """Per tokenizer, in the order run: mean and standard deviation (ddof 1; 0 for one seed)."""
        runs = self.runs_table()
        grouped = runs.groupby("tokenizer", sort=False)
        table = grouped.agg(n_seeds=("seed", "count"), accuracy_mean=("test_accuracy", "mean"),
                            accuracy_std=("test_accuracy", "std"), mcc_mean=("test_mcc", "mean"),
                            mcc_std=("test_mcc", "std"), seconds_mean=("seconds", "mean"))
        return table.fillna({"accuracy_std": 0.0, "mcc_std": 0.0}).reset_index()

    def curves(self) -> pd.DataFrame:
        return pd.DataFrame([{"tokenizer": r.tokenizer, "seed": r.seed, **point}
                             for r in self.runs for point in r.curve])

    def best_run(self) -> RunResult:
        """The best seed of the tokenizer with the highest mean test MCC."""
        best_name = self.summary().sort_values("mcc_mean", ascending=False, kind="stable")["tokenizer"].iloc[0]
        return max((r for r in self.runs if r.tokenizer == best_name), key=lambda r: r.test_mcc)

    def best_confusion(self) -> pd.DataFrame:
        run = self.best_run()
        return pd.DataFrame(run.confusion_cc, index=pd.Index(self.classes, name="true"),
                            columns=pd.Index(self.classes, name="predicted"))

    def write_csv(self, folder: str | Path) -> list[Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = {"summary.csv": self.summary(), "runs.csv": self.runs_table(), "curves.csv": self.curves(),
                 "confusion_best.csv": self.best_confusion()}
        for name, table in files.items():
            table.to_csv(folder / name, index=name == "confusion_best.csv")
        return [folder / n for n in files]


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80]


class TokenizerSetup:
    """What a tokenizer needs from the dataset, built once and shared by its seeds."""

    def __init__(self, spec: TokenizerSpec, data: LabData, d_model: int):
        self.spec = spec
        chroms = None
        if spec.fc.needs_chromosomes:
            chroms = chromosome_map(data.gene_ids, data.symbols, lab_organism(data))
            if chroms.known_g.mean() < 0.5:
                raise InputError(f"{spec.name}: only {chroms.known_g.sum():,} of {len(chroms.known_g):,} genes have "
                                 "gene coordinates; chromosome order needs most of them")
        needs_organism = spec.fg.kind == "esm2" and not spec.fg.path
        organism = lab_organism(data) if needs_organism else data.organism
        fg, covered_g = build_fg(spec.fg, data.gene_ids, data.symbols, d_model, organism)
        self.frozen_fg = fg if isinstance(fg, FrozenFg) else None  # never trained, so runs may share it
        medians_g = nonzero_medians(data.x_ng[data.splits["train"]]) if spec.fc.median_normalise else None
        self.maker = SentenceMaker(spec.fe, spec.fc, data.x_ng, covered_g, medians_g, chroms)
        self.n_chromosomes = len(chroms.names) if chroms is not None else 0
        self.n_genes = data.x_ng.shape[1]

    def build_model(self, n_classes: int, config: TrainConfig) -> TokenizedClassifier:
        """A fresh model (the caller seeds torch first): identity Fg is re-initialised, a frozen one shared."""
        shape = config.shape
        fg = self.frozen_fg if self.frozen_fg is not None else IdentityFg(self.n_genes, shape.d_model)
        fe = build_fe(self.spec.fe, shape.d_model, shape.base_width)
        return TokenizedClassifier(fg, fe, self.n_genes, n_classes, self.spec.fc.max_length,
                                   shape, self.spec.fc.reduce, self.n_chromosomes)


def run_lab(data: LabData, tokenizers: Sequence[TokenizerSpec], seeds: Sequence[int], config: TrainConfig,
            progress: ProgressCallback = no_progress, cancel: Optional[CancelToken] = None,
            heads_dir: Optional[str | Path] = None, device: str = "cpu") -> LabResult:
    """Every tokenizer x seed; each trained model is saved under `heads_dir` when given."""
    names = [t.name for t in tokenizers]
    if len(set(names)) != len(names):
        raise InputError(f"tokenizers must be distinct, got {names}")
    if not seeds:
        raise InputError("give at least one seed")
    runs = []
    for spec in tokenizers:
        setup = TokenizerSetup(spec, data, config.shape.d_model)
        for seed in seeds:
            run = train_run(lambda: setup.build_model(len(data.classes), config), setup.maker, data.labels_n,
                            len(data.classes), data.splits, config, int(seed), spec.name, progress, cancel, device)
            if heads_dir is not None:
                save_model(run, spec, data.classes, config, Path(heads_dir))
            runs.append(run)
    return LabResult(runs, data.classes, list(data.warnings))


def save_model(run: RunResult, spec: TokenizerSpec, classes: tuple[str, ...], config: TrainConfig,
               folder: Path) -> Path:
    """`<tokenizer>_seed<seed>.pt` in `folder`: the best epoch's weights with what is needed to use them
    (classes, tokenizer, shape); tensors and plain values only, so it loads with `weights_only=True`."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_safe_name(spec.name)}_seed{run.seed}.pt"
    torch.save({"state_dict": run.state_dict, "classes": list(classes), "tokenizer": spec.describe(),
                "d_model": config.shape.d_model, "n_layers": config.shape.n_layers, "n_heads": config.shape.n_heads,
                "test_mcc": run.test_mcc, "best_epoch": run.best_epoch}, path)
    return path
