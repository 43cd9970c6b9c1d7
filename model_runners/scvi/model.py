"""scVI (Lopez et al. 2018): the `fit` variant trains on the dataset, the Census variants map onto a reference.

What a variant needs depends on the variant and on the batch parameters, so the validator sets its
requirements per instance (the class attributes are the `fit` defaults, which the base class demands):

- `fit`: any organism, any gene naming, raw counts; the batch column(s) only when the user names them.
- Census variants (the variant has weights): one organism (`resources.organism`), Ensembl ids, raw
  counts, and the batch columns Census used (`dataset_id`, `assay`, `suspension_type`, `donor_id`,
  concatenated as strings) unless the user chose others (`batch_columns`) or a constant
  (`batch_key=unassigned`); plus the share of the reference's genes found in the dataset once the
  reference is cached (checked again at run time, after the download).

scvi-tools and torch are imported only when a model runs (or a cached reference's genes are read),
so validating stays fast.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from czb_core.datasets import SingleCellDataset
from czb_core.errors import ConfigError, WeightsError
from czb_core.model import BaseModelImplementation
from czb_core.safe_load import verify_trusted_file
from czb_core.types import DataType, ModelType, Organism
from czb_core.validation import Severity, ValidationReport
from czb_core.validators import BaseSingleCellValidator

CENSUS_BATCH_COLUMNS = ("dataset_id", "assay", "suspension_type", "donor_id")
UNASSIGNED = "unassigned"
OVERLAP_FACT = "reference gene overlap"
OTHER_COLUMNS_FIX = "choose other columns (--param batch_columns=col1,col2)"
CONSTANT_FIX = f"a constant batch (--param batch_key={UNASSIGNED})"


@dataclass(frozen=True)
class BatchSpec:
    """How each cell's batch label is built: a constant, or obs columns concatenated as strings."""

    columns: tuple[str, ...] = ()
    constant: Optional[str] = None
    chosen: bool = False  # the user named it (else the variant's default)

    @classmethod
    def from_args(cls, batch_key: Optional[str], batch_columns: Optional[str], default: tuple[str, ...]):
        columns = tuple(c.strip() for c in (batch_columns or "").split(",") if c.strip())
        if batch_key and columns:
            raise ConfigError("give batch_key or batch_columns, not both")
        if batch_key == UNASSIGNED:
            return cls(constant=UNASSIGNED, chosen=True)
        if batch_key or columns:
            return cls(columns=(batch_key,) if batch_key else columns, chosen=True)
        return cls(columns=default)

    def labels(self, obs: pd.DataFrame) -> Optional[pd.Series]:
        """One label per cell (as Census: `dataset_id + assay + suspension_type + donor_id`), or None."""
        if self.constant is not None:
            return pd.Series(self.constant, index=obs.index)
        if not self.columns:
            return None
        labels = obs[self.columns[0]].astype(str)
        for column in self.columns[1:]:
            labels = labels + obs[column].astype(str)
        return labels


def _bool(value) -> bool:
    """`--param early_stopping=true` arrives as text."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def add_overlap_problems(report: ValidationReport, n_found: int, n_reference: int, name: str) -> None:
    """The reference-gene share as a fact, a warning under 80% (scvi-tools' own threshold), an error under 20%."""
    share = n_found / n_reference
    report.facts[OVERLAP_FACT] = f"{n_found:,} of {n_reference:,} reference genes ({share:.1%}) are in the dataset"
    what = f"only {n_found:,} of the {n_reference:,} genes of {name}'s reference ({share:.1%}) are in the dataset"
    if share < 0.2:
        report.add("vocabulary", "low_vocabulary_overlap", Severity.ERROR, f"{what}; the embedding would be noise.",
                   "check the organism and that var_names (or var['ensembl_id']) hold Ensembl ids of all genes, "
                   "not a subset")
    elif share < 0.8:
        report.add("vocabulary", "partial_vocabulary_overlap", Severity.WARNING,
                   f"{what}; the missing ones are set to zero, which may degrade the embedding.")


class SCVIValidator(BaseSingleCellValidator):
    """Requirements per variant and batch parameters; mixed into `SCVIModel`, whose `__init__` sets
    `variant_config` and `args` before the requirements are derived from them."""

    model_type = ModelType.SCVI
    available_organisms = None
    required_obs_keys = ()
    required_var_keys = ()
    gene_id_kind = None
    requires_raw_counts = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_reference = self.variant_config.needs_weights
        self.batch = BatchSpec.from_args(
            self.args.batch_key, self.args.batch_columns, CENSUS_BATCH_COLUMNS if self.is_reference else ()
        )
        self.required_obs_keys = self.batch.columns
        if self.is_reference:
            self.available_organisms = (Organism.parse(self.variant_config.resources["organism"]),)
            self.gene_id_kind = "ensembl"

    def _check_keys(self, report, check: str, present, required, where: str) -> None:
        if where != "obs":
            return super()._check_keys(report, check, present, required, where)
        report.ran(check)
        for key in required:
            if key in present:
                continue
            if self.batch.chosen:
                message = f"the batch column '{key}' you chose is not in obs."
                fix = f"choose existing obs columns, or {CONSTANT_FIX if self.is_reference else 'no batch_key'}"
            else:
                message = (f"{self.name} builds each cell's batch as CELLxGENE Census did, from obs columns "
                           f"{', '.join(CENSUS_BATCH_COLUMNS)}; the dataset lacks '{key}'.")
                fix = f"add obs['{key}'], {OTHER_COLUMNS_FIX} or {CONSTANT_FIX}"
            report.add(check, "missing_obs_key", Severity.ERROR, message, fix)

    def _check_vocabulary(self, report: ValidationReport, gene_names: np.ndarray) -> None:
        """For a Census variant: the share of the reference's genes in the dataset, if the reference is cached."""
        if not self.is_reference:
            return
        report.ran("vocabulary")
        if any(p.check == "gene ids" and p.severity is Severity.ERROR for p in report.problems):
            report.facts[OVERLAP_FACT] = "not checked: the dataset has no Ensembl ids"
            return
        try:
            if not self.weights_cache.is_cached(self.weights_source()):
                report.facts[OVERLAP_FACT] = "checked once the reference weights are downloaded"
                return
            self.download_model_weights(None)  # cached: reads the manifest, no network
            reference = self.reference()
        except WeightsError as exc:
            report.facts[OVERLAP_FACT] = f"not checked: {exc}"
            return
        from model_runners.scvi.reference import overlap

        add_overlap_problems(report, *overlap(gene_names, reference), self.name)


class SCVIModel(SCVIValidator, BaseModelImplementation):
    """scVI on the dataset's raw counts; output: the latent mean (float32; `n_latent` or 50 for Census)."""

    _reference = None  # (sha256, SavedReference) of the last verified load
    _epochs_default: Optional[int] = None  # max_epochs from scvi-tools' rule, when the user gave none

    def create_parser(self) -> argparse.ArgumentParser:
        parser = super().create_parser()
        parser.add_argument("--batch_key", default=None,
                            help=f"obs column of batches, or '{UNASSIGNED}' for one constant batch")
        parser.add_argument("--batch_columns", default=None,
                            help="comma-separated obs columns concatenated into the batch label")
        if self.variant_config.needs_weights:
            parser.add_argument("--weights_sha256", default=None,
                                help="sha256 of model.pt: required to load a --weights override")
        else:
            parser.add_argument("--n_latent", type=int, default=10)
            parser.add_argument("--n_layers", type=int, default=1)
            parser.add_argument("--n_hidden", type=int, default=128)
            parser.add_argument("--max_epochs", type=int, default=None,
                                help="default: scvi-tools' rule, min(round(20000 / n_cells * 400), 400)")
            parser.add_argument("--early_stopping", type=_bool, default=False)
        return parser

    def parameters(self) -> dict:
        """As given, with the max_epochs that scvi-tools' rule chose when none was given."""
        params = super().parameters()
        if self._epochs_default is not None:
            params["max_epochs"] = self._epochs_default
        return params

    # -- the reference (Census variants) -----------------------------------------------------------

    def reference(self):
        """The reference model, unpickled only from bytes that pass `verify_trusted_file` (see safe_load)."""
        from model_runners.scvi.reference import MODEL_FILE, load_reference

        configured = self.variant_config.weights.get("model") or next(iter(self.variant_config.weights.values()))
        pins = [self.args.weights_sha256]
        if self.weights_manifest and self.weights_manifest.get("uri") == configured:
            pins.append(self.variant_config.weights_sha256.get(MODEL_FILE))
        verified = verify_trusted_file(self.weights_dir, MODEL_FILE, self.weights_manifest,
                                       configured_uri=configured, pins=pins)
        if self._reference is None or self._reference[0] != verified.sha256:
            self._reference = (verified.sha256, load_reference(verified))
        return self._reference[1]

    # -- the run -----------------------------------------------------------------------------------

    def run_model(self, dataset: SingleCellDataset) -> None:
        x_ng, var_names = dataset.counts()
        batch_n = self.batch.labels(dataset.adata.obs)
        batch_size = self.args.batch_size or 128
        if self.is_reference:
            emb_nd = self._map_to_reference(dataset, x_ng, var_names, batch_n, batch_size)
        else:
            emb_nd = self._fit(x_ng, batch_n, batch_size)
        dataset.set_output(self.model_type, DataType.EMBEDDING, emb_nd)

    def _fit(self, x_ng, batch_n, batch_size: int) -> np.ndarray:
        from model_runners.scvi.fit import FitParams, default_max_epochs, fit_latent

        a = self.args
        if a.max_epochs is not None and a.max_epochs < 1:
            raise ConfigError(f"max_epochs must be at least 1 (an untrained model embeds noise), got {a.max_epochs}")
        self._epochs_default = None if a.max_epochs else default_max_epochs(x_ng.shape[0])
        max_epochs = a.max_epochs or self._epochs_default
        params = FitParams(a.n_latent, a.n_layers, a.n_hidden, max_epochs, a.early_stopping, batch_size, a.seed)
        emb_nd, epochs = fit_latent(x_ng, batch_n, params, self.device, self.progress, self.cancel)
        self.report.facts["epochs trained"] = epochs
        return emb_nd

    def _map_to_reference(self, dataset, x_ng, var_names, batch_n, batch_size: int) -> np.ndarray:
        from model_runners.scvi.reference import map_query, overlap

        adata = dataset.adata
        var = adata.var if var_names.equals(adata.var_names) else adata.raw.var  # counts may come from raw.X
        _, genes_g = self.gene_ids(var, var_names)
        reference = self.reference()
        # the genes actually used decide (validation may have seen var rather than raw.var, or no reference)
        self.report.problems = [p for p in self.report.problems if p.check != "vocabulary"]
        add_overlap_problems(self.report, *overlap(genes_g, reference), self.name)
        self.report.raise_for_errors()
        return map_query(x_ng, genes_g, batch_n, reference, self.device, batch_size, self.args.seed,
                         self.progress, self.cancel)
